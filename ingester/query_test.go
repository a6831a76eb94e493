package ingester_test

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/census-metrics/census/ingester"
	censuspb "github.com/census-metrics/census/proto"
)

// The test data of the query tests: three series from 1s to 5s and one from
// 100s to 102s, every sample valued its timestamp.
var (
	upA       = []string{"__name__", "up", "instance", "a", "job", "api"}
	upB       = []string{"__name__", "up", "instance", "b", "job", "api"}
	requestsD = []string{"__name__", "requests_total", "job", "db"}
	lateD     = []string{"__name__", "late", "job", "db"}
	early     = linear(1000, 1000, 5)
	late      = linear(100_000, 1000, 3)
)

func startQueryFixture(t *testing.T) *testIngester {
	t.Helper()
	ti := startIngester(t, t.TempDir())
	push(t, ti.client,
		series(pairs(upA...), early...),
		series(pairs(upB...), early...),
		series(pairs(requestsD...), early...),
		series(pairs(lateD...), late...),
	)
	return ti
}

func TestIngester_QueryStream(t *testing.T) {
	ti := startQueryFixture(t)
	match := func(typ labels.MatchType, name, value string) *labels.Matcher {
		return labels.MustNewMatcher(typ, name, value)
	}
	anyName := match(labels.MatchRegexp, "__name__", ".+")

	for _, tc := range []struct {
		name       string
		start, end int64
		matchers   []*labels.Matcher
		want       []streamedSeries
	}{
		{
			name: "equal", start: 0, end: 200_000,
			matchers: []*labels.Matcher{match(labels.MatchEqual, "job", "api")},
			want:     []streamedSeries{{fmtLabels(upA...), early}, {fmtLabels(upB...), early}},
		},
		{
			name: "not equal", start: 0, end: 200_000,
			matchers: []*labels.Matcher{anyName, match(labels.MatchNotEqual, "job", "api")},
			want:     []streamedSeries{{fmtLabels(lateD...), late}, {fmtLabels(requestsD...), early}},
		},
		{
			name: "regexp", start: 0, end: 200_000,
			matchers: []*labels.Matcher{match(labels.MatchRegexp, "instance", "a|c")},
			want:     []streamedSeries{{fmtLabels(upA...), early}},
		},
		{
			name: "not regexp", start: 0, end: 200_000,
			matchers: []*labels.Matcher{match(labels.MatchNotRegexp, "__name__", "up|late")},
			want:     []streamedSeries{{fmtLabels(requestsD...), early}},
		},
		{
			// Chunks come whole: the samples outside the range are the querier's to trim.
			name: "range inside a chunk returns the whole chunk", start: 2000, end: 3000,
			matchers: []*labels.Matcher{anyName},
			want:     []streamedSeries{{fmtLabels(requestsD...), early}, {fmtLabels(upA...), early}, {fmtLabels(upB...), early}},
		},
		{
			name: "range selects the late series only", start: 100_500, end: 200_000,
			matchers: []*labels.Matcher{anyName},
			want:     []streamedSeries{{fmtLabels(lateD...), late}},
		},
		{
			name: "range between the series selects nothing", start: 6000, end: 99_000,
			matchers: []*labels.Matcher{anyName},
		},
		{
			name: "matchers matching nothing", start: 0, end: 200_000,
			matchers: []*labels.Matcher{match(labels.MatchEqual, "job", "nope")},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _ := queryStream(t, ti.client, tc.start, tc.end, tc.matchers...)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestIngester_QueryStreamChunksAndFrames(t *testing.T) {
	ti := startIngester(t, t.TempDir())

	// 500 samples a second apart fill several head chunks (120 samples each).
	long := linear(0, 1000, 500)
	push(t, ti.client, series(pairs("__name__", "long"), long...))
	stream, err := ti.client.QueryStream(context.Background(), &censuspb.QueryStreamRequest{
		StartMs: 0, EndMs: 1_000_000,
		Matchers: censuspb.FromMatchers([]*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "__name__", "long")}),
	})
	require.NoError(t, err)
	resp, err := stream.Recv()
	require.NoError(t, err)
	require.Len(t, resp.GetSeries(), 1)
	chks := resp.GetSeries()[0].GetChunks()
	require.Len(t, chks, 5, "500 samples in chunks of 120")
	samples, err := decodeChunks(chks)
	require.NoError(t, err)
	require.Equal(t, long, samples)

	// 300 series leave in frames of at most 128, sorted across frames.
	var batch []*censuspb.TimeSeries
	var want []streamedSeries
	for i := range 300 {
		ls := []string{"__name__", "many", "i", string(rune('a'+i/26/26)) + string(rune('a'+i/26%26)) + string(rune('a'+i%26))}
		batch = append(batch, series(pairs(ls...), sample{T: 1000, V: float64(i)}))
		want = append(want, streamedSeries{fmtLabels(ls...), []sample{{T: 1000, V: float64(i)}}})
	}
	push(t, ti.client, batch...)
	got, frames := queryStream(t, ti.client, 0, 2000, labels.MustNewMatcher(labels.MatchEqual, "__name__", "many"))
	require.Equal(t, want, got)
	require.Equal(t, 3, frames, "128 + 128 + 44 series")
}

// TestChunkEncodingNumbers pins the wire encoding numbers to chunkenc's, which
// the ingester casts between.
func TestChunkEncodingNumbers(t *testing.T) {
	require.Equal(t, int32(chunkenc.EncNone), int32(censuspb.Chunk_NONE))
	require.Equal(t, int32(chunkenc.EncXOR), int32(censuspb.Chunk_XOR))
	require.Equal(t, int32(chunkenc.EncHistogram), int32(censuspb.Chunk_HISTOGRAM))
	require.Equal(t, int32(chunkenc.EncFloatHistogram), int32(censuspb.Chunk_FLOAT_HISTOGRAM))
	require.Equal(t, int32(chunkenc.EncXOR2), int32(censuspb.Chunk_XOR2))
	require.Equal(t, int32(chunkenc.EncHistogramST), int32(censuspb.Chunk_HISTOGRAM_ST))
	require.Equal(t, int32(chunkenc.EncFloatHistogramST), int32(censuspb.Chunk_FLOAT_HISTOGRAM_ST))
}

// cancelledStream is a QueryStream server stream whose caller is gone.
type cancelledStream struct {
	grpc.ServerStream // Unused; panics if called.
	ctx               context.Context
	sent              int
}

func (s *cancelledStream) Context() context.Context { return s.ctx }

func (s *cancelledStream) Send(*censuspb.QueryStreamResponse) error {
	s.sent++
	return nil
}

func TestIngester_QueryStreamStopsWhenCallerIsGone(t *testing.T) {
	ti := startQueryFixture(t)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Unix(0, 0))
	defer cancel2()

	for _, tc := range []struct {
		name string
		ctx  context.Context
		want codes.Code
	}{
		{name: "cancelled", ctx: cancelled, want: codes.Canceled},
		{name: "deadline passed", ctx: expired, want: codes.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &cancelledStream{ctx: tc.ctx}
			err := ti.ing.QueryStream(&censuspb.QueryStreamRequest{
				StartMs: 0, EndMs: 200_000,
				Matchers: censuspb.FromMatchers([]*labels.Matcher{labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+")}),
			}, s)
			require.Equal(t, tc.want, status.Code(ingester.ToStatus(err)), "error: %v", err)
			require.Zero(t, s.sent)
		})
	}
}

func TestIngester_LabelNames(t *testing.T) {
	ti := startQueryFixture(t)
	for _, tc := range []struct {
		name       string
		start, end int64
		matchers   []*labels.Matcher
		limit      int64
		want       []string
	}{
		{name: "all", start: 0, end: 200_000, want: []string{"__name__", "instance", "job"}},
		{
			name: "matchers", start: 0, end: 200_000,
			matchers: []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "job", "db")},
			want:     []string{"__name__", "job"},
		},
		{name: "limit keeps the smallest", start: 0, end: 200_000, limit: 2, want: []string{"__name__", "instance"}},
		{name: "range after every sample", start: 300_000, end: 400_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := ti.client.LabelNames(context.Background(), &censuspb.LabelNamesRequest{
				StartMs: tc.start, EndMs: tc.end, Matchers: censuspb.FromMatchers(tc.matchers), Limit: tc.limit,
			})
			require.NoError(t, err)
			require.Equal(t, tc.want, resp.GetNames())
		})
	}
}

func TestIngester_LabelValues(t *testing.T) {
	ti := startQueryFixture(t)
	for _, tc := range []struct {
		name     string
		label    string
		matchers []*labels.Matcher
		limit    int64
		want     []string
	}{
		{name: "all", label: "job", want: []string{"api", "db"}},
		{
			name: "matchers", label: "__name__",
			matchers: []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "job", "db")},
			want:     []string{"late", "requests_total"},
		},
		{name: "limit keeps the smallest", label: "__name__", limit: 2, want: []string{"late", "requests_total"}},
		{name: "limit of one", label: "instance", limit: 1, want: []string{"a"}},
		{name: "unknown label", label: "nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := ti.client.LabelValues(context.Background(), &censuspb.LabelValuesRequest{
				Name: tc.label, StartMs: 0, EndMs: 200_000, Matchers: censuspb.FromMatchers(tc.matchers), Limit: tc.limit,
			})
			require.NoError(t, err)
			require.Equal(t, tc.want, resp.GetValues())
		})
	}
}

func TestIngester_Series(t *testing.T) {
	ti := startQueryFixture(t)
	anyName := labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+")
	for _, tc := range []struct {
		name       string
		start, end int64
		matchers   []*labels.Matcher
		limit      int64
		want       []string
	}{
		{
			name: "matchers", start: 0, end: 200_000,
			matchers: []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "job", "api")},
			want:     []string{fmtLabels(upA...), fmtLabels(upB...)},
		},
		{
			name: "limit keeps the smallest", start: 0, end: 200_000, limit: 2,
			matchers: []*labels.Matcher{anyName},
			want:     []string{fmtLabels(lateD...), fmtLabels(requestsD...)},
		},
		{
			name: "range", start: 100_000, end: 200_000,
			matchers: []*labels.Matcher{anyName},
			want:     []string{fmtLabels(lateD...)},
		},
		{name: "range between the series", start: 6000, end: 99_000, matchers: []*labels.Matcher{anyName}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := ti.client.Series(context.Background(), &censuspb.SeriesRequest{
				StartMs: tc.start, EndMs: tc.end, Matchers: censuspb.FromMatchers(tc.matchers), Limit: tc.limit,
			})
			require.NoError(t, err)
			var got []string
			for _, s := range resp.GetSeries() {
				got = append(got, censuspb.FormatLabelPairs(s.GetLabels()))
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func TestIngester_QueryInvalidArgument(t *testing.T) {
	ti := startQueryFixture(t)
	badRegexp := []*censuspb.LabelMatcher{{Type: censuspb.LabelMatcher_RE, Name: "job", Value: "(unclosed"}}
	ctx := context.Background()

	for _, tc := range []struct {
		name    string
		call    func() error
		message string
	}{
		{
			name: "query stream bad regexp", message: "invalid matchers",
			call: func() error {
				stream, err := ti.client.QueryStream(ctx, &censuspb.QueryStreamRequest{EndMs: 1, Matchers: badRegexp})
				if err != nil {
					return err
				}
				_, err = stream.Recv()
				return err
			},
		},
		{
			name: "label names bad regexp", message: "invalid matchers",
			call: func() error {
				_, err := ti.client.LabelNames(ctx, &censuspb.LabelNamesRequest{EndMs: 1, Matchers: badRegexp})
				return err
			},
		},
		{
			name: "label values bad regexp", message: "invalid matchers",
			call: func() error {
				_, err := ti.client.LabelValues(ctx, &censuspb.LabelValuesRequest{Name: "job", EndMs: 1, Matchers: badRegexp})
				return err
			},
		},
		{
			name: "series bad regexp", message: "invalid matchers",
			call: func() error {
				_, err := ti.client.Series(ctx, &censuspb.SeriesRequest{EndMs: 1, Matchers: badRegexp})
				return err
			},
		},
		{
			name: "negative limit", message: "invalid limit: -1 is negative",
			call: func() error {
				_, err := ti.client.Series(ctx, &censuspb.SeriesRequest{EndMs: 1, Limit: -1})
				return err
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			require.Equal(t, codes.InvalidArgument, status.Code(err), "error: %v", err)
			require.Contains(t, status.Convert(err).Message(), tc.message)
		})
	}
}

// cancellingStream is a QueryStream server stream whose caller goes away
// once it has received its first frame.
type cancellingStream struct {
	grpc.ServerStream // Unused; panics if called.
	ctx               context.Context
	cancel            context.CancelFunc
	sent              int
}

func (s *cancellingStream) Context() context.Context { return s.ctx }

func (s *cancellingStream) Send(*censuspb.QueryStreamResponse) error {
	s.sent++
	s.cancel()
	return nil
}

func TestIngester_QueryStreamStopsMidStream(t *testing.T) {
	ti := startIngester(t, t.TempDir())
	var batch []*censuspb.TimeSeries
	for i := range 1000 {
		batch = append(batch, series(pairs("__name__", "many", "i", fmt.Sprintf("%04d", i)), sample{T: 1000, V: 1}))
	}
	push(t, ti.client, batch...)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &cancellingStream{ctx: ctx, cancel: cancel}
	err := ti.ing.QueryStream(&censuspb.QueryStreamRequest{
		StartMs: 0, EndMs: 2000,
		Matchers: censuspb.FromMatchers([]*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "__name__", "many")}),
	}, s)
	require.Equal(t, codes.Canceled, status.Code(ingester.ToStatus(err)), "error: %v", err)
	require.Equal(t, 1, s.sent, "the first frame of 128 series, then nothing more")
}

// TestIngester_QueryLimits: the querier sends its per-query limits with
// each request, and the ingester stops once it would send more.
func TestIngester_QueryLimits(t *testing.T) {
	anyName := []*labels.Matcher{labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+")}
	ti := startIngester(t, t.TempDir())
	push(t, ti.client,
		series(pairs(upA...), early...),
		series(pairs(upB...), early...),
		series(pairs(requestsD...), early...),
		series(pairs(lateD...), late...),
	)
	for _, tc := range []struct {
		name                 string
		maxSeries, maxChunks int64
		matchers             []*labels.Matcher
		message              string              // Of QueryStream; empty: it succeeds.
		limit                censuspb.QueryLimit // The limit message names.
		series               string              // Of Series; empty: it succeeds.
	}{
		{
			name: "series limit", maxSeries: 3, matchers: anyName, limit: censuspb.QueryLimitMaxSeries,
			message: "query limit exceeded: the query selects more than 3 series (--query.max-series)",
			series:  "query limit exceeded: the request selects more than 3 series (--query.max-series)",
		},
		{
			name: "series limit not reached", maxSeries: 2,
			matchers: []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "job", "api")},
		},
		{
			// The fixture's four series have one chunk each.
			name: "chunk limit", maxChunks: 3, matchers: anyName, limit: censuspb.QueryLimitMaxChunks,
			message: "query limit exceeded: the query reads more than 3 chunks (--query.max-chunks)",
		},
		{name: "chunk limit reached exactly", maxChunks: 4, matchers: anyName},
		{name: "no limits", matchers: anyName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream, err := ti.client.QueryStream(context.Background(), &censuspb.QueryStreamRequest{
				EndMs: 200_000, Matchers: censuspb.FromMatchers(tc.matchers), MaxSeries: tc.maxSeries, MaxChunks: tc.maxChunks,
			})
			require.NoError(t, err)
			for err == nil {
				_, err = stream.Recv()
			}
			if tc.message == "" {
				require.ErrorIs(t, err, io.EOF)
			} else {
				require.Equal(t, codes.ResourceExhausted, status.Code(err), "error: %v", err)
				require.Contains(t, status.Convert(err).Message(), tc.message)
				require.Equal(t, tc.limit, censuspb.QueryLimitOf(err), "the querier learns which limit")
			}
			_, err = ti.client.Series(context.Background(), &censuspb.SeriesRequest{EndMs: 200_000, Matchers: censuspb.FromMatchers(tc.matchers), MaxSeries: tc.maxSeries})
			if tc.series == "" {
				require.NoError(t, err)
			} else {
				require.Equal(t, codes.ResourceExhausted, status.Code(err), "error: %v", err)
				require.Contains(t, status.Convert(err).Message(), tc.series)
				require.Equal(t, censuspb.QueryLimitMaxSeries, censuspb.QueryLimitOf(err))
			}
		})
	}
}

func TestIngester_TSDBStats(t *testing.T) {
	ti := startQueryFixture(t)
	stats := func(t *testing.T, req *censuspb.TSDBStatsRequest) *censuspb.TSDBStatsResponse {
		t.Helper()
		resp, err := ti.client.TSDBStats(context.Background(), req)
		require.NoError(t, err)
		return resp
	}
	byName := func(ss []*censuspb.Stat) map[string]uint64 {
		out := map[string]uint64{}
		for _, s := range ss {
			out[s.GetName()] = s.GetCount()
		}
		return out
	}

	resp := stats(t, &censuspb.TSDBStatsRequest{})
	require.Equal(t, uint64(4), resp.GetNumSeries())
	require.Equal(t, int64(1000), resp.GetMinTimeMs())
	require.Equal(t, int64(102_000), resp.GetMaxTimeMs())
	require.Equal(t, int64(4), resp.GetChunkCount(), "one head chunk per series")
	// Label pairs: __name__ x3, instance x2, job x2.
	require.Equal(t, int64(7), resp.GetNumLabelPairs())
	require.Equal(t, map[string]uint64{"up": 2, "requests_total": 1, "late": 1}, byName(resp.GetCardinalityMetrics()))
	require.Equal(t, map[string]uint64{"__name__": 3, "instance": 2, "job": 2}, byName(resp.GetCardinalityLabels()))
	require.Equal(t, map[string]uint64{"job=api": 2, "job=db": 2, "__name__=up": 2, "instance=a": 1, "instance=b": 1, "__name__=late": 1, "__name__=requests_total": 1},
		byName(resp.GetLabelValuePairs()))
	// As Prometheus computes it: each value's bytes, as many times as
	// series hold it.
	require.Equal(t, labels.SizeOfLabels("__name__", "up", 2)+labels.SizeOfLabels("__name__", "requests_total", 1)+labels.SizeOfLabels("__name__", "late", 1),
		byName(resp.GetLabelValueBytes())["__name__"])

	byJob := stats(t, &censuspb.TSDBStatsRequest{LabelName: "job", Limit: 1})
	require.Len(t, byJob.GetCardinalityMetrics(), 1, "the limit caps every list")
	require.Equal(t, uint64(2), byJob.GetCardinalityMetrics()[0].GetCount())
	require.Len(t, byJob.GetLabelValuePairs(), 1)

	_, err := ti.client.TSDBStats(context.Background(), &censuspb.TSDBStatsRequest{Limit: -1})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "error: %v", err)
}
