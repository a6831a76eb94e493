package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/teststorage"
)

// BenchmarkQuery_RangeSumRate runs one dashboard query, an hour of
// sum by (job) (rate(x[5m])) at a 15s step over 10,000 series, through
// Census (the querier over three ingesters with RF 3, so every series
// arrives three times over gRPC and is merged) and through Prometheus'
// engine over one TSDB holding the same data, in the same loop. It reports
// the time of each and their ratio, census/prometheus.
func BenchmarkQuery_RangeSumRate(b *testing.B) {
	const (
		numSeries = 10_000
		numJobs   = 10
		step      = 15 * time.Second
	)
	end := time.Now().Truncate(time.Hour)
	start := end.Add(-time.Hour)
	// Samples from the range's start less the rate window, every 15s.
	var timestamps []int64
	for ts := start.Add(-5 * time.Minute); !ts.After(end); ts = ts.Add(step) {
		timestamps = append(timestamps, ts.UnixMilli())
	}
	lsets := make([]labels.Labels, numSeries)
	for i := range lsets {
		lsets[i] = labels.FromStrings(labels.MetricName, "x", "instance", fmt.Sprintf("host-%05d:9100", i), "job", fmt.Sprintf("job-%d", i%numJobs))
	}
	// Time-major appends, 20 scrapes per commit, as a scrape loop writes.
	load := func(app storage.AppendableV2) {
		for first := 0; first < len(timestamps); first += 20 {
			a := app.AppenderV2(context.Background())
			for i, ls := range lsets {
				for _, ts := range timestamps[first:min(first+20, len(timestamps))] {
					if _, err := a.Append(0, ls, 0, ts, float64(ts/1000*int64(1+i%7)), nil, nil, storage.AppendV2Options{}); err != nil {
						b.Fatal(err)
					}
				}
			}
			if err := a.Commit(); err != nil {
				b.Fatal(err)
			}
		}
	}
	c := newTestCluster(b, 3, 3)
	load(c.dist)
	reference := teststorage.New(b)
	load(reference)

	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 50_000_000, Timeout: 5 * time.Minute, LookbackDelta: 5 * time.Minute})
	const query = `sum by (job) (rate(x[5m]))`
	run := func(q storage.Queryable) (time.Duration, promql.Matrix) {
		begin := time.Now()
		qry, err := engine.NewRangeQuery(context.Background(), q, nil, query, start, end, step)
		if err != nil {
			b.Fatal(err)
		}
		defer qry.Close()
		res := qry.Exec(context.Background())
		if res.Err != nil {
			b.Fatal(res.Err)
		}
		m, err := res.Matrix()
		if err != nil {
			b.Fatal(err)
		}
		d := time.Since(begin)
		// Close hands the points back to the engine's pools: keep a copy.
		out := make(promql.Matrix, len(m))
		for i, s := range m {
			out[i] = promql.Series{Metric: s.Metric, Floats: append([]promql.FPoint(nil), s.Floats...)}
		}
		return d, out
	}
	// Both answer the same before anything is timed.
	_, want := run(reference)
	_, got := run(c.queryable)
	if len(want) != numJobs || len(got) != numJobs {
		b.Fatalf("got %d series from Census and %d from Prometheus, want %d", len(got), len(want), numJobs)
	}
	for i := range want {
		if !labels.Equal(want[i].Metric, got[i].Metric) || len(want[i].Floats) != len(got[i].Floats) {
			b.Fatalf("series %d: Census %s with %d points, Prometheus %s with %d", i, got[i].Metric, len(got[i].Floats), want[i].Metric, len(want[i].Floats))
		}
		for j := range want[i].Floats {
			if want[i].Floats[j] != got[i].Floats[j] {
				b.Fatalf("series %s, point %d: Census %v, Prometheus %v", want[i].Metric, j, got[i].Floats[j], want[i].Floats[j])
			}
		}
	}

	b.ReportAllocs()
	var census, prometheus time.Duration
	n := 0
	for b.Loop() {
		d, _ := run(c.queryable)
		census += d
		d, _ = run(reference)
		prometheus += d
		n++
	}
	b.ReportMetric(float64(census.Nanoseconds())/float64(n), "census-ns/query")
	b.ReportMetric(float64(prometheus.Nanoseconds())/float64(n), "prometheus-ns/query")
	b.ReportMetric(float64(census)/float64(prometheus), "census/prometheus")
}
