package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/querier"
)

// TestQuery_ClientDisconnectCancelsIngesters checks that a client that goes
// away cancels its query in the querier and in every real ingester: each
// ingester is mid-stream when the client disconnects, and each stream ends
// with Canceled.
func TestQuery_ClientDisconnectCancelsIngesters(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a cluster")
	}
	c := newTestCluster(t, 3, 3)
	now := time.Now().Truncate(time.Minute).UnixMilli()
	appendThroughCluster(t, c, 100, 100, func(i int) labels.Labels {
		return labels.FromStrings(labels.MetricName, "cancel_total", "instance", fmt.Sprintf("host-%03d", i))
	}, []int64{now - 60_000, now}, func(i int, ts int64) float64 { return float64(i) })
	api, err := querier.NewAPI(querier.Config{Timeout: time.Minute, MaxSamples: 1e6, LookbackDelta: 5 * time.Minute}, c.queryable, querier.BuildInfo{}, nil, nil)
	require.NoError(t, err)
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	for _, ci := range c.ingesters {
		ci.holdSends.Store(true)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/api/v1/query?query=sum(cancel_total)&time=%d", srv.URL, now/1000), nil)
		if err == nil {
			var resp *http.Response
			if resp, err = http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}
		done <- err
	}()
	require.Eventually(t, func() bool {
		for _, ci := range c.ingesters {
			if ci.openStreams.Load() != 1 {
				return false
			}
		}
		return true
	}, 30*time.Second, 5*time.Millisecond, "every ingester is streaming")

	cancel() // The client disconnects.
	require.ErrorIs(t, <-done, context.Canceled)
	require.Eventually(t, func() bool {
		for _, ci := range c.ingesters {
			if ci.canceledStreams.Load() != 1 || ci.openStreams.Load() != 0 {
				return false
			}
		}
		return true
	}, 30*time.Second, 5*time.Millisecond, "every ingester's stream ended canceled")
}
