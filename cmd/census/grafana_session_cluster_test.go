package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/teststorage"
	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/querier"
)

// grafanaTarget exposes a counter of three series and a gauge, with
// explicit timestamps (whole seconds) and values derived from them, and
// remembers every sample it served.
type grafanaTarget struct {
	mtx    sync.Mutex        // Guards served.
	served map[int64]float64 // Timestamps served, ms; the value is unused.
}

// grafanaSeries are the target's series, each with its value at a time.
var grafanaSeries = []struct {
	lset  labels.Labels
	value func(sec int64) float64
}{
	{labels.FromStrings(labels.MetricName, "grafana_requests_total", "code", "200", "method", "GET"), func(s int64) float64 { return float64(s * 3) }},
	{labels.FromStrings(labels.MetricName, "grafana_requests_total", "code", "500", "method", "GET"), func(s int64) float64 { return float64(s / 7) }},
	{labels.FromStrings(labels.MetricName, "grafana_requests_total", "code", "200", "method", "POST"), func(s int64) float64 { return float64(s) }},
	{labels.FromStrings(labels.MetricName, "grafana_inflight"), func(s int64) float64 { return float64(s%11) + 0.5 }},
}

func (g *grafanaTarget) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	ts := time.Now().Truncate(time.Second).UnixMilli()
	g.mtx.Lock()
	g.served[ts] = 0
	g.mtx.Unlock()
	var sb strings.Builder
	sb.WriteString("# HELP grafana_requests_total Requests served.\n# TYPE grafana_requests_total counter\n")
	for _, s := range grafanaSeries {
		if s.lset.Get(labels.MetricName) == "grafana_inflight" {
			sb.WriteString("# HELP grafana_inflight Requests in flight.\n# TYPE grafana_inflight gauge\n")
		}
		sb.WriteString(s.lset.Get(labels.MetricName))
		if code := s.lset.Get("code"); code != "" {
			fmt.Fprintf(&sb, `{code=%q,method=%q}`, code, s.lset.Get("method"))
		}
		fmt.Fprintf(&sb, " %s %d\n", strconv.FormatFloat(s.value(ts/1000), 'g', -1, 64), ts)
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	_, _ = io.WriteString(w, sb.String())
}

func (g *grafanaTarget) timestamps() []int64 {
	g.mtx.Lock()
	defer g.mtx.Unlock()
	out := make([]int64, 0, len(g.served))
	for ts := range g.served {
		out = append(out, ts)
	}
	slices.Sort(out)
	return out
}

// TestCluster_GrafanaSession sends `census all` the requests Grafana's
// Prometheus data source sends when a user saves and tests the data source
// and then builds a dashboard panel, in Grafana's form (GET for metadata
// and label values, POST forms for queries), and checks that each is
// answered as Prometheus' own API answers over the same samples.
func TestCluster_GrafanaSession(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	target := &grafanaTarget{served: map[int64]float64{}}
	targetSrv := httptest.NewServer(target)
	t.Cleanup(targetSrv.Close)
	targetURL, err := url.Parse(targetSrv.URL)
	require.NoError(t, err)
	cfgFile := filepath.Join(t.TempDir(), "scrape.yml")
	require.NoError(t, os.WriteFile(cfgFile, fmt.Appendf(nil, `
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: grafana
    static_configs:
      - targets: [%q]
`, targetURL.Host), 0o644))
	p := startRole(t, "all", roleConfig{scrapeConfig: cfgFile})
	p.waitReady(30 * time.Second)

	// Wait for ten scrapes, and until Census has stored the second newest.
	require.Eventually(t, func() bool { return len(target.timestamps()) >= 10 }, 60*time.Second, 100*time.Millisecond)
	tss := target.timestamps()
	t0, t1 := tss[0], tss[len(tss)-2]
	require.Eventually(t, func() bool {
		got, _, err := queryInstant(p, "grafana_inflight", "job", t1)
		return err == nil && got["grafana"] == grafanaSeries[3].value(t1/1000)
	}, 30*time.Second, 100*time.Millisecond, "the scrape at %d is stored", t1)

	// Prometheus' API over a TSDB holding exactly what was served up to t1,
	// labelled as the scrape labels it.
	ref := teststorage.New(t)
	app := ref.AppenderV2(context.Background())
	for _, s := range grafanaSeries {
		ls := labels.NewBuilder(s.lset).Set("job", "grafana").Set("instance", targetURL.Host).Labels()
		for _, ts := range tss {
			if ts > t1 {
				break
			}
			_, err := app.Append(0, ls, 0, ts, s.value(ts/1000), nil, nil, storage.AppendV2Options{})
			require.NoError(t, err)
		}
	}
	require.NoError(t, app.Commit())
	reference, err := querier.NewAPI(querier.Config{Timeout: time.Minute, MaxSamples: 50_000_000, LookbackDelta: 5 * time.Minute}, ref, querier.BuildInfo{}, nil, nil)
	require.NoError(t, err)

	sec := func(ms int64) string { return strconv.FormatFloat(float64(ms)/1000, 'f', -1, 64) }
	start, end := sec(t0), sec(t1)
	// Grafana aligns a range query's start and end to its step.
	const step = 2
	alignedStart, alignedEnd := sec((t0/1000+step-1)/step*step*1000), sec(t1/1000/step*step*1000)

	for _, tc := range []struct {
		name   string
		method string
		path   string
		params url.Values
		// check compares Census' data with Prometheus'; nil means equal.
		check func(t *testing.T, census, prometheus json.RawMessage)
	}{
		// Save & test: an instant query of 1+1, then the build info.
		{name: "health check", method: http.MethodPost, path: "/api/v1/query", params: url.Values{"query": {"1+1"}, "time": {"4"}}},
		{
			name: "build info", method: http.MethodGet, path: "/api/v1/status/buildinfo",
			check: func(t *testing.T, census, _ json.RawMessage) {
				var bi map[string]any
				require.NoError(t, json.Unmarshal(census, &bi))
				for _, k := range []string{"version", "revision", "branch", "buildUser", "buildDate", "goVersion"} {
					require.Contains(t, bi, k)
				}
				// Features would make Grafana take Census for Mimir.
				require.NotContains(t, bi, "features")
			},
		},
		// The query editor: label names, metric names, metadata.
		{name: "label names", method: http.MethodPost, path: "/api/v1/labels", params: url.Values{"start": {start}, "end": {end}}},
		{
			name: "metric names", method: http.MethodGet, path: "/api/v1/label/__name__/values", params: url.Values{"start": {start}, "end": {end}},
			check: func(t *testing.T, census, prometheus json.RawMessage) {
				var got, want []string
				require.NoError(t, json.Unmarshal(census, &got))
				require.NoError(t, json.Unmarshal(prometheus, &want))
				// Census also has the series the scrape itself writes, as
				// a Prometheus that scraped the target would.
				require.Subset(t, got, want)
				require.Subset(t, got, []string{"up", "scrape_duration_seconds", "scrape_samples_scraped"})
			},
		},
		{name: "metric names of a job", method: http.MethodGet, path: "/api/v1/label/__name__/values", params: url.Values{"match[]": {`{job="grafana",__name__=~"grafana_.+"}`}, "start": {start}, "end": {end}}},
		{
			name: "metadata", method: http.MethodGet, path: "/api/v1/metadata", params: url.Values{"metric": {"grafana_requests_total"}},
			check: func(t *testing.T, census, _ json.RawMessage) {
				// What Prometheus answers from the target it scraped.
				require.JSONEq(t, `{"grafana_requests_total":[{"type":"counter","help":"Requests served.","unit":""}]}`, string(census))
			},
		},
		{name: "labels of a metric", method: http.MethodPost, path: "/api/v1/labels", params: url.Values{"match[]": {"grafana_requests_total"}, "start": {start}, "end": {end}}},
		{name: "label values with match[]", method: http.MethodGet, path: "/api/v1/label/code/values", params: url.Values{"match[]": {`grafana_requests_total{method="GET"}`}, "start": {start}, "end": {end}}},
		{name: "series", method: http.MethodPost, path: "/api/v1/series", params: url.Values{"match[]": {"grafana_requests_total"}, "start": {start}, "end": {end}}},
		// The panel: range queries with Grafana's step and timeout, the
		// exemplars of the panel, and a table's instant query.
		{name: "panel rate by code", method: http.MethodPost, path: "/api/v1/query_range", params: url.Values{"query": {`sum by (code) (rate(grafana_requests_total[5s]))`}, "start": {alignedStart}, "end": {alignedEnd}, "step": {strconv.Itoa(step)}, "timeout": {"60s"}}},
		{name: "panel gauge", method: http.MethodPost, path: "/api/v1/query_range", params: url.Values{"query": {`grafana_inflight`}, "start": {alignedStart}, "end": {alignedEnd}, "step": {"1"}, "timeout": {"60s"}}},
		{name: "panel exemplars", method: http.MethodPost, path: "/api/v1/query_exemplars", params: url.Values{"query": {`sum by (code) (rate(grafana_requests_total[5s]))`}, "start": {alignedStart}, "end": {alignedEnd}}},
		{name: "table", method: http.MethodPost, path: "/api/v1/query", params: url.Values{"query": {`grafana_requests_total`}, "time": {end}, "timeout": {"60s"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			census, err := p.call(tc.method, tc.path, tc.params)
			require.NoError(t, err)
			refCode, prometheus := callHandler(t, reference, tc.method, tc.path, tc.params)
			require.Equal(t, http.StatusOK, refCode, "%s", prometheus)
			var c, r apiResponse
			require.NoError(t, json.Unmarshal(census, &c))
			require.NoError(t, json.Unmarshal(prometheus, &r))
			require.Equal(t, "success", c.Status)
			require.Empty(t, c.Warnings)
			if tc.check != nil {
				tc.check(t, c.Data, r.Data)
				return
			}
			require.JSONEq(t, sortedSeries(t, prometheus), sortedSeries(t, census))
		})
	}
	require.NoError(t, p.stop(30*time.Second))
}

// sortedSeries returns the answer body with its series sorted. Without a
// sorted select (an instant vector selector, /api/v1/series of one
// match[]), Prometheus lists series in its TSDB's internal order, the order
// they were created in, which clients cannot rely on; Census lists them
// sorted by labels.
func sortedSeries(t *testing.T, body []byte) string {
	t.Helper()
	var resp map[string]any
	require.NoError(t, json.Unmarshal(body, &resp))
	key := func(v any) string {
		if m, ok := v.(map[string]any); ok {
			if metric, ok := m["metric"]; ok {
				v = metric
			}
		}
		b, err := json.Marshal(v) // Map keys marshal sorted.
		require.NoError(t, err)
		return string(b)
	}
	sortList := func(list []any) {
		slices.SortFunc(list, func(a, b any) int { return strings.Compare(key(a), key(b)) })
	}
	switch data := resp["data"].(type) {
	case []any:
		sortList(data)
	case map[string]any:
		if result, ok := data["result"].([]any); ok {
			sortList(result)
		}
	}
	b, err := json.Marshal(resp)
	require.NoError(t, err)
	return string(b)
}

func callHandler(t *testing.T, h http.Handler, method, path string, params url.Values) (int, []byte) {
	t.Helper()
	var req *http.Request
	if method == http.MethodPost {
		req = httptest.NewRequest(method, path, strings.NewReader(params.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	} else {
		req = httptest.NewRequest(method, path+"?"+params.Encode(), nil)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.Bytes()
}
