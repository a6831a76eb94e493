package ingester_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/tsdbutil"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	censuspb "github.com/census-metrics/census/proto"
)

// typedSeries is the series ls with samples, floats and histograms.
func typedSeries(ls []*censuspb.LabelPair, samples ...typedSample) *censuspb.TimeSeries {
	ts := &censuspb.TimeSeries{Labels: ls}
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
	return ts
}

// requireResent checks census_ingester_resent_samples_total.
func requireResent(t testing.TB, reg prometheus.Gatherer, want int) {
	t.Helper()
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(fmt.Sprintf(`
# HELP census_ingester_resent_samples_total Samples of pushes that the time rules refused but this ingester already held with the same value, as a sender's retry repeats them: success, neither stored again nor discarded.
# TYPE census_ingester_resent_samples_total counter
census_ingester_resent_samples_total %d
`, want)), "census_ingester_resent_samples_total"))
}

// TestIngester_PushResend resends, after pushes that succeeded, samples of
// series s that the ingester already holds, as a sender retrying a push it
// got no acknowledgement for does, with a series "other" that is new: a
// sample identical to a stored one is success wherever it lies in its
// series, is stored once and is not counted as discarded; a sample that
// differs is refused by the same rule as without the resend.
func TestIngester_PushResend(t *testing.T) {
	s := pairs("__name__", "s")
	at := func(ts ...int64) []typedSample {
		out := make([]typedSample, 0, len(ts))
		for _, t := range ts {
			out = append(out, typedSample{T: t, V: float64(t)})
		}
		return out
	}
	hist := func(t int64, i int) typedSample {
		return typedSample{T: t, H: tsdbutil.GenerateTestHistogram(int64(i))}
	}
	fhist := func(t int64, i int) typedSample {
		return typedSample{T: t, FH: tsdbutil.GenerateTestFloatHistogram(int64(i))}
	}
	join := func(ss ...[]typedSample) []typedSample {
		var out []typedSample
		for _, s := range ss {
			out = append(out, s...)
		}
		return out
	}
	hour, minute := time.Hour.Milliseconds(), time.Minute.Milliseconds()

	for _, tc := range []struct {
		name   string
		window time.Duration   // --storage.out-of-order-window
		before [][]typedSample // Pushes of s that succeed, in order.
		resend [][]typedSample // Entries of s in one push.
		// rejected are the resend's rejections; none means success.
		rejected []rejection
		resent   int           // Samples found stored identically.
		want     []typedSample // Series s afterwards.
	}{
		{
			name:   "identical batch after newer samples",
			before: [][]typedSample{at(10, 20, 30), at(40, 50)},
			resend: [][]typedSample{at(10, 20, 30)},
			resent: 3,
			want:   at(10, 20, 30, 40, 50),
		},
		{
			name:   "identical batch up to the newest sample",
			before: [][]typedSample{at(10, 20, 30)},
			resend: [][]typedSample{at(10, 20, 30)},
			resent: 2, // The TSDB takes the newest itself.
			want:   at(10, 20, 30),
		},
		{
			name:   "resend with new samples",
			before: [][]typedSample{at(10, 20, 30)},
			resend: [][]typedSample{at(10, 20, 30, 40)},
			resent: 2,
			want:   at(10, 20, 30, 40),
		},
		{
			name:     "one differs at an old timestamp",
			before:   [][]typedSample{at(10, 20, 30), at(40)},
			resend:   [][]typedSample{{{T: 10, V: 10}, {T: 20, V: 99}, {T: 30, V: 30}}},
			rejected: []rejection{{"out_of_order", 1, `series {__name__="s"}, timestamp 20: out of order sample: older than the newest sample of its series`}},
			resent:   2,
			want:     at(10, 20, 30, 40),
		},
		{
			name:     "one differs at the newest timestamp",
			before:   [][]typedSample{at(10, 20)},
			resend:   [][]typedSample{{{T: 10, V: 10}, {T: 20, V: 99}}},
			rejected: []rejection{{"duplicate_timestamp", 1, "timestamp 20: duplicate sample for timestamp 20; overrides not allowed: existing 20, new value 99"}},
			resent:   1,
			want:     at(10, 20),
		},
		{
			name:   "behind a newer sample of the same entry",
			resend: [][]typedSample{at(10, 20, 10, 30)},
			resent: 1,
			want:   at(10, 20, 30),
		},
		{
			name:   "series repeated in one push",
			resend: [][]typedSample{at(10, 20), at(10, 20, 30)},
			resent: 1, // 20, the newest then, is taken by the ingester itself.
			want:   at(10, 20, 30),
		},
		{
			name:     "series repeated in one push, one differs",
			resend:   [][]typedSample{at(10, 20), {{T: 10, V: 5}, {T: 30, V: 30}}},
			rejected: []rejection{{"out_of_order", 1, "timestamp 10: out of order sample"}},
			want:     at(10, 20, 30),
		},
		{
			name:     "behind the head",
			before:   [][]typedSample{at(0, 1000), at(10 * hour)},
			resend:   [][]typedSample{{{T: 0, V: 0}, {T: 1000, V: 7}, {T: 10 * hour, V: float64(10 * hour)}}},
			rejected: []rejection{{"out_of_bounds", 1, "timestamp 1000: out of bounds"}},
			resent:   1,
			want:     at(0, 1000, 10*hour),
		},
		{
			name:   "out of order within the window",
			window: 10 * time.Minute,
			before: [][]typedSample{at(hour), at(hour - 5*minute)},
			resend: [][]typedSample{at(hour-5*minute, hour)},
			want:   at(hour-5*minute, hour),
		},
		{
			name:   "in the out-of-order head, behind the window",
			window: 10 * time.Minute,
			before: [][]typedSample{at(hour), at(hour - 5*minute), at(hour + 20*minute)},
			resend: [][]typedSample{at(hour-5*minute, hour)},
			resent: 2,
			want:   at(hour-5*minute, hour, hour+20*minute),
		},
		{
			name:     "behind the window, one differs",
			window:   10 * time.Minute,
			before:   [][]typedSample{at(hour, hour+minute), at(hour + 20*minute)},
			resend:   [][]typedSample{{{T: hour, V: float64(hour)}, {T: hour + minute, V: 1}}},
			rejected: []rejection{{"too_old_for_out_of_order_window", 1, fmt.Sprintf("timestamp %d: too old sample", hour+minute)}},
			resent:   1,
			want:     at(hour, hour+minute, hour+20*minute),
		},
		{
			name:   "histograms",
			before: [][]typedSample{{hist(10, 1), hist(20, 2), hist(30, 3)}, {hist(40, 4)}},
			resend: [][]typedSample{{hist(10, 1), hist(20, 2), hist(30, 3)}},
			resent: 3,
			want:   []typedSample{hist(10, 1), hist(20, 2), hist(30, 3), hist(40, 4)},
		},
		{
			name:     "histograms, one differs",
			before:   [][]typedSample{{hist(10, 1), hist(20, 2), hist(30, 3)}, {hist(40, 4)}},
			resend:   [][]typedSample{{hist(10, 1), hist(20, 9), hist(30, 3)}},
			rejected: []rejection{{"out_of_order", 1, "timestamp 20: out of order sample"}},
			resent:   2,
			want:     []typedSample{hist(10, 1), hist(20, 2), hist(30, 3), hist(40, 4)},
		},
		{
			name:   "float histograms",
			before: [][]typedSample{{fhist(10, 1), fhist(20, 2), fhist(30, 3)}, {fhist(40, 4)}},
			resend: [][]typedSample{{fhist(10, 1), fhist(20, 2), fhist(30, 3)}},
			resent: 3,
			want:   []typedSample{fhist(10, 1), fhist(20, 2), fhist(30, 3), fhist(40, 4)},
		},
		{
			name:     "a float where a histogram is stored",
			before:   [][]typedSample{{hist(10, 1)}, {hist(20, 2)}},
			resend:   [][]typedSample{at(10)},
			rejected: []rejection{{"out_of_order", 1, "timestamp 10: out of order sample"}},
			want:     []typedSample{hist(10, 1), hist(20, 2)},
		},
		{
			name:   "floats then histograms",
			before: [][]typedSample{join(at(10, 20), []typedSample{hist(30, 3)}), {hist(40, 4)}},
			resend: [][]typedSample{join(at(10, 20), []typedSample{hist(30, 3)})},
			resent: 3,
			want:   join(at(10, 20), []typedSample{hist(30, 3), hist(40, 4)}),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t.TempDir())
			cfg.OutOfOrderWindow = model.Duration(tc.window)
			ti := startIngesterWith(t, cfg)
			for _, b := range tc.before {
				push(t, ti.client, typedSeries(s, b...))
			}
			req := &censuspb.PushRequest{}
			for _, r := range tc.resend {
				req.Series = append(req.Series, typedSeries(s, r...))
			}
			otherSamples := at(20*hour+5000, 20*hour+5001)
			req.Series = append(req.Series, typedSeries(pairs("__name__", "other"), otherSamples...))
			_, err := ti.client.Push(context.Background(), req)
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
			requireResent(t, ti.reg, tc.resent)

			got, _ := queryTyped(t, ti.client, 0, 30*hour, labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+"))
			require.Len(t, got, 2, "series: %v", got)
			requireSamples(t, tc.want, got[fmtLabels("__name__", "s")], "s")
			requireSamples(t, otherSamples, got[fmtLabels("__name__", "other")], "other")
		})
	}
}

// TestIngester_PushResendCompacted resends samples that are only in a block
// any more, the head compacted away: they are success, and stored once.
func TestIngester_PushResendCompacted(t *testing.T) {
	ti := startIngester(t, t.TempDir())
	minute := time.Minute.Milliseconds()
	var floats, hists []typedSample
	// 4h of samples: once the head spans 1.5 block ranges (3h), its first
	// 2h become a block.
	for i := range 24 {
		ts := int64(i) * 10 * minute
		floats = append(floats, typedSample{T: ts, V: float64(i)})
		hists = append(hists, typedSample{T: ts, H: tsdbutil.GenerateTestHistogram(int64(i))})
	}
	f, h := pairs("__name__", "f"), pairs("__name__", "h")
	push(t, ti.client, typedSeries(f, floats...), typedSeries(h, hists...))
	require.NoError(t, ti.ing.CompactHead(context.Background()))
	require.Equal(t, 1.0, gaugeValue(t, ti.reg, "prometheus_tsdb_blocks_loaded"), "a block was written")

	// The first hour is in the block only: out of the head's bounds.
	_, err := ti.client.Push(context.Background(), &censuspb.PushRequest{Series: []*censuspb.TimeSeries{
		typedSeries(f, floats[:6]...),
		typedSeries(h, hists[:6]...),
	}})
	require.NoError(t, err)
	requireResent(t, ti.reg, 12)
	requireDiscarded(t, ti, nil)

	// A sample that differs from the block's stays refused.
	changed := &histogram.Histogram{}
	*changed = *hists[3].H
	changed.Sum++
	_, err = ti.client.Push(context.Background(), &censuspb.PushRequest{Series: []*censuspb.TimeSeries{
		typedSeries(f, floats[2], typedSample{T: floats[3].T, V: -1}),
		typedSeries(h, hists[2], typedSample{T: hists[3].T, H: changed}),
	}})
	requireRejected(t, err, codes.InvalidArgument, rejection{"out_of_bounds", 2, fmt.Sprintf(`series {__name__="f"}, timestamp %d: out of bounds`, floats[3].T)})
	requireResent(t, ti.reg, 14)
	requireDiscarded(t, ti, map[string]int{"out_of_bounds": 2})

	got, _ := queryTyped(t, ti.client, 0, 5*time.Hour.Milliseconds(), labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+"))
	requireSamples(t, floats, got[fmtLabels("__name__", "f")], "f")
	requireSamples(t, hists, got[fmtLabels("__name__", "h")], "h")
}
