package ingester_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	censuspb "github.com/census-metrics/census/proto"
)

// BenchmarkIngester_Push pushes, over gRPC on loopback, requests of 1,000
// series with 10 labels and one sample each, every request one scrape
// interval after the previous: the steady state of an ingester.
func BenchmarkIngester_Push(b *testing.B) {
	const (
		seriesPerRequest = 1000
		interval         = 15_000 // ms
	)
	ti := startIngester(b, b.TempDir())
	req := &censuspb.PushRequest{}
	for i := range seriesPerRequest {
		req.Series = append(req.Series, series(pairs(
			"__name__", "http_requests_total",
			"cluster", "eu-west-1",
			"code", fmt.Sprint(200+i%5),
			"container", "api",
			"handler", fmt.Sprintf("/api/v1/resource/%d", i/5),
			"instance", fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250),
			"job", "api",
			"method", "GET",
			"namespace", "prod",
			"pod", fmt.Sprintf("api-%d", i%50),
		), sample{}))
	}
	ctx := context.Background()
	ts := int64(0)

	b.ReportAllocs()
	for b.Loop() {
		ts += interval
		for _, s := range req.Series {
			s.Samples[0].TimestampMs = ts
			s.Samples[0].Value = float64(ts)
		}
		_, err := ti.client.Push(ctx, req)
		require.NoError(b, err)
	}
	b.ReportMetric(float64(b.N*seriesPerRequest)/b.Elapsed().Seconds(), "samples/s")
}
