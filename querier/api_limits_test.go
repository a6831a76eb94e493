package querier_test

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/querier"
)

func newAPIWithConfig(t testing.TB, cfg querier.Config, q *querier.Queryable) (http.Handler, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	h, err := querier.NewAPI(cfg, q, testBuild, nil, reg)
	require.NoError(t, err)
	return h, reg
}

func TestAPI_Limits(t *testing.T) {
	data := testData()
	c := newCluster(t, 3, dbWith(t, data), dbWith(t, data), dbWith(t, data))
	// Ten series of three chunks each, on three replicas: 90 chunks fetched.
	rangeParams := url.Values{"query": {`sum(rate(http_requests_total[5m]))`}, "start": {"0"}, "end": {"3600"}, "step": {"15"}}

	for _, tc := range []struct {
		name      string
		modify    func(*querier.Config)
		path      string
		params    url.Values
		wantCode  int
		wantType  string
		wantError string
	}{
		{
			name: "within every limit", path: "/api/v1/query_range", params: rangeParams,
			modify:   func(c *querier.Config) { c.MaxSeries, c.MaxChunks = 10, 90 },
			wantCode: http.StatusOK,
		},
		{
			name: "too many series", path: "/api/v1/query_range", params: rangeParams,
			modify:   func(c *querier.Config) { c.MaxSeries = 9 },
			wantCode: http.StatusUnprocessableEntity, wantType: "execution",
			wantError: "the query fetched more than 9 series from the ingesters, the limit set by --query.max-series=9",
		},
		{
			name: "too many series, summed over the selectors", path: "/api/v1/query",
			params:   url.Values{"query": {`http_requests_total{job="api"} + on(instance) http_requests_total{job="db"}`}, "time": {"1800"}},
			modify:   func(c *querier.Config) { c.MaxSeries = 9 },
			wantCode: http.StatusUnprocessableEntity, wantType: "execution",
			wantError: "--query.max-series=9",
		},
		{
			name: "too many series in a series request", path: "/api/v1/series",
			params:   url.Values{"match[]": {`http_requests_total`}},
			modify:   func(c *querier.Config) { c.MaxSeries = 9 },
			wantCode: http.StatusUnprocessableEntity, wantType: "execution",
			wantError: "--query.max-series=9",
		},
		{
			name: "too many chunks", path: "/api/v1/query_range", params: rangeParams,
			modify:   func(c *querier.Config) { c.MaxChunks = 89 },
			wantCode: http.StatusUnprocessableEntity, wantType: "execution",
			wantError: "the query fetched more than 89 chunks from the ingesters, the limit set by --query.max-chunks=89",
		},
		{
			name: "too many samples", path: "/api/v1/query_range", params: rangeParams,
			modify:   func(c *querier.Config) { c.MaxSamples = 100 },
			wantCode: http.StatusUnprocessableEntity, wantType: "execution",
			wantError: "query processing would load too many samples into memory in query execution",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig
			tc.modify(&cfg)
			h, reg := newAPIWithConfig(t, cfg, c.queryable)
			code, body := call(t, h, http.MethodGet, tc.path, tc.params)
			require.Equal(t, tc.wantCode, code, "body: %s", body)
			resp := decode(t, body)
			if tc.wantCode == http.StatusOK {
				require.Equal(t, "success", resp.Status)
				require.Equal(t, float64(1), histogramCount(t, reg, "census_querier_query_series_fetched"))
				require.Equal(t, float64(10), histogramSum(t, reg, "census_querier_query_series_fetched"))
				require.Equal(t, float64(90), histogramSum(t, reg, "census_querier_query_chunks_fetched"))
				return
			}
			require.Equal(t, "error", resp.Status)
			require.Equal(t, tc.wantType, resp.ErrorType)
			require.Contains(t, resp.Error, tc.wantError)
		})
	}
}

// Every ingester is handed the query's limits, so it can stop as soon as
// what it alone sends breaches one; a request whose own limit keeps it
// within them hands none.
func TestAPI_LimitsReachIngesters(t *testing.T) {
	data := testData()
	c := newCluster(t, 3, dbWith(t, data), dbWith(t, data), dbWith(t, data))
	cfg := testConfig
	cfg.MaxSeries, cfg.MaxChunks = 100, 1000
	h, _ := newAPIWithConfig(t, cfg, c.queryable)

	for _, tc := range []struct {
		name                         string
		path                         string
		params                       url.Values
		wantMaxSeries, wantMaxChunks int64 // Of the QueryStream, or of the Series request.
		wantLimit                    int64 // Of the Series request.
	}{
		{name: "instant query", path: "/api/v1/query", params: url.Values{"query": {`http_requests_total`}, "time": {"1800"}}, wantMaxSeries: 100, wantMaxChunks: 1000},
		{name: "range query", path: "/api/v1/query_range", params: url.Values{"query": {`rate(http_requests_total[5m])`}, "start": {"0"}, "end": {"3600"}, "step": {"60"}}, wantMaxSeries: 100, wantMaxChunks: 1000},
		{name: "series", path: "/api/v1/series", params: url.Values{"match[]": {`http_requests_total`}}, wantMaxSeries: 100},
		{name: "series with a larger limit", path: "/api/v1/series", params: url.Values{"match[]": {`http_requests_total`}, "limit": {"500"}}, wantMaxSeries: 100, wantLimit: 501},
		{name: "series with a smaller limit", path: "/api/v1/series", params: url.Values{"match[]": {`http_requests_total`}, "limit": {"5"}}, wantLimit: 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, ing := range c.ingesters {
				ing.lastQueryStream.Store(nil)
				ing.lastSeries.Store(nil)
			}
			code, body := call(t, h, http.MethodGet, tc.path, tc.params)
			require.Equal(t, http.StatusOK, code, "body: %s", body)
			for _, ing := range c.ingesters {
				if tc.path == "/api/v1/series" {
					req := ing.lastSeries.Load()
					require.NotNil(t, req, "ingester %s asked", ing.desc.ID)
					require.Equal(t, tc.wantMaxSeries, req.GetMaxSeries())
					require.Equal(t, tc.wantLimit, req.GetLimit())
					continue
				}
				req := ing.lastQueryStream.Load()
				require.NotNil(t, req, "ingester %s asked", ing.desc.ID)
				require.Equal(t, tc.wantMaxSeries, req.GetMaxSeries())
				require.Equal(t, tc.wantMaxChunks, req.GetMaxChunks())
			}
		})
	}

	// Reads outside the HTTP API have no limits, and hand none.
	q, err := c.queryable.Querier(0, 3_600_000)
	require.NoError(t, err)
	defer q.Close()
	_, _, err = readSeries(t, q.Select(context.Background(), true, nil, mustMatcher(t, labels.MatchEqual, labels.MetricName, "http_requests_total")))
	require.NoError(t, err)
	for _, ing := range c.ingesters {
		req := ing.lastQueryStream.Load()
		require.Zero(t, req.GetMaxSeries())
		require.Zero(t, req.GetMaxChunks())
	}
}

func TestAPI_Timeout(t *testing.T) {
	c := newCluster(t, 3, dbWith(t, testData()), dbWith(t, testData()), dbWith(t, testData()))
	for _, p := range c.ingesters {
		p.holdBeforeSending.Store(true)
	}
	cfg := testConfig
	cfg.Timeout = 200 * time.Millisecond
	h, _ := newAPIWithConfig(t, cfg, c.queryable)

	code, body := call(t, h, http.MethodGet, "/api/v1/query", url.Values{"query": {`http_requests_total`}, "time": {"1800"}})
	// Prometheus' answer to a query over --query.timeout.
	require.Equal(t, http.StatusServiceUnavailable, code, "body: %s", body)
	resp := decode(t, body)
	require.Equal(t, "timeout", resp.ErrorType)
	require.Contains(t, resp.Error, "query timed out")
	// Every ingester saw its stream canceled.
	require.Eventually(t, func() bool {
		for _, p := range c.ingesters {
			if p.canceledStreams.Load() != 1 || p.openStreams.Load() != 0 {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond)
}

func TestAPI_ClientDisconnectCancelsIngesters(t *testing.T) {
	c := newCluster(t, 3, dbWith(t, testData()), dbWith(t, testData()), dbWith(t, testData()))
	for _, p := range c.ingesters {
		p.holdBeforeSending.Store(true)
	}
	srv := httptest.NewServer(newAPI(t, c.queryable))
	t.Cleanup(srv.Close)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/v1/query?query=http_requests_total&time=1800", nil)
		if err != nil {
			done <- err
			return
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	// The query is waiting on every ingester's stream.
	require.Eventually(t, func() bool {
		for _, p := range c.ingesters {
			if p.openStreams.Load() != 1 {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond)

	cancel() // The client goes away.
	require.ErrorIs(t, <-done, context.Canceled)
	require.Eventually(t, func() bool {
		for _, p := range c.ingesters {
			if p.canceledStreams.Load() != 1 || p.openStreams.Load() != 0 {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond, "every ingester's stream is canceled")
}

func TestAPI_Metrics(t *testing.T) {
	data := testData()
	c := newCluster(t, 3, dbWith(t, data), dbWith(t, data), dbWith(t, data))
	h, reg := newAPIWithConfig(t, testConfig, c.queryable)

	for range 2 {
		code, _ := call(t, h, http.MethodGet, "/api/v1/query", url.Values{"query": {`http_requests_total`}, "time": {"1800"}})
		require.Equal(t, http.StatusOK, code)
	}
	code, _ := call(t, h, http.MethodPost, "/api/v1/query", url.Values{"query": {`sum(`}})
	require.Equal(t, http.StatusBadRequest, code)
	code, _ = call(t, h, http.MethodGet, "/api/v1/label/job/values", nil)
	require.Equal(t, http.StatusOK, code)
	code, _ = call(t, h, http.MethodGet, "/api/v1/nope", nil)
	require.Equal(t, http.StatusNotFound, code)

	for _, tc := range []struct {
		endpoint, code, method string
		want                   float64
	}{
		{endpoint: "/api/v1/query", code: "200", method: "get", want: 2},
		{endpoint: "/api/v1/query", code: "400", method: "post", want: 1},
		{endpoint: "/api/v1/label/:name/values", code: "200", method: "get", want: 1},
		{endpoint: "other", code: "404", method: "get", want: 1},
	} {
		require.Equal(t, tc.want, histogramCount(t, reg, "census_querier_request_duration_seconds", "endpoint", tc.endpoint, "code", tc.code, "method", tc.method), "%+v", tc)
	}
	// The two queries that selected series; the label read is none.
	require.Equal(t, float64(2), histogramCount(t, reg, "census_querier_query_series_fetched"))
	require.Equal(t, float64(20), histogramSum(t, reg, "census_querier_query_series_fetched"))
}

func TestAPI_StatsAll(t *testing.T) {
	data := testData()
	census := newAPI(t, newCluster(t, 3, replicaDBs(t, data)...).queryable)
	reference := newAPI(t, dbWith(t, data))
	params := url.Values{"query": {`sum(rate(http_requests_total[5m]))`}, "start": {"600"}, "end": {"1200"}, "step": {"60"}, "stats": {"all"}}

	type stats struct {
		Data struct {
			Stats struct {
				Timings map[string]float64 `json:"timings"`
				Samples json.RawMessage    `json:"samples"`
			} `json:"stats"`
		} `json:"data"`
	}
	var got, want stats
	code, body := call(t, census, http.MethodGet, "/api/v1/query_range", params)
	require.Equal(t, http.StatusOK, code)
	require.NoError(t, json.Unmarshal(body, &got))
	_, refBody := call(t, reference, http.MethodGet, "/api/v1/query_range", params)
	require.NoError(t, json.Unmarshal(refBody, &want))

	require.JSONEq(t, string(want.Data.Stats.Samples), string(got.Data.Stats.Samples))
	require.Contains(t, string(got.Data.Stats.Samples), `"totalQueryableSamples":`)
	for name := range want.Data.Stats.Timings {
		require.Contains(t, got.Data.Stats.Timings, name)
	}
}

// histogramCount returns the observation count of the histogram called name
// with the given label pairs (all series summed when none are given).
func histogramCount(t testing.TB, reg *prometheus.Registry, name string, kv ...string) float64 {
	t.Helper()
	c, _ := histogramCountSum(t, reg, name, kv...)
	return c
}

func histogramSum(t testing.TB, reg *prometheus.Registry, name string, kv ...string) float64 {
	t.Helper()
	_, s := histogramCountSum(t, reg, name, kv...)
	return s
}

func histogramCountSum(t testing.TB, reg *prometheus.Registry, name string, kv ...string) (count, sum float64) {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	found := false
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(kv); i += 2 {
				if have[kv[i]] != kv[i+1] {
					continue next
				}
			}
			found = true
			count += float64(m.GetHistogram().GetSampleCount())
			sum += m.GetHistogram().GetSampleSum()
		}
	}
	require.True(t, found, "no %s%v", name, kv)
	return count, sum
}

// defaultShapeConfig is testConfig with the querier's flag defaults for the
// limits on a query's shape.
func defaultShapeConfig(t testing.TB) querier.Config {
	t.Helper()
	var defaults querier.Config
	defaults.RegisterFlags(flag.NewFlagSet("defaults", flag.ContinueOnError))
	cfg := testConfig
	cfg.MaxLength, cfg.MaxDepth, cfg.MaxPoints = defaults.MaxLength, defaults.MaxDepth, defaults.MaxPoints
	return cfg
}

// Queries whose shape would pin a core, overflow the stack or exhaust the
// memory are refused, with the flag of their limit, before they are parsed
// (length, depth) or evaluated (points), at the defaults; queries of the
// same kinds within the limits are answered.
func TestAPI_QueryShapeLimits(t *testing.T) {
	data := testData()
	c := newCluster(t, 3, dbWith(t, data), dbWith(t, data), dbWith(t, data))
	h, _ := newAPIWithConfig(t, defaultShapeConfig(t), c.queryable)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	instant := func(q string) url.Values { return url.Values{"query": {q}, "time": {"3600"}} }
	const (
		pointsError = "more than the limit set by --query.max-points=10000000"
		lengthError = "more than the limit set by --query.max-length=262144"
		depthError  = "more than the limit set by --query.max-depth=200"
	)
	for _, tc := range []struct {
		name      string
		path      string
		params    url.Values
		wantCode  int
		wantType  string
		wantError string
	}{
		{
			// 3*10^10 steps: the engine's step statistics alone would take
			// 480 GB.
			name: "a year at 1ms", path: "/api/v1/query", params: instant(`max_over_time(vector(1)[1y:1ms])`),
			wantCode: http.StatusUnprocessableEntity, wantType: "execution",
			wantError: "the query would evaluate 31536000001 points",
		},
		{
			name: "a day at 1s", path: "/api/v1/query", params: instant(`max_over_time(http_requests_total[1d:1s])`),
			wantCode: http.StatusOK,
		},
		{
			name: "30 days at 1m", path: "/api/v1/query", params: instant(`max_over_time(http_requests_total[30d:1m])`),
			wantCode: http.StatusOK,
		},
		{
			// 43,200 outer steps, each reading 86,400 inner points.
			name: "nested subqueries, only too large multiplied", path: "/api/v1/query",
			params:   instant(`max_over_time(max_over_time(http_requests_total[1d:1s])[30d:1m])`),
			wantCode: http.StatusUnprocessableEntity, wantType: "execution", wantError: pointsError,
		},
		{
			name: "nested subqueries", path: "/api/v1/query",
			params:   instant(`max_over_time(max_over_time(rate(http_requests_total[5m])[1h:1m])[1d:5m])`),
			wantCode: http.StatusOK,
		},
		{
			// 10,001 steps, each reading 3,600 points.
			name: "range query times subquery steps", path: "/api/v1/query_range",
			params:   url.Values{"query": {`max_over_time(rate(http_requests_total[5m])[1h:1s])`}, "start": {"0"}, "end": {"10000"}, "step": {"1"}},
			wantCode: http.StatusUnprocessableEntity, wantType: "execution", wantError: pointsError,
		},
		{
			name: "range query with a subquery", path: "/api/v1/query_range",
			params:   url.Values{"query": {`sum(max_over_time(rate(http_requests_total[5m])[30m:1m]))`}, "start": {"0"}, "end": {"3600"}, "step": {"15"}},
			wantCode: http.StatusOK,
		},
		{
			// 1,001 steps an hour apart each read 1,000 points, but the
			// engine evaluates the subquery across the whole 1,000 hours.
			name: "subquery across a sparse range query", path: "/api/v1/query_range",
			params:   url.Values{"query": {`max_over_time(http_requests_total[1s:1ms])`}, "start": {"0"}, "end": {"3600000"}, "step": {"3600"}},
			wantCode: http.StatusUnprocessableEntity, wantType: "execution", wantError: "the query would evaluate 3600002001 points",
		},
		{
			name: "200,000 selectors joined by or", path: "/api/v1/query",
			params:   instant(strings.Repeat("up or ", 199_999) + "up"),
			wantCode: http.StatusBadRequest, wantType: "bad_data", wantError: "the query is 1199996 bytes long, " + lengthError,
		},
		{
			name: "1,000 selectors joined by or", path: "/api/v1/query",
			params:   instant(strings.Repeat("up or ", 999) + "up"),
			wantCode: http.StatusBadRequest, wantType: "bad_data", wantError: "the query nests 1000 levels deep",
		},
		{
			name: "100 selectors joined by or", path: "/api/v1/query",
			params:   instant(strings.Repeat(`http_requests_total{job="api"} or `, 99) + "up"),
			wantCode: http.StatusOK,
		},
		{
			name: "10^5 nested parentheses", path: "/api/v1/query",
			params:   instant(strings.Repeat("(", 100_000) + "up" + strings.Repeat(")", 100_000)),
			wantCode: http.StatusBadRequest, wantType: "bad_data", wantError: "the query nests 100001 levels deep",
		},
		{
			name: "deep parentheses in a range query", path: "/api/v1/query_range",
			params:   url.Values{"query": {strings.Repeat("(", 201) + "up" + strings.Repeat(")", 201)}, "start": {"0"}, "end": {"3600"}, "step": {"15"}},
			wantCode: http.StatusBadRequest, wantType: "bad_data", wantError: depthError,
		},
		{
			name: "deep parentheses to format", path: "/api/v1/format_query",
			params:   url.Values{"query": {strings.Repeat("(", 100_000) + "up" + strings.Repeat(")", 100_000)}},
			wantCode: http.StatusBadRequest, wantType: "bad_data", wantError: depthError,
		},
		{
			name: "a long selector", path: "/api/v1/series",
			params:   url.Values{"match[]": {`{job=~"` + strings.Repeat("x|", 150_000) + `api"}`}},
			wantCode: http.StatusBadRequest, wantType: "bad_data", wantError: lengthError,
		},
		{
			// What a Grafana variable set to "All" over 5,000 instances
			// makes.
			name: "a long regular expression", path: "/api/v1/query",
			params:   instant(`sum(rate(http_requests_total{instance=~"` + strings.Repeat("10.0.123.234:9100|", 5000) + `10.0.0.1:80"}[5m]))`),
			wantCode: http.StatusOK,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := http.PostForm(srv.URL+tc.path, tc.params)
			require.NoError(t, err)
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.NoError(t, resp.Body.Close())
			// Without the limits these queries take minutes or kill the
			// process: the test would not end.
			require.Equal(t, tc.wantCode, resp.StatusCode, "body: %.1000s", body)
			got := decode(t, body)
			if tc.wantCode == http.StatusOK {
				require.Equal(t, "success", got.Status)
				return
			}
			require.Equal(t, "error", got.Status)
			require.Equal(t, tc.wantType, got.ErrorType)
			require.Contains(t, got.Error, tc.wantError)
		})
	}
}

// A query's evaluation runs under its request's deadline: one that keeps
// the engine busy (2.6 million steps, most of a second, within every limit
// but the time) ends at --query.timeout.
func TestAPI_TimeoutEndsEvaluation(t *testing.T) {
	data := testData()
	c := newCluster(t, 3, dbWith(t, data), dbWith(t, data), dbWith(t, data))
	cfg := testConfig
	cfg.Timeout = 50 * time.Millisecond
	h, _ := newAPIWithConfig(t, cfg, c.queryable)

	code, body := call(t, h, http.MethodGet, "/api/v1/query", url.Values{"query": {`count_over_time(max_over_time(http_requests_total[5m])[30d:1s])`}, "time": {"3600"}})
	require.Equal(t, http.StatusServiceUnavailable, code, "body: %s", body)
	resp := decode(t, body)
	require.Equal(t, "timeout", resp.ErrorType)
	require.Contains(t, resp.Error, "query timed out")
}

// A client that goes away ends its query's evaluation, not only its reads
// from the ingesters: the API answers the gone client 499, Prometheus'
// code of a canceled query.
func TestAPI_ClientDisconnectEndsEvaluation(t *testing.T) {
	data := testData()
	c := newCluster(t, 3, dbWith(t, data), dbWith(t, data), dbWith(t, data))
	h, _ := newAPIWithConfig(t, testConfig, c.queryable)
	served := make(chan int, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		served <- rec.Code
	}))
	t.Cleanup(srv.Close)

	// The client leaves after 50ms of an evaluation that takes most of a
	// second (2.6 million steps), within every limit but the time.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	q := url.Values{"query": {`count_over_time(max_over_time(http_requests_total[5m])[30d:1s])`}, "time": {"3600"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/v1/query?"+q.Encode(), nil)
	require.NoError(t, err)
	_, err = http.DefaultClient.Do(req) //nolint:bodyclose // There is no response.
	require.ErrorIs(t, err, context.DeadlineExceeded)
	select {
	case code := <-served:
		require.Equal(t, 499, code, "the evaluation was canceled, not finished")
	case <-time.After(30 * time.Second):
		t.Fatal("the evaluation went on after the client left")
	}
}
