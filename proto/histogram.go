package censuspb

import (
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
)

// FromHistogram converts an integer native histogram sample to its wire form;
// set StartTimestampMs when the start is known. The wire form shares h's
// bucket slices.
func FromHistogram(t int64, h *histogram.Histogram) *Histogram {
	return &Histogram{
		TimestampMs:    t,
		Count:          &Histogram_CountInt{CountInt: h.Count},
		Sum:            h.Sum,
		Schema:         h.Schema,
		ZeroThreshold:  h.ZeroThreshold,
		ZeroCount:      &Histogram_ZeroCountInt{ZeroCountInt: h.ZeroCount},
		NegativeSpans:  fromSpans(h.NegativeSpans),
		NegativeDeltas: h.NegativeBuckets,
		PositiveSpans:  fromSpans(h.PositiveSpans),
		PositiveDeltas: h.PositiveBuckets,
		ResetHint:      Histogram_ResetHint(h.CounterResetHint),
		CustomValues:   h.CustomValues,
	}
}

// FromFloatHistogram converts a float native histogram sample to its wire
// form; set StartTimestampMs when the start is known. The wire form shares
// fh's bucket slices.
func FromFloatHistogram(t int64, fh *histogram.FloatHistogram) *Histogram {
	return &Histogram{
		TimestampMs:    t,
		Count:          &Histogram_CountFloat{CountFloat: fh.Count},
		Sum:            fh.Sum,
		Schema:         fh.Schema,
		ZeroThreshold:  fh.ZeroThreshold,
		ZeroCount:      &Histogram_ZeroCountFloat{ZeroCountFloat: fh.ZeroCount},
		NegativeSpans:  fromSpans(fh.NegativeSpans),
		NegativeCounts: fh.NegativeBuckets,
		PositiveSpans:  fromSpans(fh.PositiveSpans),
		PositiveCounts: fh.PositiveBuckets,
		ResetHint:      Histogram_ResetHint(fh.CounterResetHint),
		CustomValues:   fh.CustomValues,
	}
}

// IsFloat reports whether h is a float histogram.
func (h *Histogram) IsFloat() bool {
	_, ok := h.GetCount().(*Histogram_CountFloat)
	return ok
}

// ToHistogram converts an integer histogram from its wire form; it returns
// nil for a float histogram. The result shares h's bucket slices.
func (h *Histogram) ToHistogram() *histogram.Histogram {
	if h.IsFloat() {
		return nil
	}
	return &histogram.Histogram{
		CounterResetHint: histogram.CounterResetHint(h.GetResetHint()),
		Schema:           h.GetSchema(),
		ZeroThreshold:    h.GetZeroThreshold(),
		ZeroCount:        h.GetZeroCountInt(),
		Count:            h.GetCountInt(),
		Sum:              h.GetSum(),
		PositiveSpans:    toSpans(h.GetPositiveSpans()),
		PositiveBuckets:  h.GetPositiveDeltas(),
		NegativeSpans:    toSpans(h.GetNegativeSpans()),
		NegativeBuckets:  h.GetNegativeDeltas(),
		CustomValues:     h.GetCustomValues(),
	}
}

// ToFloatHistogram converts a histogram from its wire form into a float
// histogram; an integer histogram is converted to float. The result shares
// h's bucket slices when h is a float histogram.
func (h *Histogram) ToFloatHistogram() *histogram.FloatHistogram {
	if !h.IsFloat() {
		return h.ToHistogram().ToFloat(nil)
	}
	return &histogram.FloatHistogram{
		CounterResetHint: histogram.CounterResetHint(h.GetResetHint()),
		Schema:           h.GetSchema(),
		ZeroThreshold:    h.GetZeroThreshold(),
		ZeroCount:        h.GetZeroCountFloat(),
		Count:            h.GetCountFloat(),
		Sum:              h.GetSum(),
		PositiveSpans:    toSpans(h.GetPositiveSpans()),
		PositiveBuckets:  h.GetPositiveCounts(),
		NegativeSpans:    toSpans(h.GetNegativeSpans()),
		NegativeBuckets:  h.GetNegativeCounts(),
		CustomValues:     h.GetCustomValues(),
	}
}

func fromSpans(spans []histogram.Span) []*BucketSpan {
	if len(spans) == 0 {
		return nil
	}
	out := make([]*BucketSpan, len(spans))
	for i, s := range spans {
		out[i] = &BucketSpan{Offset: s.Offset, Length: s.Length}
	}
	return out
}

func toSpans(spans []*BucketSpan) []histogram.Span {
	if len(spans) == 0 {
		return nil
	}
	out := make([]histogram.Span, len(spans))
	for i, s := range spans {
		out[i] = histogram.Span{Offset: s.GetOffset(), Length: s.GetLength()}
	}
	return out
}

// FromExemplar converts an exemplar to its wire form, viewing its labels'
// strings as FromLabels does.
func FromExemplar(e exemplar.Exemplar) *Exemplar {
	return &Exemplar{Labels: FromLabels(nil, e.Labels), Value: e.Value, TimestampMs: e.Ts}
}

// ToExemplar converts an exemplar from its wire form, validating its labels
// as ToLabels does; an exemplar may have no labels.
func ToExemplar(b *labels.ScratchBuilder, e *Exemplar) (exemplar.Exemplar, error) {
	ls := labels.EmptyLabels()
	if len(e.GetLabels()) > 0 {
		var err error
		if ls, err = ToLabels(b, e.GetLabels()); err != nil {
			return exemplar.Exemplar{}, err
		}
	}
	return exemplar.Exemplar{Labels: ls, Value: e.GetValue(), Ts: e.GetTimestampMs(), HasTs: true}, nil
}

// FromMetadata converts metric metadata to its wire form; empty metadata
// becomes nil.
func FromMetadata(m metadata.Metadata) *Metadata {
	if m == (metadata.Metadata{}) {
		return nil
	}
	return &Metadata{Type: string(m.Type), Help: m.Help, Unit: m.Unit}
}

// ToMetadata converts metric metadata from its wire form; nil becomes
// empty metadata.
func (m *Metadata) ToMetadata() metadata.Metadata {
	if m == nil {
		return metadata.Metadata{}
	}
	return metadata.Metadata{Type: model.MetricType(m.GetType()), Help: m.GetHelp(), Unit: m.GetUnit()}
}
