package querier_test

import (
	"context"
	"fmt"
	"math"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
)

// BenchmarkQueryable_Select reads 1,000 series of 120 samples (a TSDB
// chunk each) from three ingesters holding identical replicas: fan-out,
// gRPC streaming, merge, decoding and trimming.
func BenchmarkQueryable_Select(b *testing.B) {
	const numSeries, samplesPerSeries = 1000, 120
	data := make([]series, 0, numSeries)
	for i := range numSeries {
		s := series{lset: labels.FromStrings(labels.MetricName, "bench_total", "instance", fmt.Sprintf("host-%04d", i), "job", "bench")}
		for j := range samplesPerSeries {
			s.samples = append(s.samples, sample{T: int64(j) * scrapeInterval, F: float64(i * j)})
		}
		data = append(data, s)
	}
	c := newCluster(b, 3, dbWith(b, data), dbWith(b, data), dbWith(b, data))
	metric := labels.MustNewMatcher(labels.MatchEqual, labels.MetricName, "bench_total")
	ctx := context.Background()

	b.ReportAllocs()
	var it chunkenc.Iterator
	for b.Loop() {
		q, err := c.queryable.Querier(math.MinInt64, math.MaxInt64)
		if err != nil {
			b.Fatal(err)
		}
		set := q.Select(ctx, true, nil, metric)
		var gotSeries, gotSamples int
		for set.Next() {
			gotSeries++
			it = set.At().Iterator(it)
			for it.Next() != chunkenc.ValNone {
				gotSamples++
			}
		}
		if err := set.Err(); err != nil {
			b.Fatal(err)
		}
		if gotSeries != numSeries || gotSamples != numSeries*samplesPerSeries {
			b.Fatalf("got %d series, %d samples; want %d, %d", gotSeries, gotSamples, numSeries, numSeries*samplesPerSeries)
		}
		if err := q.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(numSeries*b.N)/b.Elapsed().Seconds(), "series/s")
}
