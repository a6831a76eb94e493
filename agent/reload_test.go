package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/util/teststorage"
	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/agent"
)

// TestAgent_Reload re-reads the configuration file: a new job is scraped
// and the old one goes on; a file that does not load keeps both and says
// why; a removed job stops.
func TestAgent_Reload(t *testing.T) {
	a, b := target(t, "reload_a 1\n"), target(t, "reload_b 2\n")
	file := filepath.Join(t.TempDir(), "prometheus.yml")
	write := func(text string) { require.NoError(t, os.WriteFile(file, []byte(text), 0o644)) }
	job := func(name, host string) string {
		return fmt.Sprintf("  - job_name: %s\n    static_configs:\n      - targets: [%q]\n", name, host)
	}
	const global = "global:\n  scrape_interval: 100ms\n  scrape_timeout: 100ms\nscrape_configs:\n"
	write(global + job("a", a.Host))

	cfg := agent.Config{ConfigFile: file, WALPath: t.TempDir(), WALRetention: 2 * time.Hour, ScrapeInterval: time.Minute}
	scrapeCfg, err := cfg.ScrapeConfig("", nil)
	require.NoError(t, err)
	db := teststorage.New(t)
	ag, err := agent.New(cfg, scrapeCfg, db, nil, prometheus.NewPedanticRegistry())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	jobs := func() []string {
		var out []string
		for j := range ag.Targets() {
			out = append(out, j)
		}
		slices.Sort(out)
		return out
	}
	value := func(name string) float64 {
		return latest(t, db, labels.MustNewMatcher(labels.MatchEqual, "__name__", name))
	}
	require.Eventually(t, func() bool { return value("reload_a") == 1 }, 15*time.Second, 20*time.Millisecond)

	write(global + job("a", a.Host) + job("b", b.Host))
	require.NoError(t, ag.Reload(context.Background()))
	require.Eventually(t, func() bool { return value("reload_b") == 2 }, 15*time.Second, 20*time.Millisecond)
	require.Equal(t, []string{"a", "b"}, jobs())
	require.Equal(t, "b", ag.Config().ScrapeConfigs[1].JobName)

	// The old job keeps scraping through the reload: new samples arrive.
	count := func(name string) int {
		q, err := db.Querier(0, time.Now().Add(time.Hour).UnixMilli())
		require.NoError(t, err)
		defer q.Close()
		ss := q.Select(context.Background(), false, nil, labels.MustNewMatcher(labels.MatchEqual, "__name__", name))
		n := 0
		for ss.Next() {
			it := ss.At().Iterator(nil)
			for it.Next() != 0 {
				n++
			}
		}
		return n
	}
	before := count("reload_a")
	require.Eventually(t, func() bool { return count("reload_a") > before }, 15*time.Second, 20*time.Millisecond)

	write(global + "  - job_name: [broken\n")
	require.ErrorContains(t, ag.Reload(context.Background()), "load scrape configuration")
	require.Equal(t, []string{"a", "b"}, jobs(), "a configuration that does not load keeps the running one")
	require.Len(t, ag.Config().ScrapeConfigs, 2)

	write(global + job("b", b.Host))
	require.NoError(t, ag.Reload(context.Background()))
	require.Eventually(t, func() bool { return slices.Equal(jobs(), []string{"b"}) }, 15*time.Second, 20*time.Millisecond)
}

func TestConfig_ScrapeConfig(t *testing.T) {
	file := filepath.Join(t.TempDir(), "prometheus.yml")
	require.NoError(t, os.WriteFile(file, []byte("scrape_configs:\n  - job_name: from_file\n"), 0o644))
	builtIn := "scrape_configs:\n  - job_name: built_in\n"
	jobNames := func(cfg agent.Config, builtIn string) []string {
		sc, err := cfg.ScrapeConfig(builtIn, nil)
		require.NoError(t, err)
		var out []string
		for _, c := range sc.ScrapeConfigs {
			out = append(out, c.JobName)
		}
		return out
	}
	require.Equal(t, []string{"from_file"}, jobNames(agent.Config{ConfigFile: file}, builtIn), "the file wins")
	require.Equal(t, []string{"built_in"}, jobNames(agent.Config{}, builtIn))
	k8s := jobNames(agent.Config{NodeName: "node-1", ScrapeInterval: time.Minute}, "")
	require.NotEmpty(t, k8s, "without either, the Kubernetes default")
	require.Equal(t, []string{"from_file"}, jobNames(agent.Config{ConfigFile: file}, ""))

	_, err := agent.Config{ConfigFile: filepath.Join(t.TempDir(), "missing.yml")}.ScrapeConfig("", nil)
	require.ErrorContains(t, err, "load scrape configuration")
}
