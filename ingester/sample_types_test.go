package ingester_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/tsdbutil"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	censuspb "github.com/census-metrics/census/proto"
)

// typedSample is one float or native histogram sample as the tests expect it.
type typedSample struct {
	T  int64
	V  float64
	H  *histogram.Histogram
	FH *histogram.FloatHistogram
}

func (s typedSample) String() string {
	switch {
	case s.H != nil:
		return fmt.Sprintf("%d: %s", s.T, s.H)
	case s.FH != nil:
		return fmt.Sprintf("%d: %s", s.T, s.FH)
	}
	return fmt.Sprintf("%d: %g", s.T, s.V)
}

func (s typedSample) equals(o typedSample) bool {
	switch {
	case s.T != o.T:
		return false
	case s.H != nil:
		return o.H != nil && s.H.Equals(o.H)
	case s.FH != nil:
		return o.FH != nil && s.FH.Equals(o.FH)
	}
	return o.H == nil && o.FH == nil && s.V == o.V
}

// queryTyped runs QueryStream and decodes every chunk by its encoding,
// returning samples by series and the encodings of each series' chunks.
func queryTyped(t testing.TB, c censuspb.IngesterClient, start, end int64, ms ...*labels.Matcher) (map[string][]typedSample, map[string][]censuspb.Chunk_Encoding) {
	t.Helper()
	stream, err := c.QueryStream(context.Background(), &censuspb.QueryStreamRequest{StartMs: start, EndMs: end, Matchers: censuspb.FromMatchers(ms)})
	require.NoError(t, err)
	samples := map[string][]typedSample{}
	encodings := map[string][]censuspb.Chunk_Encoding{}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return samples, encodings
		}
		require.NoError(t, err)
		for _, s := range resp.GetSeries() {
			name := censuspb.FormatLabelPairs(s.GetLabels())
			for _, chk := range s.GetChunks() {
				encodings[name] = append(encodings[name], chk.GetEncoding())
				c, err := chunkenc.FromData(chunkenc.Encoding(chk.GetEncoding()), chk.GetData())
				require.NoError(t, err)
				it := c.Iterator(nil)
				for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
					var ts typedSample
					switch vt {
					case chunkenc.ValFloat:
						ts.T, ts.V = it.At()
					case chunkenc.ValHistogram:
						ts.T, ts.H = it.AtHistogram(nil)
					case chunkenc.ValFloatHistogram:
						ts.T, ts.FH = it.AtFloatHistogram(nil)
					}
					samples[name] = append(samples[name], ts)
				}
				require.NoError(t, it.Err())
			}
		}
	}
}

func requireSamples(t testing.TB, want, got []typedSample, series string) {
	t.Helper()
	require.Len(t, got, len(want), "series %s: got %v", series, got)
	for i := range want {
		require.True(t, want[i].equals(got[i]), "series %s sample %d: want %s, got %s", series, i, want[i], got[i])
	}
}

// TestIngester_NativeHistograms pushes integer, float and custom-bucket
// native histograms, and a series that turns from floats to histograms, and
// reads them back from QueryStream's chunks, before and after a restart.
func TestIngester_NativeHistograms(t *testing.T) {
	dir := t.TempDir()
	ti := startIngester(t, dir)

	want := map[string][]typedSample{}
	wantEncodings := map[string][]censuspb.Chunk_Encoding{}
	var req censuspb.PushRequest
	add := func(name string, encodings []censuspb.Chunk_Encoding, samples ...typedSample) {
		ts := &censuspb.TimeSeries{Labels: pairs("__name__", name)}
		for _, s := range samples {
			switch {
			case s.H != nil:
				ts.Histograms = append(ts.Histograms, censuspb.FromHistogram(s.T, s.H))
			case s.FH != nil:
				ts.Histograms = append(ts.Histograms, censuspb.FromFloatHistogram(s.T, s.FH))
			default:
				ts.Samples = append(ts.Samples, &censuspb.Sample{TimestampMs: s.T, Value: s.V})
			}
		}
		req.Series = append(req.Series, ts)
		want[fmtLabels("__name__", name)] = samples
		wantEncodings[fmtLabels("__name__", name)] = encodings
	}
	var ints, floats, custom, mixed []typedSample
	for i, h := range tsdbutil.GenerateTestHistograms(5) {
		ints = append(ints, typedSample{T: int64(i+1) * 1000, H: h})
	}
	for i, h := range tsdbutil.GenerateTestFloatHistograms(5) {
		floats = append(floats, typedSample{T: int64(i+1) * 1000, FH: h})
	}
	for i, h := range tsdbutil.GenerateTestCustomBucketsHistograms(3) {
		custom = append(custom, typedSample{T: int64(i+1) * 1000, H: h})
	}
	mixed = []typedSample{{T: 1000, V: 1}, {T: 2000, V: 2}, {T: 3000, H: tsdbutil.GenerateTestHistogram(3)}, {T: 4000, H: tsdbutil.GenerateTestHistogram(4)}}
	add("h_int", []censuspb.Chunk_Encoding{censuspb.Chunk_HISTOGRAM}, ints...)
	add("h_float", []censuspb.Chunk_Encoding{censuspb.Chunk_FLOAT_HISTOGRAM}, floats...)
	add("h_custom", []censuspb.Chunk_Encoding{censuspb.Chunk_HISTOGRAM}, custom...)
	add("mixed", []censuspb.Chunk_Encoding{censuspb.Chunk_XOR, censuspb.Chunk_HISTOGRAM}, mixed...)

	// A histogram whose buckets do not add up to its count is refused; the
	// other samples of its series are stored.
	bad := tsdbutil.GenerateTestHistogram(9)
	bad.Count = 1
	req.Series = append(req.Series, &censuspb.TimeSeries{
		Labels:     pairs("__name__", "h_bad"),
		Samples:    []*censuspb.Sample{{TimestampMs: 1000, Value: 1}},
		Histograms: []*censuspb.Histogram{censuspb.FromHistogram(2000, bad)},
	})
	want[fmtLabels("__name__", "h_bad")] = []typedSample{{T: 1000, V: 1}}
	wantEncodings[fmtLabels("__name__", "h_bad")] = []censuspb.Chunk_Encoding{censuspb.Chunk_XOR}

	_, err := ti.client.Push(context.Background(), &req)
	requireRejected(t, err, codes.InvalidArgument, rejection{"invalid_histogram", 1, `series {__name__="h_bad"}, timestamp 2000: invalid native histogram: 93 observations found in buckets, but the Count field is 1`})

	check := func(ti *testIngester) {
		t.Helper()
		got, encodings := queryTyped(t, ti.client, 0, 10_000, labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+"))
		require.Len(t, got, len(want))
		for series, w := range want {
			requireSamples(t, w, got[series], series)
		}
		require.Equal(t, wantEncodings, encodings)
	}
	check(ti)
	ti.stop()
	check(startIngester(t, dir))
}

func TestIngester_Exemplars(t *testing.T) {
	dir := t.TempDir()
	ti := startIngester(t, dir)
	ex := func(traceID string, v float64, ts int64) *censuspb.Exemplar {
		return &censuspb.Exemplar{Labels: pairs("trace_id", traceID), Value: v, TimestampMs: ts}
	}
	requests := pairs("__name__", "requests_total", "job", "api")
	latency := pairs("__name__", "latency_seconds_bucket", "job", "api", "le", "0.5")
	push(t, ti.client,
		// Out of time order on the wire: the ingester sorts them.
		&censuspb.TimeSeries{Labels: requests, Samples: wireSamples(linear(1000, 1000, 5)...), Exemplars: []*censuspb.Exemplar{ex("b", 2, 3000), ex("a", 1, 1000)}},
		&censuspb.TimeSeries{Labels: latency, Samples: wireSamples(sample{T: 2000, V: 3}), Exemplars: []*censuspb.Exemplar{ex("c", 0.3, 2000)}},
	)
	// An exemplar behind its series' newest is left out, its sample stored.
	push(t, ti.client, &censuspb.TimeSeries{Labels: requests, Samples: wireSamples(sample{T: 6000, V: 6}), Exemplars: []*censuspb.Exemplar{ex("late", 9, 2500)}})
	require.NoError(t, testutil.GatherAndCompare(ti.reg, strings.NewReader(`
# HELP census_ingester_discarded_exemplars_total Exemplars a push left out while storing their samples, by reason.
# TYPE census_ingester_discarded_exemplars_total counter
census_ingester_discarded_exemplars_total{reason="out_of_order"} 1
`), "census_ingester_discarded_exemplars_total"))

	query := func(ti *testIngester, start, end int64, sets ...[]*labels.Matcher) *censuspb.ExemplarsResponse {
		t.Helper()
		req := &censuspb.ExemplarsRequest{StartMs: start, EndMs: end}
		for _, s := range sets {
			req.MatcherSets = append(req.MatcherSets, &censuspb.MatcherSet{Matchers: censuspb.FromMatchers(s)})
		}
		resp, err := ti.client.QueryExemplars(context.Background(), req)
		require.NoError(t, err)
		return resp
	}
	isRequests := []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "__name__", "requests_total")}
	isLatency := []*labels.Matcher{labels.MustNewMatcher(labels.MatchRegexp, "__name__", "latency.*")}
	requestsAll := &censuspb.SeriesExemplars{Labels: requests, Exemplars: []*censuspb.Exemplar{ex("a", 1, 1000), ex("b", 2, 3000)}}
	latencyAll := &censuspb.SeriesExemplars{Labels: latency, Exemplars: []*censuspb.Exemplar{ex("c", 0.3, 2000)}}
	check := func(ti *testIngester) {
		t.Helper()
		for _, tc := range []struct {
			name       string
			start, end int64
			sets       [][]*labels.Matcher
			want       []*censuspb.SeriesExemplars
		}{
			{name: "one series", start: 0, end: 10_000, sets: [][]*labels.Matcher{isRequests}, want: []*censuspb.SeriesExemplars{requestsAll}},
			{name: "time range", start: 2000, end: 4000, sets: [][]*labels.Matcher{isRequests}, want: []*censuspb.SeriesExemplars{{Labels: requests, Exemplars: []*censuspb.Exemplar{ex("b", 2, 3000)}}}},
			{name: "union of matcher sets", start: 0, end: 10_000, sets: [][]*labels.Matcher{isRequests, isLatency}},
			{name: "no match", start: 0, end: 10_000, sets: [][]*labels.Matcher{{labels.MustNewMatcher(labels.MatchEqual, "job", "db")}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got := query(ti, tc.start, tc.end, tc.sets...)
				if tc.name == "union of matcher sets" {
					// The TSDB answers the series in no fixed order.
					require.Len(t, got.GetSeries(), 2)
					for _, s := range got.GetSeries() {
						if censuspb.FormatLabelPairs(s.GetLabels()) == censuspb.FormatLabelPairs(requests) {
							require.True(t, proto.Equal(requestsAll, s), "got %v", s)
						} else {
							require.True(t, proto.Equal(latencyAll, s), "got %v", s)
						}
					}
					return
				}
				require.True(t, proto.Equal(&censuspb.ExemplarsResponse{Series: tc.want}, got), "got %v", got)
			})
		}
	}
	check(ti)
	// Exemplars are in the WAL and the head snapshot: a restart keeps them.
	ti.stop()
	check(startIngester(t, dir))

	// With exemplar storage off, pushes with exemplars still store their
	// samples, and no exemplar is answered.
	cfg := testConfig(t.TempDir())
	cfg.MaxExemplars = 0
	off := startIngesterWith(t, cfg)
	push(t, off.client, &censuspb.TimeSeries{Labels: requests, Samples: wireSamples(sample{T: 1000, V: 1}), Exemplars: []*censuspb.Exemplar{ex("a", 1, 1000)}})
	require.Empty(t, query(off, 0, 10_000, isRequests).GetSeries())
	require.Len(t, storedSamples(t, off, "requests_total", 10_000), 1)
}

func TestIngester_Metadata(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Limits.MaxSeriesPerMetric = 2
	ti := startIngesterWith(t, cfg)
	md := func(typ, help, unit string) *censuspb.Metadata {
		return &censuspb.Metadata{Type: typ, Help: help, Unit: unit}
	}
	latency := md("histogram", "Request latency.", "seconds")
	withMeta := func(m *censuspb.Metadata, nv ...string) *censuspb.TimeSeries {
		return &censuspb.TimeSeries{Labels: pairs(nv...), Samples: wireSamples(sample{T: 1000, V: 1}), Metadata: m}
	}
	push(t, ti.client,
		withMeta(latency, "__name__", "latency_seconds_bucket", "le", "0.5"),
		withMeta(latency, "__name__", "latency_seconds_bucket", "le", "+Inf"),
		withMeta(latency, "__name__", "latency_seconds_count"),
		withMeta(latency, "__name__", "latency_seconds_sum"),
		withMeta(md("summary", "GC pauses.", ""), "__name__", "gc_seconds", "quantile", "0.5"),
		withMeta(md("summary", "GC pauses.", ""), "__name__", "gc_seconds_count"),
		withMeta(md("gauge", "Up.", ""), "__name__", "up", "job", "a"),
		// Two targets may describe one metric differently: both are kept.
		withMeta(md("gauge", "Target up.", ""), "__name__", "up", "job", "b"),
		withMeta(md("counter", "Requests.", ""), "__name__", "requests_total"),
		withMeta(nil, "__name__", "no_metadata"),
		// Metadata without samples, as remote write 1.0 sends it.
		&censuspb.TimeSeries{Labels: pairs("__name__", "idle"), Metadata: md("gauge", "Idle.", "")},
	)
	// A series refused by a limit leaves no metadata behind.
	_, err := ti.client.Push(context.Background(), &censuspb.PushRequest{Series: []*censuspb.TimeSeries{
		withMeta(md("gauge", "Refused.", ""), "__name__", "up", "job", "c"),
	}})
	requireRejected(t, err, codes.ResourceExhausted, rejection{"max_series_per_metric", 1, `series {__name__="up", job="c"} would exceed the limit of 2 series of metric "up"`})

	entry := func(family string, m *censuspb.Metadata) *censuspb.MetricMetadata {
		return &censuspb.MetricMetadata{MetricFamily: family, Metadata: m}
	}
	all := []*censuspb.MetricMetadata{
		entry("gc_seconds", md("summary", "GC pauses.", "")),
		entry("idle", md("gauge", "Idle.", "")),
		entry("latency_seconds", latency),
		entry("requests_total", md("counter", "Requests.", "")),
		entry("up", md("gauge", "Target up.", "")),
		entry("up", md("gauge", "Up.", "")),
	}
	for _, tc := range []struct {
		name string
		req  *censuspb.MetricsMetadataRequest
		want []*censuspb.MetricMetadata
	}{
		{name: "all", req: &censuspb.MetricsMetadataRequest{}, want: all},
		{name: "one family", req: &censuspb.MetricsMetadataRequest{Metric: "up"}, want: all[4:]},
		{name: "a series name is not a family", req: &censuspb.MetricsMetadataRequest{Metric: "latency_seconds_bucket"}},
		{name: "limit", req: &censuspb.MetricsMetadataRequest{Limit: 2}, want: all[:2]},
		{name: "limit per metric", req: &censuspb.MetricsMetadataRequest{Metric: "up", LimitPerMetric: 1}, want: all[4:5]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ti.client.MetricsMetadata(context.Background(), tc.req)
			require.NoError(t, err)
			require.True(t, proto.Equal(&censuspb.MetricsMetadataResponse{Metadata: tc.want}, got), "got %v", got)
		})
	}
	_, err = ti.client.MetricsMetadata(context.Background(), &censuspb.MetricsMetadataRequest{Limit: -1})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "error: %v", err)
}
