package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"

	censuspb "github.com/census-metrics/census/proto"
)

// appendThroughCluster appends n series through the distributor, each with
// samples at the given timestamps valued by value, in commits of at most
// batch series.
func appendThroughCluster(t testing.TB, c *testCluster, n, batch int, lset func(i int) labels.Labels, timestamps []int64, value func(i int, ts int64) float64) {
	t.Helper()
	for start := 0; start < n; start += batch {
		app := c.dist.AppenderV2(context.Background())
		for i := start; i < min(start+batch, n); i++ {
			ls := lset(i)
			var ref storage.SeriesRef
			for _, ts := range timestamps {
				var err error
				ref, err = app.Append(ref, ls, 0, ts, value(i, ts), nil, nil, storage.AppendV2Options{})
				require.NoError(t, err)
			}
		}
		require.NoError(t, app.Commit())
	}
}

// TestQuery_PushdownSelectsOneOf100000Series checks that the ingesters
// evaluate the matchers and the time range: a query for one series of
// 100,000 fetches that series' replicas alone, and only its chunks in the
// queried range.
func TestQuery_PushdownSelectsOneOf100000Series(t *testing.T) {
	if testing.Short() {
		t.Skip("stores 100,000 series on three ingesters")
	}
	const numSeries = 100_000
	c := newTestCluster(t, 3, 3)
	end := time.Now().Truncate(time.Minute).UnixMilli()
	step := int64(15_000)
	// Every series has two hours of samples at 15s: four chunks each.
	var timestamps []int64
	for ts := end - 2*3600_000 + step; ts <= end; ts += step {
		timestamps = append(timestamps, ts)
	}
	series := func(i int) labels.Labels {
		return labels.FromStrings(labels.MetricName, "pushdown_total", "instance", fmt.Sprintf("host-%06d", i), "job", "pushdown")
	}
	// The series the query selects gets all of them, appended first so
	// that they are in order; the others one sample only, to keep the test
	// quick.
	value := func(_ int, ts int64) float64 { return float64(ts) / 1000 }
	appendThroughCluster(t, c, 1, 1, func(int) labels.Labels { return series(42_000) }, timestamps, value)
	appendThroughCluster(t, c, numSeries, 5000, series, timestamps[len(timestamps)-1:], value)

	// The chunks of the selected series, as one ingester holds them.
	client, err := c.clients.Get(c.ingesters[0].addr)
	require.NoError(t, err)
	stream, err := client.QueryStream(context.Background(), &censuspb.QueryStreamRequest{
		StartMs: math.MinInt64, EndMs: math.MaxInt64,
		Matchers: []*censuspb.LabelMatcher{{Type: censuspb.LabelMatcher_EQ, Name: "instance", Value: "host-042000"}},
	})
	require.NoError(t, err)
	var all []*censuspb.Chunk
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		for _, s := range resp.GetSeries() {
			all = append(all, s.GetChunks()...)
		}
	}
	require.Greater(t, len(all), 3, "the series has several chunks")
	overlapping := func(mint, maxt int64) (n float64) {
		for _, c := range all {
			if c.GetMaxTimeMs() >= mint && c.GetMinTimeMs() <= maxt {
				n++
			}
		}
		return n
	}

	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 1e6, Timeout: time.Minute, LookbackDelta: 5 * time.Minute})
	fetched := func() (series, chunks float64) {
		series, err := gathered(c.reg, "census_querier_series_fetched_total")
		require.NoError(t, err)
		chunks, err = gathered(c.reg, "census_querier_chunks_fetched_total")
		require.NoError(t, err)
		return series, chunks
	}
	for _, tc := range []struct {
		name       string
		query      string
		start, end int64
		partial    bool // Some chunks of the series lie outside the range.
	}{
		// The newest samples only: the lookback reaches into the last
		// chunk.
		{name: "instant", query: `pushdown_total{instance="host-042000"}`, start: end, end: end, partial: true},
		// The whole two hours: every chunk of the series.
		{name: "range over every chunk", query: `rate(pushdown_total{instance="host-042000"}[5m])`, start: end - 2*3600_000 + 5*60_000, end: end},
		// The first hour: the chunks of the second hour stay in the
		// ingesters.
		{name: "range over the first hour", query: `pushdown_total{instance="host-042000"}`, start: end - 2*3600_000 + step, end: end - 3600_000, partial: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seriesBefore, chunksBefore := fetched()
			q, err := engine.NewRangeQuery(context.Background(), c.queryable, nil, tc.query, time.UnixMilli(tc.start), time.UnixMilli(tc.end), time.Minute)
			require.NoError(t, err)
			defer q.Close()
			res := q.Exec(context.Background())
			require.NoError(t, res.Err)
			m, err := res.Matrix()
			require.NoError(t, err)
			require.Len(t, m, 1)
			require.Equal(t, "host-042000", m[0].Metric.Get("instance"))

			seriesAfter, chunksAfter := fetched()
			require.Equal(t, float64(3), seriesAfter-seriesBefore, "the series from each of its three replicas, nothing else")
			// The engine selects from the start less the lookback or the
			// range (5m) to the end.
			got := (chunksAfter - chunksBefore) / 3
			require.GreaterOrEqual(t, got, overlapping(tc.start, tc.end), "every chunk in range")
			require.LessOrEqual(t, got, overlapping(tc.start-5*60_000, tc.end), "only the chunks in range cross the wire")
			if tc.partial {
				require.Less(t, got, float64(len(all)), "some chunks stay in the ingesters")
			}
		})
	}
}
