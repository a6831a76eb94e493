package querier_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestAPI_HedgesAHungIngester: with one of three replicas (RF 3) not
// answering, a query answers completely once the other two did and the
// hedge delay passed, warns which ingester was not waited for, and ends
// the hung stream; without hedging it waits until its timeout.
func TestAPI_HedgesAHungIngester(t *testing.T) {
	query := url.Values{"query": {`http_requests_total`}, "time": {"1800"}}
	all := newCluster(t, 3, dbWith(t, testData()), dbWith(t, testData()), dbWith(t, testData()))
	_, want := call(t, newAPI(t, all.queryable), http.MethodGet, "/api/v1/query", query)
	wantResult := decode(t, want).Data

	c := newCluster(t, 3, dbWith(t, testData()), dbWith(t, testData()), dbWith(t, testData()))
	c.ingesters[2].holdBeforeSending.Store(true)
	c.queryable.HedgeDelay = 50 * time.Millisecond
	cfg := testConfig
	cfg.Timeout = time.Minute
	h, _ := newAPIWithConfig(t, cfg, c.queryable)
	code, body := call(t, h, http.MethodGet, "/api/v1/query", query)
	require.Equal(t, http.StatusOK, code, "body: %s", body)
	got := decode(t, body)
	require.Equal(t, wantResult, got.Data, "the two replicas hold every series")
	require.Len(t, got.Warnings, 1)
	require.Contains(t, got.Warnings[0], "answered from replicas: ingester ingester-2")
	require.Contains(t, got.Warnings[0], "no answer within the hedge delay")
	require.Eventually(t, func() bool {
		return c.ingesters[2].canceledStreams.Load() == 1 && c.ingesters[2].openStreams.Load() == 0
	}, 10*time.Second, 10*time.Millisecond, "the hung ingester's stream ended")

	// Without hedging the query waits for the hung ingester.
	c.queryable.HedgeDelay = 0
	cfg.Timeout = 300 * time.Millisecond
	h, _ = newAPIWithConfig(t, cfg, c.queryable)
	code, body = call(t, h, http.MethodGet, "/api/v1/query", query)
	require.Equal(t, http.StatusServiceUnavailable, code, "body: %s", body)
	require.Equal(t, "timeout", decode(t, body).ErrorType)
}

// TestAPI_HedgesAHungIngesterOnLabelsAndSeries: the label and series
// endpoints answer from the replicas that answered, too.
func TestAPI_HedgesAHungIngesterOnLabelsAndSeries(t *testing.T) {
	all := newCluster(t, 3, dbWith(t, testData()), dbWith(t, testData()), dbWith(t, testData()))
	c := newCluster(t, 3, dbWith(t, testData()), dbWith(t, testData()), dbWith(t, testData()))
	c.ingesters[1].holdCalls.Store(true)
	c.queryable.HedgeDelay = 50 * time.Millisecond
	for _, path := range []string{"/api/v1/labels", "/api/v1/label/job/values", "/api/v1/series?match[]=http_requests_total"} {
		_, want := call(t, newAPI(t, all.queryable), http.MethodGet, path, nil)
		code, body := call(t, newAPI(t, c.queryable), http.MethodGet, path, nil)
		require.Equal(t, http.StatusOK, code, "%s: %s", path, body)
		got := decode(t, body)
		require.Equal(t, decode(t, want).Data, got.Data, path)
		require.Len(t, got.Warnings, 1, path)
		require.Contains(t, got.Warnings[0], "no answer within the hedge delay", path)
	}
	require.Eventually(t, func() bool { return c.ingesters[1].canceledCalls.Load() == 3 }, 10*time.Second, 10*time.Millisecond)
}

// TestAPI_MaxConcurrency: beyond --query.max-concurrency a query waits for
// a slot, and one that gets none within its timeout times out saying so.
func TestAPI_MaxConcurrency(t *testing.T) {
	c := newCluster(t, 1, dbWith(t, testData()))
	c.ingesters[0].holdBeforeSending.Store(true)
	cfg := testConfig
	cfg.Timeout = time.Minute
	cfg.MaxConcurrency = 1
	h, _ := newAPIWithConfig(t, cfg, c.queryable)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := make(chan struct{})
	go func() {
		defer close(first)
		req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/api/v1/query?query=http_requests_total&time=1800", nil)
		h.ServeHTTP(httptest.NewRecorder(), req)
	}()
	// The first query holds the only slot, waiting on the ingester.
	require.Eventually(t, func() bool { return c.ingesters[0].openStreams.Load() == 1 }, 10*time.Second, 5*time.Millisecond)
	code, body := call(t, h, http.MethodGet, "/api/v1/query", url.Values{"query": {`http_requests_total`}, "time": {"1800"}, "timeout": {"200ms"}})
	require.Equal(t, http.StatusServiceUnavailable, code, "body: %s", body)
	resp := decode(t, body)
	require.Equal(t, "timeout", resp.ErrorType)
	require.Contains(t, resp.Error, "--query.max-concurrency")
	require.Equal(t, int64(1), c.ingesters[0].openStreams.Load(), "the second query never reached the ingester")
	cancel()
	<-first
}
