package censuspb

import (
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// ErrMalformedPush wraps every error of a push request that is not a valid
// PushRequest, so servers can map it to InvalidArgument with errors.Is.
var ErrMalformedPush = errors.New("malformed push request")

// PushDecoder reads wire-form PushRequests into reused messages. Decoding
// a PushRequest with the generated code allocates three objects per label
// and dominates the cost of a push; PushDecoder reads the labels and
// samples of each series in place from the request's bytes, so a push
// allocates nothing per label. The label pairs and samples beyond the
// length of ts.Labels and ts.Samples are kept for the next series. The zero
// PushDecoder is ready to use; it is not safe for concurrent use.
type PushDecoder struct {
	ts TimeSeries
}

// pair returns a label pair appended to w.ts.Labels, reused if one is kept.
func (w *PushDecoder) pair() *LabelPair {
	n := len(w.ts.Labels)
	if n < cap(w.ts.Labels) {
		if p := w.ts.Labels[:n+1][n]; p != nil {
			w.ts.Labels = w.ts.Labels[:n+1]
			return p
		}
	}
	p := &LabelPair{}
	w.ts.Labels = append(w.ts.Labels, p)
	return p
}

// sample returns a sample appended to w.ts.Samples, reused if one is kept.
func (w *PushDecoder) sample() *Sample {
	n := len(w.ts.Samples)
	if n < cap(w.ts.Samples) {
		if s := w.ts.Samples[:n+1][n]; s != nil {
			w.ts.Samples = w.ts.Samples[:n+1]
			return s
		}
	}
	s := &Sample{}
	w.ts.Samples = append(w.ts.Samples, s)
	return s
}

// Reset forgets the decoded series, keeping its messages for reuse but none
// of the request's bytes.
func (w *PushDecoder) Reset() {
	for _, p := range w.ts.Labels {
		p.Name, p.Value = nil, nil
	}
	w.ts.Labels, w.ts.Samples = w.ts.Labels[:0], w.ts.Samples[:0]
	w.ts.Histograms, w.ts.Exemplars, w.ts.Metadata = nil, nil, nil
}

// Decode calls each with every series of the wire-form PushRequest b, in
// order, and stops at the first error each returns. A series is valid only
// during its call: its label names and values view b (ToLabels copies
// them), and its messages are reused for the next series.
func (w *PushDecoder) Decode(b []byte, each func(*TimeSeries) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: %w", ErrMalformedPush, protowire.ParseError(n))
		}
		b = b[n:]
		if num != fieldPushRequestSeries || typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return fmt.Errorf("%w: %w", ErrMalformedPush, protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return fmt.Errorf("%w: series: %w", ErrMalformedPush, protowire.ParseError(n))
		}
		b = b[n:]
		ts, err := w.decode(v)
		if err != nil {
			return err
		}
		if err := each(ts); err != nil {
			return err
		}
	}
	return nil
}

// decode reads one TimeSeries from b into w, and returns it. It is valid
// until the next decode.
func (w *PushDecoder) decode(b []byte) (*TimeSeries, error) {
	w.Reset()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, fmt.Errorf("%w: series field: %w", ErrMalformedPush, protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.BytesType || num < fieldTimeSeriesLabels || num > fieldTimeSeriesMetadata {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return nil, fmt.Errorf("%w: series field %d: %w", ErrMalformedPush, num, protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return nil, fmt.Errorf("%w: series field %d: %w", ErrMalformedPush, num, protowire.ParseError(n))
		}
		b = b[n:]
		var err error
		switch num {
		case fieldTimeSeriesLabels:
			err = decodeLabelPair(w.pair(), v)
		case fieldTimeSeriesSamples:
			err = decodeSample(w.sample(), v)
		case fieldTimeSeriesHistogram:
			// Histograms, exemplars and metadata are rare next to
			// labels and samples, and the head keeps histograms: they
			// get messages of their own.
			h := &Histogram{}
			err = proto.Unmarshal(v, h)
			w.ts.Histograms = append(w.ts.Histograms, h)
		case fieldTimeSeriesExemplar:
			e := &Exemplar{}
			err = proto.Unmarshal(v, e)
			w.ts.Exemplars = append(w.ts.Exemplars, e)
		case fieldTimeSeriesMetadata:
			w.ts.Metadata = &Metadata{}
			err = proto.Unmarshal(v, w.ts.Metadata)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: series field %d: %w", ErrMalformedPush, num, err)
		}
	}
	return &w.ts, nil
}

func decodeLabelPair(p *LabelPair, b []byte) error {
	p.Name, p.Value = nil, nil
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == fieldLabelPairName || num == fieldLabelPairValue) {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			if num == fieldLabelPairName {
				p.Name = v
			} else {
				p.Value = v
			}
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
	}
	return nil
}

func decodeSample(s *Sample, b []byte) error {
	s.TimestampMs, s.Value, s.StartTimestampMs = 0, 0, 0
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case num == fieldSampleTimestamp && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			s.TimestampMs = int64(v)
		case num == fieldSampleStartTime && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			s.StartTimestampMs = int64(v)
		case num == fieldSampleValue && typ == protowire.Fixed64Type:
			v, n := protowire.ConsumeFixed64(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			s.Value = math.Float64frombits(v)
		default:
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return nil
}
