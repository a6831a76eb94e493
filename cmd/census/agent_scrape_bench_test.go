package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAgent_SteadyScrape runs an ingester and an agent as processes,
// the agent scraping 100 targets of 1,000 series each every second, and
// reports the CPU time the agent process spends per million samples, end
// to end: scrape, parse, WAL, read back, shard and push to the ingester.
// The ingester's CPU time is reported beside it.
func BenchmarkAgent_SteadyScrape(b *testing.B) {
	const (
		numTargets       = 100
		seriesPerTarget  = 1000
		samplesPerWindow = 1_000_000
	)
	var scrapes atomic.Int64
	var hosts []string
	for i := range numTargets {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			n := scrapes.Add(1)
			var sb strings.Builder
			sb.Grow(seriesPerTarget * 80)
			sb.WriteString("# TYPE bench_requests_total counter\n")
			for s := range seriesPerTarget {
				fmt.Fprintf(&sb, "bench_requests_total{target=\"%d\",series=\"%d\",code=\"200\"} %d\n", i, s, n+int64(s))
			}
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			_, _ = w.Write([]byte(sb.String()))
		}))
		b.Cleanup(srv.Close)
		u, err := url.Parse(srv.URL)
		if err != nil {
			b.Fatal(err)
		}
		hosts = append(hosts, fmt.Sprintf("%q", u.Host))
	}
	dir := b.TempDir()
	cfgFile := filepath.Join(dir, "scrape.yml")
	if err := os.WriteFile(cfgFile, fmt.Appendf(nil, `
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: bench
    static_configs:
      - targets: [%s]
`, strings.Join(hosts, ", ")), 0o644); err != nil {
		b.Fatal(err)
	}
	ing := startRole(b, "ingester", roleConfig{id: "ingester", rf: 1, storage: filepath.Join(dir, "data")})
	ag := startRole(b, "agent", roleConfig{id: "agent", join: ing, rf: 1, scrapeConfig: cfgFile})
	ing.waitReady(30 * time.Second)
	ag.waitReady(30 * time.Second)

	read := func(p *process, name string) float64 {
		v, err := p.metric(name)
		if err != nil {
			b.Fatal(err)
		}
		return v
	}
	waitSent := func(atLeast float64) {
		deadline := time.Now().Add(2 * time.Minute)
		for read(ag, "census_agent_samples_sent_total") < atLeast {
			if time.Now().After(deadline) {
				b.Fatalf("the agent sent fewer than %.0f samples in 2 minutes", atLeast)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// Warm up: every target scraped and sent a few times.
	waitSent(3 * numTargets * seriesPerTarget)

	var agentCPU, ingesterCPU, samples float64
	for b.Loop() {
		sent0, cpu0, icpu0 := read(ag, "census_agent_samples_sent_total"), read(ag, "process_cpu_seconds_total"), read(ing, "process_cpu_seconds_total")
		waitSent(sent0 + samplesPerWindow)
		sent1, cpu1, icpu1 := read(ag, "census_agent_samples_sent_total"), read(ag, "process_cpu_seconds_total"), read(ing, "process_cpu_seconds_total")
		samples += sent1 - sent0
		agentCPU += cpu1 - cpu0
		ingesterCPU += icpu1 - icpu0
	}
	b.ReportMetric(agentCPU/samples*1e6, "agent-cpu-s/1M-samples")
	b.ReportMetric(ingesterCPU/samples*1e6, "ingester-cpu-s/1M-samples")
	b.ReportMetric(samples/b.Elapsed().Seconds(), "samples/s")
}
