package distributor

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"

	"github.com/census-metrics/census/ring"
)

// BenchmarkAppender_ShardAndEncode measures the distributor's own work for
// one scrape-sized transaction: append (hash and buffer) 10,000 series of
// 10 labels, encode each once, group them onto 3 replicas among 10
// ingesters, and build every ingester's request. Network time is not
// included.
func BenchmarkAppender_ShardAndEncode(b *testing.B) {
	const numSeries = 10000
	r := &FakeRing{RF: 3}
	for i := range 10 {
		r.Instances = append(r.Instances, ring.InstanceDesc{ID: fmt.Sprintf("ingester-%d", i), Addr: fmt.Sprintf("10.0.0.%d:9095", i), State: ring.ACTIVE})
	}
	series := make([]labels.Labels, numSeries)
	for i := range series {
		series[i] = labels.FromStrings(
			"__name__", "http_requests_total",
			"cluster", "eu-west-1",
			"code", strconv.Itoa(200+i%5),
			"container", "api",
			"instance", fmt.Sprintf("10.1.%d.%d:8080", i/250, i%250),
			"job", "api",
			"method", "GET",
			"namespace", "shop",
			"node", fmt.Sprintf("node-%d", i%40),
			"pod", fmt.Sprintf("api-%d", i),
		)
	}
	d := &Distributor{ring: r, metrics: newMetrics(nil), appenders: newFreeList()}

	for _, cached := range []bool{false, true} {
		b.Run("cached_refs="+strconv.FormatBool(cached), func(b *testing.B) {
			refs := make([]storage.SeriesRef, numSeries)
			b.ReportAllocs()
			for b.Loop() {
				app := d.AppenderV2(b.Context()).(*appender)
				for i, ls := range series {
					ref, err := app.Append(refs[i], ls, 0, 1000, 1, nil, nil, storage.AOptions{})
					if err != nil {
						b.Fatal(err)
					}
					if cached {
						refs[i] = ref
					}
				}
				if err := app.encode(); err != nil {
					b.Fatal(err)
				}
				if _, err := app.shard(); err != nil {
					b.Fatal(err)
				}
				_ = app.Rollback()
			}
			b.ReportMetric(float64(numSeries)*float64(b.N)/b.Elapsed().Seconds(), "samples/s")
		})
	}
}
