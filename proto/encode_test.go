package censuspb

import (
	"context"
	"math"
	"net"
	"testing"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/value"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

type testSample struct {
	st, t int64
	v     float64
}

// encodeSeries builds one TimeSeries both by hand and as a message.
func encodeSeries(t *testing.T, ls labels.Labels, samples []testSample, h *histogram.Histogram, withMeta bool) ([]byte, *TimeSeries) {
	t.Helper()
	b := AppendSeriesLabels(nil, ls)
	want := &TimeSeries{Labels: FromLabels(nil, ls)}
	for _, s := range samples {
		b = AppendSampleWithStart(b, s.st, s.t, s.v)
		want.Samples = append(want.Samples, &Sample{StartTimestampMs: s.st, TimestampMs: s.t, Value: s.v})
	}
	var err error
	if h != nil {
		b, err = AppendHistogram(b, FromHistogram(7, h))
		require.NoError(t, err)
		want.Histograms = append(want.Histograms, FromHistogram(7, h))
		e := &Exemplar{Labels: FromLabels(nil, labels.FromStrings("trace_id", "t1")), Value: 2, TimestampMs: 7}
		b, err = AppendExemplar(b, e)
		require.NoError(t, err)
		want.Exemplars = append(want.Exemplars, e)
	}
	if withMeta {
		m := &Metadata{Type: "counter", Help: "Requests.", Unit: "requests"}
		b, err = AppendMetadata(b, m)
		require.NoError(t, err)
		want.Metadata = m
	}
	return b, want
}

// TestEncode pins the hand encoding to the generated code: the bytes decode
// to the same message, and equal what proto.Marshal writes.
func TestEncode(t *testing.T) {
	h := &histogram.Histogram{Schema: 0, Count: 2, Sum: 3, PositiveSpans: []histogram.Span{{Length: 1}}, PositiveBuckets: []int64{2}}
	for _, tc := range []struct {
		name     string
		ls       labels.Labels
		samples  []testSample
		h        *histogram.Histogram
		withMeta bool
	}{
		{name: "floats", ls: labels.FromStrings("__name__", "up", "job", "api"), samples: []testSample{{0, 1000, 1}, {0, 2000, 0.5}}},
		{name: "start timestamps", ls: labels.FromStrings("__name__", "c"), samples: []testSample{{500, 1000, 1}, {500, 2000, 3}}},
		{name: "zero time and value are omitted as proto3 does", ls: labels.FromStrings("__name__", "z"), samples: []testSample{{0, 0, 0}, {0, -5, math.Copysign(0, -1)}}},
		{name: "stale marker", ls: labels.FromStrings("__name__", "s"), samples: []testSample{{0, 1000, math.Float64frombits(value.StaleNaN)}}},
		{name: "empty label value", ls: labels.FromStrings("__name__", "e", "x", ""), samples: []testSample{{0, 1, 1}}},
		{name: "histogram exemplar metadata", ls: labels.FromStrings("__name__", "h"), h: h, withMeta: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			series, want := encodeSeries(t, tc.ls, tc.samples, tc.h, tc.withMeta)
			req := AppendPushRequestSeries(nil, series)
			req = AppendPushRequestSeries(req, series)
			require.Len(t, req, 2*SizePushRequestSeries(len(series)))

			var got PushRequest
			require.NoError(t, proto.Unmarshal(req, &got))
			wantReq := &PushRequest{Series: []*TimeSeries{want, want}}
			require.True(t, proto.Equal(wantReq, &got), "decoded %v, want %v", &got, wantReq)
			marshalled, err := proto.MarshalOptions{Deterministic: true}.Marshal(wantReq)
			require.NoError(t, err)
			require.Equal(t, marshalled, req)

			// The push decoder reads the same series back, twice, into
			// the messages it reuses. (Compared in place: proto.Clone
			// would drop a -0 value.)
			var dec PushDecoder
			n := 0
			require.NoError(t, dec.Decode(req, func(ts *TimeSeries) error {
				n++
				require.True(t, proto.Equal(want, ts), "push decoder read %v, want %v", ts, want)
				return nil
			}))
			require.Equal(t, 2, n)
		})
	}
}

type pushRecorder struct {
	UnimplementedIngesterServer
	got chan *PushRequest
}

func (p *pushRecorder) Push(_ context.Context, req *PushRequest) (*PushResponse, error) {
	p.got <- req
	if len(req.Series) == 0 {
		return nil, status.Error(codes.InvalidArgument, "empty push")
	}
	return &PushResponse{Rejections: []*Rejection{{Reason: "test", Samples: int64(len(req.Series))}}}, nil
}

func TestPushEncoded(t *testing.T) {
	rec := &pushRecorder{got: make(chan *PushRequest, 2)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	RegisterIngesterServer(srv, rec)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	pool := NewClientPool()
	t.Cleanup(func() { _ = pool.Close() })
	cc, err := pool.Conn(ln.Addr().String())
	require.NoError(t, err)

	series, want := encodeSeries(t, labels.FromStrings("__name__", "up"), []testSample{{0, 1000, 1}}, nil, false)
	resp, err := PushEncoded(context.Background(), cc, AppendPushRequestSeries(nil, series))
	require.NoError(t, err)
	require.Equal(t, int64(1), resp.GetRejections()[0].GetSamples())
	require.True(t, proto.Equal(&PushRequest{Series: []*TimeSeries{want}}, <-rec.got))

	_, err = PushEncoded(context.Background(), cc, nil)
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	require.Empty(t, (<-rec.got).Series)
}
