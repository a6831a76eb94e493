package ingester_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	censuspb "github.com/census-metrics/census/proto"
)

func TestIngester_PushInvalidLabels(t *testing.T) {
	ti := startIngester(t, t.TempDir())
	cases := []struct {
		name string
		bad  []*censuspb.LabelPair
		// message is what the error must say besides the count; by default
		// the bad series as censuspb formats it.
		message string
	}{
		{name: "no-labels", bad: pairs(), message: "series has no labels"},
		{name: "empty-name", bad: pairs("", "x", "case", "empty-name")},
		{name: "utf8-name", bad: pairs("case", "utf8-name", "j\xff", "x")},
		{name: "utf8-value", bad: pairs("case", "utf8-value", "job", "\xff")},
		{name: "duplicate-name", bad: pairs("case", "duplicate-name", "job", "a", "job", "b")},
		{name: "unsorted-names", bad: pairs("job", "a", "case", "unsorted-names")},
		// The TSDB drops labels with empty values, leaving this one none.
		{name: "only-empty-values", bad: pairs("case", ""), message: `{case=""}: empty labelset: invalid sample`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			good := pairs("case", tc.name, "good", "yes")
			req := &censuspb.PushRequest{Series: []*censuspb.TimeSeries{
				series(tc.bad, sample{T: 1000, V: 1}),
				series(good, sample{T: 1000, V: 2}),
			}}
			_, err := ti.client.Push(context.Background(), req)
			require.Equal(t, codes.InvalidArgument, status.Code(err), "error: %v", err)
			msg := status.Convert(err).Message()
			require.Contains(t, msg, "rejected 1 series")
			want := tc.message
			if want == "" {
				want = censuspb.FormatLabelPairs(tc.bad)
			}
			require.Contains(t, msg, want)

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
}

func TestIngester_PushRejectedSamples(t *testing.T) {
	s := pairs("__name__", "s")
	at := func(ts ...int64) []sample {
		out := make([]sample, 0, len(ts))
		for _, t := range ts {
			out = append(out, sample{T: t, V: float64(t)})
		}
		return out
	}
	tenHours := (10 * time.Hour).Milliseconds()

	for _, tc := range []struct {
		name   string
		before []*censuspb.TimeSeries // Pushed first, successfully.
		push   []*censuspb.TimeSeries
		// messages are what the error must say; none means success.
		messages []string
		want     []sample // Series s afterwards.
	}{
		{
			name: "out of order in a series",
			push: []*censuspb.TimeSeries{series(s, at(10, 20, 15, 30)...)},
			messages: []string{
				"rejected 1 samples",
				`series {__name__="s"}, timestamp 15: out of order sample`,
			},
			want: at(10, 20, 30),
		},
		{
			name: "same timestamp, other value",
			push: []*censuspb.TimeSeries{series(s, sample{10, 1}, sample{10, 2}, sample{20, 2})},
			messages: []string{
				"rejected 1 samples",
				"timestamp 10: duplicate sample for timestamp 10; overrides not allowed: existing 1, new value 2",
			},
			want: []sample{{10, 1}, {20, 2}},
		},
		{
			name: "identical duplicate is accepted",
			push: []*censuspb.TimeSeries{series(s, sample{10, 1}, sample{10, 1}, sample{20, 2})},
			want: []sample{{10, 1}, {20, 2}},
		},
		{
			name: "series repeated in one push",
			push: []*censuspb.TimeSeries{series(s, at(10, 20)...), series(s, at(5, 18, 40)...)},
			messages: []string{
				"rejected 2 samples",
				"timestamp 5: out of order sample",
			},
			want: at(10, 20, 40),
		},
		{
			name: "series repeated with an identical sample",
			push: []*censuspb.TimeSeries{series(s, at(10, 20)...), series(s, at(20, 30)...)},
			want: at(10, 20, 30),
		},
		{
			name:   "behind stored samples",
			before: []*censuspb.TimeSeries{series(s, at(100)...)},
			push:   []*censuspb.TimeSeries{series(s, at(50, 200)...)},
			messages: []string{
				"rejected 1 samples",
				"timestamp 50: out of order sample",
			},
			want: at(100, 200),
		},
		{
			name:   "out of bounds",
			before: []*censuspb.TimeSeries{series(s, at(tenHours)...)},
			push:   []*censuspb.TimeSeries{series(s, at(0, tenHours+1000)...)},
			messages: []string{
				"rejected 1 samples",
				"timestamp 0: out of bounds",
			},
			want: at(tenHours, tenHours+1000),
		},
		{
			name: "invalid series and rejected sample in one push",
			push: []*censuspb.TimeSeries{series(pairs(), at(1)...), series(s, at(10, 5)...)},
			messages: []string{
				"rejected 1 series, first: invalid labels: series has no labels",
				"rejected 1 samples, first: series {__name__=\"s\"}, timestamp 5: out of order sample",
			},
			want: at(10),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ti := startIngester(t, t.TempDir())
			if tc.before != nil {
				push(t, ti.client, tc.before...)
			}
			_, err := ti.client.Push(context.Background(), &censuspb.PushRequest{Series: tc.push})
			if len(tc.messages) == 0 {
				require.NoError(t, err)
			} else {
				require.Equal(t, codes.InvalidArgument, status.Code(err), "error: %v", err)
				for _, m := range tc.messages {
					require.Contains(t, status.Convert(err).Message(), m)
				}
			}

			got, _ := queryStream(t, ti.client, 0, 2*tenHours, labels.MustNewMatcher(labels.MatchEqual, "__name__", "s"))
			require.Equal(t, []streamedSeries{{Labels: censuspb.FormatLabelPairs(s), Samples: tc.want}}, got)
			require.NoError(t, testutil.GatherAndCompare(ti.reg, strings.NewReader(fmt.Sprintf(`
# HELP census_ingester_samples_appended_total Samples committed to the TSDB by pushes.
# TYPE census_ingester_samples_appended_total counter
census_ingester_samples_appended_total %d
`, len(tc.want))), "census_ingester_samples_appended_total"))
		})
	}
}
