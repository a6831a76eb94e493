package querier_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/querier"
)

var (
	testConfig = querier.Config{Timeout: time.Minute, MaxSamples: 1_000_000, LookbackDelta: 5 * time.Minute}
	testBuild  = querier.BuildInfo{Version: "1.2.3", Revision: "abc123", Branch: "main", BuildUser: "ci@census", BuildDate: "20250101-00:00:00", GoVersion: "go1.26.8"}
)

func newAPI(t testing.TB, q storage.SampleAndChunkQueryable) http.Handler {
	t.Helper()
	h, err := querier.NewAPI(testConfig, q, testBuild, nil, prometheus.NewPedanticRegistry())
	require.NoError(t, err)
	return h
}

// apiResponse is the envelope of every API answer.
type apiResponse struct {
	Status    string          `json:"status"`
	Data      json.RawMessage `json:"data"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Warnings  []string        `json:"warnings"`
}

// call sends a request for path with params, in the URL for GET and as a
// form for POST, and returns the status code and body.
func call(t testing.TB, h http.Handler, method, path string, params url.Values) (int, []byte) {
	t.Helper()
	var req *http.Request
	if method == http.MethodGet {
		if len(params) > 0 {
			path += "?" + params.Encode()
		}
		req = httptest.NewRequest(method, path, nil)
	} else {
		req = httptest.NewRequest(method, path, strings.NewReader(params.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.Bytes()
}

func decode(t testing.TB, body []byte) apiResponse {
	t.Helper()
	var resp apiResponse
	require.NoError(t, json.Unmarshal(body, &resp), "body: %s", body)
	return resp
}

func TestAPI_MatchesPrometheus(t *testing.T) {
	data := testData()
	census := newAPI(t, newCluster(t, 3, replicaDBs(t, data)...).queryable)
	reference := newAPI(t, dbWith(t, data)) // Prometheus' API over a TSDB holding the union.

	for _, tc := range []struct {
		name     string
		path     string
		params   url.Values
		wantCode int
		wantLen  int // Entries of data (or data.result) of a successful answer.
		warnings []string
	}{
		{
			name: "instant selector", path: "/api/v1/query",
			params:   url.Values{"query": {`http_requests_total{job="api"}`}, "time": {"1800"}},
			wantCode: http.StatusOK, wantLen: 5,
		},
		{
			name: "instant aggregation of rates", path: "/api/v1/query",
			params:   url.Values{"query": {`sum by (job) (rate(http_requests_total[5m]))`}, "time": {"1800.5"}},
			wantCode: http.StatusOK, wantLen: 2,
		},
		{
			name: "instant range selector", path: "/api/v1/query",
			params:   url.Values{"query": {`http_requests_total{instance="10.0.0.3:80"}[1m]`}, "time": {"900"}},
			wantCode: http.StatusOK, wantLen: 2,
		},
		{
			name: "instant query in the lookback after the last sample", path: "/api/v1/query",
			params:   url.Values{"query": {`http_requests_total`}, "time": {"3800"}},
			wantCode: http.StatusOK, wantLen: 10,
		},
		{
			name: "range query of rates", path: "/api/v1/query_range",
			params:   url.Values{"query": {`rate(http_requests_total[2m])`}, "start": {"600"}, "end": {"1800"}, "step": {"60"}},
			wantCode: http.StatusOK, wantLen: 10,
		},
		{
			name: "range query of raw samples, step of the scrape interval", path: "/api/v1/query_range",
			params:   url.Values{"query": {`http_requests_total{instance="10.0.0.1:80"}`}, "start": {"0"}, "end": {"3600"}, "step": {"15"}},
			wantCode: http.StatusOK, wantLen: 2,
		},
		{
			name: "series", path: "/api/v1/series",
			params:   url.Values{"match[]": {`http_requests_total{job="db"}`, `{instance="10.0.0.0:80"}`}, "start": {"0"}, "end": {"3600"}},
			wantCode: http.StatusOK, wantLen: 6,
		},
		{
			name: "series with limit", path: "/api/v1/series",
			params:   url.Values{"match[]": {`http_requests_total`}, "limit": {"3"}},
			wantCode: http.StatusOK, wantLen: 3, warnings: []string{"results truncated due to limit"},
		},
		{
			name: "labels", path: "/api/v1/labels",
			wantCode: http.StatusOK, wantLen: 3,
		},
		{
			name: "labels of matching series", path: "/api/v1/labels",
			params:   url.Values{"match[]": {`{job="api"}`}, "start": {"0"}, "end": {"3600"}},
			wantCode: http.StatusOK, wantLen: 3,
		},
		{
			name: "label values", path: "/api/v1/label/job/values",
			wantCode: http.StatusOK, wantLen: 2,
		},
		{
			name: "label values of matching series", path: "/api/v1/label/instance/values",
			params:   url.Values{"match[]": {`{job="db", instance=~"10.0.0.[12]:80"}`}},
			wantCode: http.StatusOK, wantLen: 2,
		},
		{
			name: "labels with limit", path: "/api/v1/labels",
			params:   url.Values{"limit": {"2"}},
			wantCode: http.StatusOK, wantLen: 2, warnings: []string{"results truncated due to limit"},
		},
		{
			name: "label values with limit", path: "/api/v1/label/instance/values",
			params:   url.Values{"limit": {"3"}, "match[]": {`{job="api"}`}},
			wantCode: http.StatusOK, wantLen: 3, warnings: []string{"results truncated due to limit"},
		},
		{
			name: "metric names with a time range", path: "/api/v1/label/__name__/values",
			params:   url.Values{"start": {"0"}, "end": {"100"}, "match[]": {`{instance="10.0.0.2:80"}`}},
			wantCode: http.StatusOK, wantLen: 1,
		},
		{
			name: "series in a time range without samples", path: "/api/v1/series",
			params:   url.Values{"match[]": {`http_requests_total`}, "start": {"7200"}, "end": {"7300"}},
			wantCode: http.StatusOK, wantLen: 0,
		},
		{
			name: "range query with a duration step and RFC 3339 times", path: "/api/v1/query_range",
			params:   url.Values{"query": {`max by (instance) (http_requests_total)`}, "start": {"1970-01-01T00:10:00Z"}, "end": {"1970-01-01T00:30:00Z"}, "step": {"5m"}},
			wantCode: http.StatusOK, wantLen: 5,
		},
		{
			name: "instant query of a scalar", path: "/api/v1/query",
			params:   url.Values{"query": {`scalar(sum(http_requests_total{job="db"}))`}, "time": {"1200"}},
			wantCode: http.StatusOK, wantLen: 2,
		},
		{
			name: "format query", path: "/api/v1/format_query",
			params:   url.Values{"query": {`sum(rate(http_requests_total{job="api"}[5m]))by(job)`}},
			wantCode: http.StatusOK,
		},
		{
			name: "parse query", path: "/api/v1/parse_query",
			params:   url.Values{"query": {`sum by (job) (rate(http_requests_total[5m])) > 1`}},
			wantCode: http.StatusOK,
		},
		{
			name: "range query without step", path: "/api/v1/query_range",
			params:   url.Values{"query": {`http_requests_total`}, "start": {"0"}, "end": {"60"}},
			wantCode: http.StatusBadRequest,
		},
		{
			name: "range query with too many points", path: "/api/v1/query_range",
			params:   url.Values{"query": {`http_requests_total`}, "start": {"0"}, "end": {"360000"}, "step": {"1"}},
			wantCode: http.StatusBadRequest,
		},
		{
			name: "malformed expression", path: "/api/v1/query",
			params:   url.Values{"query": {`sum(rate(http_requests_total[5m]`}, "time": {"1800"}},
			wantCode: http.StatusBadRequest,
		},
		{
			name: "malformed range expression", path: "/api/v1/query_range",
			params:   url.Values{"query": {`http_requests_total{`}, "start": {"0"}, "end": {"60"}, "step": {"15"}},
			wantCode: http.StatusBadRequest,
		},
	} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			t.Run(tc.name+" "+method, func(t *testing.T) {
				code, body := call(t, census, method, tc.path, tc.params)
				refCode, refBody := call(t, reference, method, tc.path, tc.params)
				require.Equal(t, refCode, code)
				require.JSONEq(t, string(refBody), string(body))

				require.Equal(t, tc.wantCode, code, "body: %s", body)
				resp := decode(t, body)
				require.Equal(t, tc.warnings, resp.Warnings)
				if tc.wantCode != http.StatusOK {
					require.Equal(t, "error", resp.Status)
					require.Equal(t, "bad_data", resp.ErrorType)
					require.NotEmpty(t, resp.Error)
					return
				}
				require.Equal(t, "success", resp.Status)
				var entries []json.RawMessage
				var query struct {
					Result json.RawMessage `json:"result"`
				}
				switch {
				case strings.HasSuffix(tc.path, "_query"):
					return // A string or a syntax tree, compared above.
				case json.Unmarshal(resp.Data, &query) == nil:
					// A scalar result is a [time, value] pair.
					require.NoError(t, json.Unmarshal(query.Result, &entries))
				default:
					require.NoError(t, json.Unmarshal(resp.Data, &entries))
				}
				require.Len(t, entries, tc.wantLen, "data: %s", resp.Data)
			})
		}
	}
}

func TestAPI_Values(t *testing.T) {
	data := testData()
	census := newAPI(t, newCluster(t, 3, replicaDBs(t, data)...).queryable)

	for _, tc := range []struct {
		name   string
		path   string
		params url.Values
		want   string // The data of the answer.
	}{
		{
			// At i=120: sum over both jobs and five instances of i*(inst+1).
			name: "sum at 30m", path: "/api/v1/query",
			params: url.Values{"query": {`sum(http_requests_total)`}, "time": {"1800"}},
			want:   `{"resultType":"vector","result":[{"metric":{},"value":[1800,"3600"]}]}`,
		},
		{
			// The last sample, i=239 at 59m45s, within the lookback delta.
			name: "sum after the last sample", path: "/api/v1/query",
			params: url.Values{"query": {`sum(http_requests_total)`}, "time": {"3800"}},
			want:   `{"resultType":"vector","result":[{"metric":{},"value":[3800,"7170"]}]}`,
		},
		{
			name: "nothing beyond the lookback delta", path: "/api/v1/query",
			params: url.Values{"query": {`sum(http_requests_total)`}, "time": {"3900"}},
			want:   `{"resultType":"vector","result":[]}`,
		},
		{
			// Instance 10.0.0.2 grows by 3 per 15s: 12 per minute.
			name: "difference to a minute ago", path: "/api/v1/query_range",
			params: url.Values{"query": {`http_requests_total{job="api",instance="10.0.0.2:80"} - http_requests_total{job="api",instance="10.0.0.2:80"} offset 1m`}, "start": {"600"}, "end": {"660"}, "step": {"60"}},
			want:   `{"resultType":"matrix","result":[{"metric":{"instance":"10.0.0.2:80","job":"api"},"values":[[600,"12"],[660,"12"]]}]}`,
		},
		{
			name: "series", path: "/api/v1/series",
			params: url.Values{"match[]": {`http_requests_total{instance="10.0.0.4:80"}`}},
			want: `[{"__name__":"http_requests_total","instance":"10.0.0.4:80","job":"api"},` +
				`{"__name__":"http_requests_total","instance":"10.0.0.4:80","job":"db"}]`,
		},
		{
			name: "label values", path: "/api/v1/label/job/values",
			want: `["api","db"]`,
		},
		{
			name: "build info", path: "/api/v1/status/buildinfo",
			want: `{"version":"1.2.3","revision":"abc123","branch":"main","buildUser":"ci@census","buildDate":"20250101-00:00:00","goVersion":"go1.26.8"}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := call(t, census, http.MethodGet, tc.path, tc.params)
			require.Equal(t, http.StatusOK, code, "body: %s", body)
			resp := decode(t, body)
			require.Equal(t, "success", resp.Status)
			require.JSONEq(t, tc.want, string(resp.Data))
		})
	}
}

func TestAPI_UnsupportedEndpointsAnswerEmpty(t *testing.T) {
	census := newAPI(t, newCluster(t, 3, newTestDB(t)).queryable)
	for _, tc := range []struct {
		path   string
		params url.Values
		want   string // The data of the answer; empty: only success is checked.
	}{
		{path: "/api/v1/rules", want: `{"groups":[]}`},
		{path: "/api/v1/alerts", want: `{"alerts":[]}`},
		{path: "/api/v1/targets", want: `{"activeTargets":[],"droppedTargets":[],"droppedTargetCounts":{}}`},
		{path: "/api/v1/scrape_pools", want: `{"scrapePools":[]}`},
		{path: "/api/v1/targets/metadata", want: `[]`},
		{path: "/api/v1/metadata", want: `{}`},
		{path: "/api/v1/alertmanagers", want: `{"activeAlertmanagers":[],"droppedAlertmanagers":[]}`},
		{path: "/api/v1/query_exemplars", params: url.Values{"query": {"up"}, "start": {"0"}, "end": {"60"}}, want: `[]`},
		{path: "/api/v1/status/flags", want: `{}`},
		{path: "/api/v1/status/config"},
		{path: "/api/v1/status/runtimeinfo"},
		{path: "/api/v1/status/tsdb"},
		{path: "/api/v1/status/walreplay", want: `{"min":0,"max":0,"current":0}`},
		{path: "/api/v1/features"},
		{path: "/api/v1/notifications", want: `[]`},
		{path: "/api/v1/query", params: url.Values{"query": {"up"}, "time": {"10"}}, want: `{"resultType":"vector","result":[]}`},
		{path: "/api/v1/labels", want: `[]`},
	} {
		t.Run(tc.path, func(t *testing.T) {
			code, body := call(t, census, http.MethodGet, tc.path, tc.params)
			require.Equal(t, http.StatusOK, code, "body: %s", body)
			resp := decode(t, body)
			require.Equal(t, "success", resp.Status)
			if tc.want != "" {
				require.JSONEq(t, tc.want, string(resp.Data))
			}
		})
	}
}

func TestAPI_IngesterFailures(t *testing.T) {
	data := testData()
	c := newCluster(t, 2, dbWith(t, data), dbWith(t, data), dbWith(t, data))
	census := newAPI(t, c.queryable)
	reference := newAPI(t, dbWith(t, data))
	params := url.Values{"query": {`sum by (job) (http_requests_total)`}, "time": {"1800"}}

	// One down of RF 2: the same answer, with a warning naming it.
	c.ingesters[1].stop()
	code, body := call(t, census, http.MethodGet, "/api/v1/query", params)
	require.Equal(t, http.StatusOK, code, "body: %s", body)
	_, refBody := call(t, reference, http.MethodGet, "/api/v1/query", params)
	resp, ref := decode(t, body), decode(t, refBody)
	require.JSONEq(t, string(ref.Data), string(resp.Data))
	require.Len(t, resp.Warnings, 1)
	require.Contains(t, resp.Warnings[0], "ingester ingester-1 ("+c.ingesters[1].desc.Addr+")")

	// Two down of RF 2: an error naming both.
	c.ingesters[2].stop()
	code, body = call(t, census, http.MethodGet, "/api/v1/query", params)
	require.Equal(t, http.StatusInternalServerError, code, "body: %s", body)
	resp = decode(t, body)
	require.Equal(t, "error", resp.Status)
	for _, p := range c.ingesters[1:] {
		require.Contains(t, resp.Error, "ingester "+p.desc.ID+" ("+p.desc.Addr+")")
	}
}

func TestNewAPI_InvalidConfig(t *testing.T) {
	_, err := querier.NewAPI(querier.Config{}, newCluster(t, 3).queryable, testBuild, nil, nil)
	require.ErrorContains(t, err, "--query.timeout")
}
