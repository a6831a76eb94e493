package agent_test

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/util/teststorage"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/census-metrics/census/agent"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The TSDB of teststorage and the HTTP client's idle connections
		// stop shortly after the test, outside its control.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// target serves a fixed exposition, as an instrumented service would.
func target(t *testing.T, body string) *url.URL {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	require.NoError(t, err)
	return u
}

// runAgent runs an agent over cfgText into a fresh TSDB until the test ends.
func runAgent(t *testing.T, cfgText string) *teststorage.TestStorage {
	t.Helper()
	db := teststorage.New(t)
	cfg, err := agent.ParseScrapeConfig(cfgText, nil)
	require.NoError(t, err)
	a, err := agent.New(agent.Config{WALPath: t.TempDir(), WALRetention: 2 * time.Hour, ScrapeInterval: time.Minute}, cfg, db, nil, prometheus.NewPedanticRegistry())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("agent did not stop within 10s")
		}
	})
	require.Eventually(t, func() bool { return a.Ready() == nil }, 5*time.Second, 10*time.Millisecond)
	return db
}

// latest returns the newest float value of the series matching ms, or NaN.
func latest(t *testing.T, db *teststorage.TestStorage, ms ...*labels.Matcher) float64 {
	t.Helper()
	q, err := db.Querier(math.MinInt64, math.MaxInt64)
	require.NoError(t, err)
	defer q.Close()
	ss := q.Select(context.Background(), false, nil, ms...)
	v := math.NaN()
	for ss.Next() {
		it := ss.At().Iterator(nil)
		for it.Next() == chunkenc.ValFloat {
			_, v = it.At()
		}
	}
	require.NoError(t, ss.Err())
	return v
}

func TestAgent_ScrapesStaticTargets(t *testing.T) {
	u := target(t, "# TYPE demo_requests_total counter\ndemo_requests_total{code=\"200\"} 42\ndemo_requests_total{code=\"500\"} 3\n")
	db := runAgent(t, fmt.Sprintf(`
global:
  scrape_interval: 100ms
  scrape_timeout: 100ms
scrape_configs:
  - job_name: demo
    static_configs:
      - targets: [%q]
`, u.Host))

	require.Eventually(t, func() bool {
		return latest(t, db, labels.MustNewMatcher(labels.MatchEqual, "__name__", "demo_requests_total"), labels.MustNewMatcher(labels.MatchEqual, "code", "500")) == 3
	}, 15*time.Second, 50*time.Millisecond)
	require.Equal(t, 42.0, latest(t, db,
		labels.MustNewMatcher(labels.MatchEqual, "__name__", "demo_requests_total"),
		labels.MustNewMatcher(labels.MatchEqual, "code", "200"),
		labels.MustNewMatcher(labels.MatchEqual, "job", "demo"),
		labels.MustNewMatcher(labels.MatchEqual, "instance", u.Host)))
	require.Equal(t, 1.0, latest(t, db, labels.MustNewMatcher(labels.MatchEqual, "__name__", "up"), labels.MustNewMatcher(labels.MatchEqual, "job", "demo")))
}

func TestAgent_ScrapesFileDiscoveredTargets(t *testing.T) {
	u := target(t, "file_target_value 7\n")
	dir := t.TempDir()
	sdFile := filepath.Join(dir, "targets.json")
	require.NoError(t, os.WriteFile(sdFile, fmt.Appendf(nil, `[{"targets": [%q], "labels": {"team": "storage"}}]`, u.Host), 0o644))
	db := runAgent(t, fmt.Sprintf(`
global:
  scrape_interval: 100ms
  scrape_timeout: 100ms
scrape_configs:
  - job_name: files
    file_sd_configs:
      - files: [%q]
        refresh_interval: 1s
`, sdFile))

	require.Eventually(t, func() bool {
		return latest(t, db, labels.MustNewMatcher(labels.MatchEqual, "__name__", "file_target_value"), labels.MustNewMatcher(labels.MatchEqual, "team", "storage")) == 7
	}, 15*time.Second, 50*time.Millisecond)
}

func TestParseScrapeConfig_RejectsInvalid(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
	}{
		{name: "duplicate job", text: "scrape_configs:\n- job_name: a\n- job_name: a\n", want: `found multiple scrape configs with job name "a"`},
		{name: "not yaml", text: "scrape_configs: [", want: "parse scrape configuration"},
		{name: "timeout above interval", text: "scrape_configs:\n- job_name: a\n  scrape_interval: 1s\n  scrape_timeout: 2s\n", want: "scrape timeout greater than scrape interval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := agent.ParseScrapeConfig(tc.text, nil)
			require.ErrorContains(t, err, tc.want)
		})
	}
}
