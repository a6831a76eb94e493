package censuspb

import (
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
)

func TestHistogramRoundTrip(t *testing.T) {
	h := &histogram.Histogram{
		CounterResetHint: histogram.NotCounterReset,
		Schema:           1,
		ZeroThreshold:    0.001,
		ZeroCount:        2,
		Count:            11,
		Sum:              18.4,
		PositiveSpans:    []histogram.Span{{Offset: 0, Length: 2}, {Offset: 1, Length: 2}},
		PositiveBuckets:  []int64{1, 1, -1, 0},
		NegativeSpans:    []histogram.Span{{Offset: 0, Length: 2}},
		NegativeBuckets:  []int64{1, 2},
	}
	custom := &histogram.Histogram{Schema: histogram.CustomBucketsSchema, Count: 3, Sum: 2, PositiveSpans: []histogram.Span{{Length: 2}}, PositiveBuckets: []int64{1, 1}, CustomValues: []float64{1, 5}}

	for _, tc := range []struct {
		name string
		h    *histogram.Histogram
	}{{"exponential", h}, {"custom buckets", custom}} {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, tc.h.Validate())
			wire := roundTrip(t, FromHistogram(1234, tc.h))
			require.False(t, wire.IsFloat())
			require.Equal(t, int64(1234), wire.GetTimestampMs())
			require.Equal(t, tc.h, wire.ToHistogram())
			require.Equal(t, tc.h.ToFloat(nil), wire.ToFloatHistogram())

			fh := tc.h.ToFloat(nil)
			withStart := FromFloatHistogram(99, fh)
			withStart.StartTimestampMs = 50
			fwire := roundTrip(t, withStart)
			require.True(t, fwire.IsFloat())
			require.Equal(t, int64(50), fwire.GetStartTimestampMs())
			require.Nil(t, fwire.ToHistogram())
			require.Equal(t, fh, fwire.ToFloatHistogram())
		})
	}
}

func roundTrip(t *testing.T, h *Histogram) *Histogram {
	t.Helper()
	b, err := proto.Marshal(h)
	require.NoError(t, err)
	var out Histogram
	require.NoError(t, proto.Unmarshal(b, &out))
	return &out
}

func TestExemplarAndMetadataRoundTrip(t *testing.T) {
	var b labels.ScratchBuilder
	e := exemplar.Exemplar{Labels: labels.FromStrings("trace_id", "abc123"), Value: 0.25, Ts: 5000, HasTs: true}
	got, err := ToExemplar(&b, FromExemplar(e))
	require.NoError(t, err)
	require.Equal(t, e, got)

	empty, err := ToExemplar(&b, &Exemplar{Value: 1, TimestampMs: 2})
	require.NoError(t, err)
	require.True(t, empty.Labels.IsEmpty())

	_, err = ToExemplar(&b, &Exemplar{Labels: pairs("b", "1", "a", "2")})
	require.ErrorIs(t, err, ErrInvalidLabels)

	m := metadata.Metadata{Type: model.MetricTypeHistogram, Help: "Latency.", Unit: "seconds"}
	require.Equal(t, m, FromMetadata(m).ToMetadata())
	require.Nil(t, FromMetadata(metadata.Metadata{}))
	require.Equal(t, metadata.Metadata{}, (*Metadata)(nil).ToMetadata())
}
