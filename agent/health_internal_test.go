package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/util/teststorage"
	"github.com/stretchr/testify/require"
)

// logRecorder keeps the records a logger writes, as JSON objects.
type logRecorder struct {
	mtx sync.Mutex
	buf bytes.Buffer
}

func (r *logRecorder) Write(p []byte) (int, error) {
	r.mtx.Lock()
	defer r.mtx.Unlock()
	return r.buf.Write(p)
}

func (r *logRecorder) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(r, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// records returns the records with message msg.
func (r *logRecorder) records(msg string) []map[string]any {
	r.mtx.Lock()
	defer r.mtx.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(r.buf.String()), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// TestAgent_LogsTargetHealthChanges: a target going down is logged once at
// WARN with the scrape error however many scrapes fail, and its return
// once at INFO.
func TestAgent_LogsTargetHealthChanges(t *testing.T) {
	var failing atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if failing.Load() {
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, "flappy_value 1\n")
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	cfg, err := ParseScrapeConfig(fmt.Sprintf(`
global:
  scrape_interval: 50ms
  scrape_timeout: 50ms
scrape_configs:
  - job_name: flappy
    static_configs:
      - targets: [%q]
`, host), nil)
	require.NoError(t, err)
	var logs logRecorder
	a, err := New(Config{WALPath: t.TempDir(), WALRetention: 2 * time.Hour, ScrapeInterval: time.Minute}, cfg, teststorage.New(t), logs.logger(), prometheus.NewPedanticRegistry())
	require.NoError(t, err)
	a.healthEvery = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})

	scrapedOK := func() bool {
		for _, ts := range a.scrape.TargetsActive()["flappy"] {
			if ts.LastScrape().After(time.Time{}) && ts.LastError() == nil {
				return true
			}
		}
		return false
	}
	require.Eventually(t, scrapedOK, 15*time.Second, 10*time.Millisecond, "the target is scraped")
	failing.Store(true)
	require.Eventually(t, func() bool { return len(logs.records("Target is down")) > 0 }, 15*time.Second, 10*time.Millisecond)
	// Several more failed scrapes and health checks log nothing more.
	time.Sleep(300 * time.Millisecond)
	down := logs.records("Target is down")
	require.Len(t, down, 1, "one WARN for the change of health, not one per scrape")
	require.Equal(t, "WARN", down[0]["level"])
	require.Equal(t, "flappy", down[0]["job"])
	require.Equal(t, srv.URL+"/metrics", down[0]["target"])
	require.Contains(t, down[0]["err"], "500")
	require.Empty(t, logs.records("Target is up again"))

	failing.Store(false)
	require.Eventually(t, func() bool { return len(logs.records("Target is up again")) > 0 }, 15*time.Second, 10*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	up := logs.records("Target is up again")
	require.Len(t, up, 1)
	require.Equal(t, "INFO", up[0]["level"])
	require.Len(t, logs.records("Target is down"), 1)
}

func TestParseScrapeConfig_WarnsOfIgnoredSections(t *testing.T) {
	var logs logRecorder
	_, err := ParseScrapeConfig(`
global:
  scrape_interval: 15s
rule_files: [rules.yml]
alerting:
  alertmanagers: []
remote_write:
  - url: http://example.com/api/v1/write
scrape_configs:
  - job_name: a
    static_configs:
      - targets: [localhost:1]
`, logs.logger())
	require.NoError(t, err)
	var sections []string
	for _, rec := range logs.records("Census ignores this section of the scrape configuration; it reads only global, scrape_configs and scrape_config_files") {
		require.Equal(t, "WARN", rec["level"])
		sections = append(sections, rec["section"].(string))
	}
	require.Equal(t, []string{"rule_files", "alerting", "remote_write"}, sections)
}
