package ingester_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/census-metrics/census/ingester"
	censuspb "github.com/census-metrics/census/proto"
)

// rejection is a Rejection of a push as the tests expect it: firstError is a
// substring of Rejection.first_error.
type rejection struct {
	reason     string
	samples    int64
	firstError string
}

// requireRejected checks that err is a push failure with code and exactly
// the rejections want, in the ingester's order of reasons.
func requireRejected(t testing.TB, err error, code codes.Code, want ...rejection) {
	t.Helper()
	require.Equal(t, code, status.Code(err), "error: %v", err)
	st := status.Convert(err)
	require.Len(t, st.Details(), 1, "status details of %v", err)
	resp, ok := st.Details()[0].(*censuspb.PushResponse)
	require.True(t, ok, "details are %T", st.Details()[0])
	require.Len(t, resp.GetRejections(), len(want), "rejections %v", resp.GetRejections())
	for i, w := range want {
		got := resp.GetRejections()[i]
		require.Equal(t, w.reason, got.GetReason(), "rejection %d: %v", i, got)
		require.Equal(t, w.samples, got.GetSamples(), "rejection %d: %v", i, got)
		require.Contains(t, got.GetFirstError(), w.firstError, "rejection %d", i)
		require.Contains(t, st.Message(), got.GetFirstError(), "the message says it too")
	}
}

// requireDiscarded checks census_ingester_discarded_samples_total: want by reason,
// every other reason 0.
func requireDiscarded(t testing.TB, ti *testIngester, want map[string]int) {
	t.Helper()
	var sb strings.Builder
	sb.WriteString("# HELP census_ingester_discarded_samples_total Samples a push refused, by reason: the rule or limit that refused them.\n# TYPE census_ingester_discarded_samples_total counter\n")
	for r := range censuspb.NumReasons {
		fmt.Fprintf(&sb, "census_ingester_discarded_samples_total{reason=%q} %d\n", r, want[r.String()])
	}
	require.NoError(t, testutil.GatherAndCompare(ti.reg, strings.NewReader(sb.String()), "census_ingester_discarded_samples_total"))
}

// storedSamples returns the float samples of the series named name.
func storedSamples(t testing.TB, ti *testIngester, name string, end int64) []streamedSeries {
	t.Helper()
	got, _ := queryStream(t, ti.client, 0, end, labels.MustNewMatcher(labels.MatchEqual, "__name__", name))
	return got
}

func TestIngester_PushInvalidLabels(t *testing.T) {
	ti := startIngester(t, t.TempDir())
	cases := []struct {
		name string
		bad  []*censuspb.LabelPair
		// message is what the error must say; by default the bad series as
		// censuspb formats it.
		message string
		reason  string // invalid_label if empty.
	}{
		{name: "no-labels", bad: pairs(), message: "series has no labels", reason: "missing_metric_name"},
		{name: "empty-name", bad: pairs("", "x", "case", "empty-name")},
		{name: "utf8-name", bad: pairs("case", "utf8-name", "j\xff", "x")},
		{name: "utf8-value", bad: pairs("case", "utf8-value", "job", "\xff")},
		{name: "duplicate-name", bad: pairs("case", "duplicate-name", "job", "a", "job", "b"), reason: "duplicate_label_names"},
		{name: "unsorted-names", bad: pairs("job", "a", "case", "unsorted-names")},
		// The TSDB drops labels with empty values, leaving this one none.
		{name: "only-empty-values", bad: pairs("case", ""), message: `{case=""}: empty labelset: invalid sample`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			good := pairs("case", tc.name, "good", "yes")
			req := &censuspb.PushRequest{Series: []*censuspb.TimeSeries{
				series(tc.bad, sample{T: 1000, V: 1}, sample{T: 2000, V: 1}),
				series(good, sample{T: 1000, V: 2}),
			}}
			_, err := ti.client.Push(context.Background(), req)
			want := tc.message
			if want == "" {
				want = censuspb.FormatLabelPairs(tc.bad)
			}
			reason := tc.reason
			if reason == "" {
				reason = "invalid_label"
			}
			requireRejected(t, err, codes.InvalidArgument, rejection{reason, 2, want})

			// Only the good series of the push was stored.
			resp, err := ti.client.Series(context.Background(), &censuspb.SeriesRequest{
				StartMs: 0, EndMs: 2000,
				Matchers: []*censuspb.LabelMatcher{{Type: censuspb.LabelMatcher_EQ, Name: "case", Value: tc.name}},
			})
			require.NoError(t, err)
			require.Len(t, resp.GetSeries(), 1)
			require.Equal(t, censuspb.FormatLabelPairs(good), censuspb.FormatLabelPairs(resp.GetSeries()[0].GetLabels()))
		})
	}
	// No bad series hides in the head under labels the tests did not query.
	require.NoError(t, testutil.GatherAndCompare(ti.reg, strings.NewReader(fmt.Sprintf(`
# HELP census_ingester_head_series Series in the TSDB head, the in-memory part of the store.
# TYPE census_ingester_head_series gauge
census_ingester_head_series %d
`, len(cases))), "census_ingester_head_series"))
	requireDiscarded(t, ti, map[string]int{"invalid_label": 2 * (len(cases) - 2), "missing_metric_name": 2, "duplicate_label_names": 2})
}

// TestIngester_TimeRules pushes, after a first successful push, a series s
// with samples some time rule refuses and a series "other" that is fine:
// the refused samples are reported and counted, and everything else of the
// push is stored.
func TestIngester_TimeRules(t *testing.T) {
	s := pairs("__name__", "s")
	at := func(ts ...int64) []sample {
		out := make([]sample, 0, len(ts))
		for _, t := range ts {
			out = append(out, sample{T: t, V: float64(t)})
		}
		return out
	}
	hour := time.Hour.Milliseconds()

	for _, tc := range []struct {
		name   string
		window time.Duration          // --storage.out-of-order-window
		before []*censuspb.TimeSeries // Pushed first, successfully.
		push   []*censuspb.TimeSeries
		// rejected are the push's rejections; none means success.
		rejected []rejection
		want     []sample // Series s afterwards.
	}{
		{
			name:     "out of order in a series",
			push:     []*censuspb.TimeSeries{series(s, at(10, 20, 15, 30)...)},
			rejected: []rejection{{"out_of_order", 1, `series {__name__="s"}, timestamp 15: out of order sample: older than the newest sample of its series, and --storage.out-of-order-window is 0s`}},
			want:     at(10, 20, 30),
		},
		{
			name:     "same timestamp, other value",
			push:     []*censuspb.TimeSeries{series(s, sample{10, 1}, sample{10, 2}, sample{20, 2})},
			rejected: []rejection{{"duplicate_timestamp", 1, "timestamp 10: duplicate sample for timestamp 10; overrides not allowed: existing 1, new value 2: a series has one value per timestamp"}},
			want:     []sample{{10, 1}, {20, 2}},
		},
		{
			name:     "same timestamp as a stored sample, other value",
			before:   []*censuspb.TimeSeries{series(s, sample{10, 1})},
			push:     []*censuspb.TimeSeries{series(s, sample{10, 5}, sample{20, 2})},
			rejected: []rejection{{"duplicate_timestamp", 1, "timestamp 10: duplicate sample for timestamp 10; overrides not allowed: existing 1, new value 5"}},
			want:     []sample{{10, 1}, {20, 2}},
		},
		{
			name: "identical duplicate is accepted",
			push: []*censuspb.TimeSeries{series(s, sample{10, 1}, sample{10, 1}, sample{20, 2})},
			want: []sample{{10, 1}, {20, 2}},
		},
		{
			name:     "series repeated in one push",
			push:     []*censuspb.TimeSeries{series(s, at(10, 20)...), series(s, at(5, 18, 40)...)},
			rejected: []rejection{{"out_of_order", 2, "timestamp 5: out of order sample"}},
			want:     at(10, 20, 40),
		},
		{
			name: "series repeated with an identical sample",
			push: []*censuspb.TimeSeries{series(s, at(10, 20)...), series(s, at(20, 30)...)},
			want: at(10, 20, 30),
		},
		{
			name:     "behind stored samples",
			before:   []*censuspb.TimeSeries{series(s, at(100)...)},
			push:     []*censuspb.TimeSeries{series(s, at(50, 200)...)},
			rejected: []rejection{{"out_of_order", 1, "timestamp 50: out of order sample"}},
			want:     at(100, 200),
		},
		{
			name:     "too old for the head",
			before:   []*censuspb.TimeSeries{series(s, at(10*hour)...)},
			push:     []*censuspb.TimeSeries{series(s, at(0, 10*hour+1000)...)},
			rejected: []rejection{{"out_of_bounds", 1, "timestamp 0: out of bounds: older than the oldest time the TSDB head still takes"}},
			want:     at(10*hour, 10*hour+1000),
		},
		{
			name:   "out of order within the window is stored",
			window: 10 * time.Minute,
			before: []*censuspb.TimeSeries{series(s, at(hour)...)},
			push:   []*censuspb.TimeSeries{series(s, at(hour-60_000, hour+1000, hour-1000)...)},
			want:   at(hour-60_000, hour-1000, hour, hour+1000),
		},
		{
			name:     "behind the window is too old",
			window:   10 * time.Minute,
			before:   []*censuspb.TimeSeries{series(s, at(hour)...)},
			push:     []*censuspb.TimeSeries{series(s, at(hour-11*60_000, hour-60_000, hour+1000)...)},
			rejected: []rejection{{"too_old_for_out_of_order_window", 1, fmt.Sprintf("timestamp %d: too old sample: more than --storage.out-of-order-window=10m0s behind the newest sample of this ingester", hour-11*60_000)}},
			want:     at(hour-60_000, hour, hour+1000),
		},
		{
			name:     "behind the window within one push",
			window:   10 * time.Minute,
			before:   []*censuspb.TimeSeries{series(s, at(hour)...)},
			push:     []*censuspb.TimeSeries{series(s, at(hour+1000)...), series(s, at(hour-20*60_000, hour-1000)...)},
			rejected: []rejection{{"too_old_for_out_of_order_window", 1, "too old sample"}},
			want:     at(hour-1000, hour, hour+1000),
		},
		{
			name:   "invalid series and time rules in one push",
			before: []*censuspb.TimeSeries{series(s, at(100)...)},
			push: []*censuspb.TimeSeries{
				series(pairs(), at(1)...),
				series(s, at(200, 50, 200, 300)...),
				series(pairs("job", "x", "job", "y"), at(1, 2)...),
			},
			rejected: []rejection{
				{"missing_metric_name", 1, "invalid labels: series has no labels"},
				{"duplicate_label_names", 2, `label name "job" appears twice`},
				{"out_of_order", 1, "timestamp 50"},
			},
			want: at(100, 200, 300),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t.TempDir())
			cfg.OutOfOrderWindow = model.Duration(tc.window)
			ti := startIngesterWith(t, cfg)
			if tc.before != nil {
				push(t, ti.client, tc.before...)
			}
			other := series(pairs("__name__", "other"), at(10*hour+5000, 10*hour+5001)...)
			_, err := ti.client.Push(context.Background(), &censuspb.PushRequest{Series: append(tc.push, other)})
			discarded := map[string]int{}
			if len(tc.rejected) == 0 {
				require.NoError(t, err)
			} else {
				requireRejected(t, err, codes.InvalidArgument, tc.rejected...)
				for _, r := range tc.rejected {
					discarded[r.reason] += int(r.samples)
				}
			}
			requireDiscarded(t, ti, discarded)
			require.Equal(t, []streamedSeries{{Labels: censuspb.FormatLabelPairs(s), Samples: tc.want}}, storedSamples(t, ti, "s", 20*hour))
			require.Equal(t, []streamedSeries{{Labels: fmtLabels("__name__", "other"), Samples: at(10*hour+5000, 10*hour+5001)}}, storedSamples(t, ti, "other", 20*hour))
		})
	}
}

// TestIngester_Limits pushes, after series that fill the ingester up to its
// limits, a series over one limit and a series "ok" within them: the first is
// refused with an error naming the limit, its value and the series, and
// counted; the second is stored.
func TestIngester_Limits(t *testing.T) {
	existing := func(name string, n int) []*censuspb.TimeSeries {
		var out []*censuspb.TimeSeries
		for i := range n {
			out = append(out, series(pairs("__name__", name, "i", fmt.Sprint(i)), sample{T: 1000, V: 1}))
		}
		return out
	}
	many := []string{"__name__", "wide"}
	for i := range 9 {
		many = append(many, fmt.Sprintf("l%d", i), "v")
	}
	for _, tc := range []struct {
		name   string
		limits func(*ingester.Limits)
		before []*censuspb.TimeSeries
		bad    *censuspb.TimeSeries
		code   codes.Code
		want   rejection
	}{
		{
			name:   "max series",
			limits: func(l *ingester.Limits) { l.MaxSeries, l.MaxSeriesPerMetric = 4, 4 },
			before: existing("a", 3), // And "ok": 4.
			bad:    series(pairs("__name__", "b", "i", "0"), sample{T: 1000, V: 1}, sample{T: 2000, V: 2}),
			code:   codes.ResourceExhausted,
			want:   rejection{"max_series", 2, `series {__name__="b", i="0"} would exceed the limit of 4 series in this ingester (--ingester.max-series)`},
		},
		{
			name:   "max series per metric",
			limits: func(l *ingester.Limits) { l.MaxSeriesPerMetric = 3 },
			before: existing("a", 3),
			bad:    series(pairs("__name__", "a", "i", "new"), sample{T: 1000, V: 1}),
			code:   codes.ResourceExhausted,
			want:   rejection{"max_series_per_metric", 1, `series {__name__="a", i="new"} would exceed the limit of 3 series of metric "a" in this ingester (--ingester.max-series-per-metric)`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t.TempDir())
			tc.limits(&cfg.Limits)
			ti := startIngesterWith(t, cfg)
			if tc.before != nil {
				push(t, ti.client, tc.before...)
			}
			ok := series(pairs("__name__", "ok"), sample{T: 1000, V: 7})
			_, err := ti.client.Push(context.Background(), &censuspb.PushRequest{Series: []*censuspb.TimeSeries{ok, tc.bad}})
			requireRejected(t, err, tc.code, tc.want)
			requireDiscarded(t, ti, map[string]int{tc.want.reason: int(tc.want.samples)})
			require.Equal(t, []streamedSeries{{Labels: fmtLabels("__name__", "ok"), Samples: []sample{{T: 1000, V: 7}}}}, storedSamples(t, ti, "ok", 2000))
			badName := ""
			for _, p := range tc.bad.GetLabels() {
				if string(p.GetName()) == "__name__" {
					badName = string(p.GetValue())
				}
			}
			for _, s := range storedSamples(t, ti, badName, 2000) {
				require.NotEqual(t, censuspb.FormatLabelPairs(tc.bad.GetLabels()), s.Labels, "the refused series is not stored")
			}
			// Existing series keep taking samples: limits only refuse new
			// series.
			if tc.before != nil {
				push(t, ti.client, series(tc.before[0].GetLabels(), sample{T: 2000, V: 2}))
			}
		})
	}
}

// TestIngester_LimitsSpareReplayedSeries restarts an ingester with a series
// limit below the series it holds: every acknowledged series comes back,
// and only new series are refused.
func TestIngester_LimitsSpareReplayedSeries(t *testing.T) {
	dir := t.TempDir()
	first := startIngester(t, dir)
	var batch []*censuspb.TimeSeries
	for i := range 10 {
		batch = append(batch, series(pairs("__name__", "m", "i", fmt.Sprint(i)), sample{T: 1000, V: float64(i)}))
	}
	push(t, first.client, batch...)
	first.stop()

	cfg := testConfig(dir)
	cfg.Limits.MaxSeries = 5
	second := startIngesterWith(t, cfg)
	resp, err := second.client.Series(context.Background(), &censuspb.SeriesRequest{EndMs: 2000, Matchers: []*censuspb.LabelMatcher{{Name: "__name__", Value: "m"}}})
	require.NoError(t, err)
	require.Len(t, resp.GetSeries(), 10)
	push(t, second.client, series(batch[0].GetLabels(), sample{T: 2000, V: 1}))
	_, err = second.client.Push(context.Background(), &censuspb.PushRequest{Series: []*censuspb.TimeSeries{series(pairs("__name__", "new"), sample{T: 2000, V: 1})}})
	requireRejected(t, err, codes.ResourceExhausted, rejection{"max_series", 1, "limit of 5 series"})
}

func TestIngester_MaxRequestBytes(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Limits.MaxRequestBytes = 4096
	ti := startIngesterWith(t, cfg)
	var batch []*censuspb.TimeSeries
	for i := range 1000 {
		batch = append(batch, series(pairs("__name__", "m", "i", fmt.Sprint(i)), sample{T: 1000, V: 1}))
	}
	_, err := ti.client.Push(context.Background(), &censuspb.PushRequest{Series: batch})
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "error: %v", err)
	require.Contains(t, status.Convert(err).Message(), "vs. 4096")
	push(t, ti.client, batch[:10]...)
}

// TestIngester_InflightPushLimit: a push over --ingester.max-inflight-push-requests
// fails at once with Unavailable naming the flag, and is counted; queries
// are not limited; once pushes end, pushes are taken again.
func TestIngester_InflightPushLimit(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Limits.MaxInflightPushes = 2
	ti := startIngesterWith(t, cfg)
	ti.ing.OccupyPushSlots(2)
	_, err := ti.client.Push(context.Background(), &censuspb.PushRequest{Series: []*censuspb.TimeSeries{series(pairs("__name__", "up"), sample{T: 1000, V: 1})}})
	require.Equal(t, codes.Unavailable, status.Code(err), "error: %v", err)
	require.Contains(t, status.Convert(err).Message(), "at most 2 pushes at once (--ingester.max-inflight-push-requests)")
	require.NoError(t, testutil.GatherAndCompare(ti.reg, strings.NewReader(`
# HELP census_ingester_throttled_pushes_total Pushes refused with Unavailable because the ingester already worked on --ingester.max-inflight-push-requests of them, or --ingester.max-inflight-push-bytes, or found no append slot within 1s (--ingester.max-concurrent-appends, --ingester.max-concurrent-appends-during-queries).
# TYPE census_ingester_throttled_pushes_total counter
census_ingester_throttled_pushes_total 1
`), "census_ingester_throttled_pushes_total"))
	_, err = ti.client.LabelNames(context.Background(), &censuspb.LabelNamesRequest{EndMs: 10_000})
	require.NoError(t, err, "queries are not limited")

	ti.ing.OccupyPushSlots(-2)
	push(t, ti.client, series(pairs("__name__", "up"), sample{T: 1000, V: 1}))
	require.Len(t, storedSamples(t, ti, "up", 10_000), 1)
}

// TestIngester_FewerAppendsWhileQueriesRead: while a query stream is open,
// a push needs one of --ingester.max-concurrent-appends-during-queries
// slots as well, and fails with Unavailable naming the flag when it gets
// none within a second; without a query it needs none.
func TestIngester_FewerAppendsWhileQueriesRead(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Limits.MaxConcurrentAppendsDuringQueries = 1
	ti := startIngesterWith(t, cfg)
	// Enough series that the stream fills gRPC's flow-control window and
	// its server waits, mid-query, for the client to read.
	var batch []*censuspb.TimeSeries
	for n := range 5000 {
		batch = append(batch, series(pairs("__name__", "wide", "n", fmt.Sprint(n), "pad", strings.Repeat("x", 100)), sample{T: 1000, V: 1}))
	}
	push(t, ti.client, batch...)

	free := ti.ing.OccupyQueryAppendSlots(1)
	up := func(ts int64) *censuspb.PushRequest {
		return &censuspb.PushRequest{Series: []*censuspb.TimeSeries{series(pairs("__name__", "up"), sample{T: ts, V: 1})}}
	}
	_, err := ti.client.Push(context.Background(), up(1000))
	require.NoError(t, err, "no query reads: the slots during queries do not apply")

	ctx, cancel := context.WithCancel(context.Background())
	stream, err := ti.client.QueryStream(ctx, &censuspb.QueryStreamRequest{EndMs: 10_000, Matchers: []*censuspb.LabelMatcher{{Name: "__name__", Value: "wide"}}})
	require.NoError(t, err)
	_, err = stream.Recv()
	require.NoError(t, err)
	inFlight := func() float64 { return gaugeValue(t, ti.reg, "census_ingester_queries_in_flight") }
	require.Equal(t, 1.0, inFlight(), "the stream is open and not read")

	began := time.Now()
	_, err = ti.client.Push(context.Background(), up(2000))
	require.Equal(t, codes.Unavailable, status.Code(err), "error: %v", err)
	require.Contains(t, status.Convert(err).Message(), "at most 1 pushes at once (--ingester.max-concurrent-appends-during-queries)")
	require.GreaterOrEqual(t, time.Since(began), time.Second, "the push waited for a slot first")

	free()
	_, err = ti.client.Push(context.Background(), up(3000))
	require.NoError(t, err, "a free slot takes the push while the query reads")

	cancel()
	require.Eventually(t, func() bool { return inFlight() == 0 }, 10*time.Second, 10*time.Millisecond, "the cancelled stream ends")
	got := storedSamples(t, ti, "up", 10_000)
	require.Len(t, got, 1)
	require.Equal(t, []sample{{T: 1000, V: 1}, {T: 3000, V: 1}}, got[0].Samples, "the refused push stored nothing")
}

// TestIngester_InflightPushBytesLimit: a push that would take the request
// bytes in flight past --ingester.max-inflight-push-bytes fails at once;
// one alone is taken whatever its size.
func TestIngester_InflightPushBytesLimit(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Limits.MaxInflightPushBytes = 16
	ti := startIngesterWith(t, cfg)
	req := &censuspb.PushRequest{Series: []*censuspb.TimeSeries{series(pairs("__name__", "up", "job", "a-job-with-a-long-name"), sample{T: 1000, V: 1})}}
	push(t, ti.client, req.Series...) // Larger than the limit, but alone.

	ti.ing.OccupyPushBytes(1)
	_, err := ti.client.Push(context.Background(), req)
	require.Equal(t, codes.Unavailable, status.Code(err), "error: %v", err)
	require.Contains(t, status.Convert(err).Message(), "at most 16B of pushes at once (--ingester.max-inflight-push-bytes)")
	ti.ing.OccupyPushBytes(-1)
	push(t, ti.client, req.Series...)
}
