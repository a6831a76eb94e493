package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	censuspb "github.com/census-metrics/census/proto"
)

// servedTarget exposes e2eSeries series whose samples carry explicit
// timestamps (whole seconds), and remembers every sample it served, so the
// test knows exactly what Census must answer.
type servedTarget struct {
	mtx    sync.Mutex                   // Guards served.
	served map[int64]map[string]float64 // timestamp ms -> series -> value
}

const e2eSeries = 5

func valueAt(series int, tsMs int64) float64 {
	return float64(series*100000) + float64(tsMs/1000%100000) + 0.25
}

func (s *servedTarget) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	ts := time.Now().Truncate(time.Second).UnixMilli()
	s.mtx.Lock()
	if s.served[ts] == nil {
		s.served[ts] = map[string]float64{}
	}
	var sb strings.Builder
	sb.WriteString("# TYPE e2e_value gauge\n")
	for i := range e2eSeries {
		v := valueAt(i, ts)
		s.served[ts][strconv.Itoa(i)] = v
		fmt.Fprintf(&sb, "e2e_value{series=\"%d\"} %s %d\n", i, strconv.FormatFloat(v, 'g', -1, 64), ts)
	}
	s.mtx.Unlock()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	_, _ = w.Write([]byte(sb.String()))
}

// startServedTarget serves a new servedTarget on loopback until the test
// ends.
func startServedTarget(t *testing.T) (*servedTarget, *url.URL) {
	t.Helper()
	target := &servedTarget{served: map[int64]map[string]float64{}}
	srv := httptest.NewServer(target)
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	require.NoError(t, err)
	return target, u
}

// writeScrapeConfig writes an agent configuration that scrapes target
// every second as job e2e, and returns its path.
func writeScrapeConfig(t *testing.T, target string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "scrape.yml")
	require.NoError(t, os.WriteFile(path, fmt.Appendf(nil, `
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: e2e
    static_configs:
      - targets: [%q]
`, target), 0o644))
	return path
}

// timestamps returns the served timestamps in order.
func (s *servedTarget) timestamps() []int64 {
	s.mtx.Lock()
	defer s.mtx.Unlock()
	out := make([]int64, 0, len(s.served))
	for ts := range s.served {
		out = append(out, ts)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// vectorSample is one element of an instant query's result.
type vectorSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

type matrixSeries struct {
	Metric map[string]string `json:"metric"`
	Values [][2]any          `json:"values"`
}

type queryData struct {
	ResultType string          `json:"resultType"`
	Result     json.RawMessage `json:"result"`
}

// queryInstant runs an instant query at ts and returns value by label.
func queryInstant(q *process, expr, byLabel string, ts int64) (map[string]float64, []string, error) {
	resp, err := q.api("/api/v1/query", url.Values{"query": {expr}, "time": {fmt.Sprintf("%.3f", float64(ts)/1000)}})
	if err != nil {
		return nil, nil, fmt.Errorf("query %s: %w", expr, err)
	}
	var d queryData
	if err := json.Unmarshal(resp.Data, &d); err != nil {
		return nil, nil, err
	}
	if d.ResultType != "vector" {
		return nil, nil, fmt.Errorf("query %s: result type %s, want vector", expr, d.ResultType)
	}
	var vec []vectorSample
	if err := json.Unmarshal(d.Result, &vec); err != nil {
		return nil, nil, err
	}
	out := map[string]float64{}
	for _, s := range vec {
		v, err := strconv.ParseFloat(s.Value[1].(string), 64)
		if err != nil {
			return nil, nil, err
		}
		out[s.Metric[byLabel]] = v
	}
	return out, resp.Warnings, nil
}

// instantValues is queryInstant that fails the test on an error.
func instantValues(t *testing.T, q *process, expr, byLabel string, ts int64) (map[string]float64, []string) {
	t.Helper()
	out, warnings, err := queryInstant(q, expr, byLabel, ts)
	require.NoError(t, err)
	return out, warnings
}

// checkServedAnswers asserts that instant queries at every served
// timestamp in [from, to] and one range query over it answer exactly what
// the target served.
func checkServedAnswers(t *testing.T, q *process, target *servedTarget, from, to int64) {
	t.Helper()
	var tss []int64
	for _, ts := range target.timestamps() {
		if ts >= from && ts <= to {
			tss = append(tss, ts)
		}
	}
	require.NotEmpty(t, tss, "no samples served in the window")
	for _, ts := range tss {
		got, _ := instantValues(t, q, "e2e_value", "series", ts)
		want := map[string]float64{}
		for i := range e2eSeries {
			want[strconv.Itoa(i)] = valueAt(i, ts)
		}
		require.Equal(t, want, got, "instant query at %d", ts)
	}

	// A range query with a 1s step over the served timestamps: each step
	// answers the newest sample at or before it.
	start, end := tss[0], tss[len(tss)-1]
	resp, err := q.api("/api/v1/query_range", url.Values{
		"query": {"e2e_value"},
		"start": {fmt.Sprintf("%.3f", float64(start)/1000)},
		"end":   {fmt.Sprintf("%.3f", float64(end)/1000)},
		"step":  {"1"},
	})
	require.NoError(t, err)
	var d queryData
	require.NoError(t, json.Unmarshal(resp.Data, &d))
	require.Equal(t, "matrix", d.ResultType)
	var mat []matrixSeries
	require.NoError(t, json.Unmarshal(d.Result, &mat))
	require.Len(t, mat, e2eSeries)
	for _, s := range mat {
		series, err := strconv.Atoi(s.Metric["series"])
		require.NoError(t, err)
		require.Equal(t, "e2e_value", s.Metric["__name__"])
		require.Len(t, s.Values, int((end-start)/1000)+1)
		for _, pt := range s.Values {
			stepMs := int64(pt[0].(float64) * 1000)
			newest := int64(0)
			for _, ts := range tss {
				if ts <= stepMs {
					newest = ts
				}
			}
			require.Equal(t, strconv.FormatFloat(valueAt(series, newest), 'g', -1, 64), pt[1], "series %d at step %d", series, stepMs)
		}
	}
}

// TestCluster_ScrapeToQuery runs 3 ingesters (RF 3), an agent and a
// querier as separate processes, checks that queries answer exactly what a
// target served, kills one ingester and checks that answers stay complete.
func TestCluster_ScrapeToQuery(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	target, targetURL := startServedTarget(t)

	role := func(id string, join *process) roleConfig {
		return roleConfig{id: id, join: join, rf: 3, heartbeatTimeout: 5 * time.Second}
	}
	ingesters := make([]*process, 3)
	for i := range ingesters {
		var join *process
		if i > 0 {
			join = ingesters[0]
		}
		ingesters[i] = startRole(t, "ingester", role(fmt.Sprintf("ingester-%d", i), join))
	}

	agentCfg := role("agent", ingesters[1])
	agentCfg.scrapeConfig = writeScrapeConfig(t, targetURL.Host)
	ag := startRole(t, "agent", agentCfg)
	q := startRole(t, "querier", role("querier", ingesters[2]))
	for _, p := range append(ingesters, ag, q) {
		p.waitReady(30 * time.Second)
	}

	// The agent scrapes the target and the querier answers with what it
	// served.
	require.Eventually(t, func() bool { return len(target.timestamps()) >= 4 }, 30*time.Second, 100*time.Millisecond)
	// Let the newest scrapes be pushed before asking for them.
	time.Sleep(1500 * time.Millisecond)
	first := target.timestamps()[0]
	checkServedAnswers(t, q, target, first, time.Now().Add(-time.Second).UnixMilli())
	up, _ := instantValues(t, q, `up{job="e2e"}`, "instance", time.Now().UnixMilli())
	require.Equal(t, map[string]float64{targetURL.Host: 1}, up)

	// Every ingester holds every series (RF 3 of 3).
	clients := censuspb.NewClientPool()
	t.Cleanup(func() { _ = clients.Close() })
	for _, ing := range ingesters {
		c, err := clients.Get(ing.grpc)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := c.Series(ctx, &censuspb.SeriesRequest{
			StartMs:  first,
			EndMs:    time.Now().UnixMilli(),
			Matchers: []*censuspb.LabelMatcher{{Type: censuspb.LabelMatcher_EQ, Name: "__name__", Value: "e2e_value"}},
		})
		cancel()
		require.NoError(t, err)
		require.Len(t, resp.Series, e2eSeries, "series on %s", ing.name)
	}

	// Bad input straight to an ingester: InvalidArgument naming the
	// series, and nothing of it stored.
	c, err := clients.Get(ingesters[0].grpc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = c.Push(ctx, &censuspb.PushRequest{Series: []*censuspb.TimeSeries{{
		Labels:  []*censuspb.LabelPair{{Name: []byte("__name__"), Value: []byte("bad_series")}, {Name: []byte(""), Value: []byte("x")}},
		Samples: []*censuspb.Sample{{TimestampMs: time.Now().UnixMilli(), Value: 1}},
	}}})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), `"__name__"="bad_series"`)
	bad, err := c.Series(ctx, &censuspb.SeriesRequest{
		StartMs: 0, EndMs: time.Now().Add(time.Minute).UnixMilli(),
		Matchers: []*censuspb.LabelMatcher{{Type: censuspb.LabelMatcher_EQ, Name: "__name__", Value: "bad_series"}},
	})
	require.NoError(t, err)
	require.Empty(t, bad.Series)

	// Kill one ingester: nothing acknowledged is lost and answers stay
	// complete, before and after the ring notices.
	killedAt := time.Now().UnixMilli()
	ingesters[1].kill()
	checkServedAnswers(t, q, target, first, killedAt-1000)
	require.Eventually(t, func() bool {
		tss := target.timestamps()
		return tss[len(tss)-1] > killedAt+3000
	}, 30*time.Second, 100*time.Millisecond)
	time.Sleep(1500 * time.Millisecond)
	checkServedAnswers(t, q, target, first, time.Now().Add(-2*time.Second).UnixMilli())

	// Bad input: a malformed expression is Prometheus' bad_data error.
	resp, err := q.api("/api/v1/query", url.Values{"query": {"sum(rate(x[5m]"}})
	require.Equal(t, http.StatusBadRequest, httpCode(err), "%v", err)
	require.Equal(t, "error", resp.Status)
	require.Equal(t, "bad_data", resp.ErrorType)
	require.Contains(t, resp.Error, "parse error")

	// Stop everything gracefully; no process is left behind.
	for _, p := range []*process{ag, q, ingesters[0], ingesters[2]} {
		require.NoError(t, p.stop(30*time.Second))
	}
}
