package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/agent"
	"github.com/census-metrics/census/distributor"
)

// countingTarget serves one counter whose every scrape carries its own
// timestamp and the next value, and remembers what it served.
type countingTarget struct {
	mtx    sync.Mutex // Guards served.
	served []int64    // Timestamps served, in order; the value of the i-th is i+1.
}

func (c *countingTarget) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	c.mtx.Lock()
	ts := time.Now().UnixMilli()
	if n := len(c.served); n > 0 && ts <= c.served[n-1] {
		ts = c.served[n-1] + 1
	}
	c.served = append(c.served, ts)
	v := len(c.served)
	c.mtx.Unlock()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	fmt.Fprintf(w, "# TYPE scraped_total counter\nscraped_total %d %d\n", v, ts)
}

func (c *countingTarget) timestamps() []int64 {
	c.mtx.Lock()
	defer c.mtx.Unlock()
	return append([]int64(nil), c.served...)
}

func (c *countingTarget) start(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	require.NoError(t, err)
	return u.Host
}

type committedSample struct {
	t int64
	v float64
}

// flakyStorage stands for the distributor: it keeps what is committed,
// or, while down, fails every commit as the distributor does when no
// ingester answers.
type flakyStorage struct {
	mtx       sync.Mutex // Guards the fields below.
	down      bool
	committed map[string][]committedSample // series -> samples in commit order
	metadata  map[string]metadata.Metadata // series -> metadata committed last
}

func newFlakyStorage() *flakyStorage {
	return &flakyStorage{committed: map[string][]committedSample{}, metadata: map[string]metadata.Metadata{}}
}

func (f *flakyStorage) metadataOf(series string) metadata.Metadata {
	f.mtx.Lock()
	defer f.mtx.Unlock()
	return f.metadata[series]
}

func (f *flakyStorage) setDown(down bool) {
	f.mtx.Lock()
	defer f.mtx.Unlock()
	f.down = down
}

func (f *flakyStorage) samples(series string) []committedSample {
	f.mtx.Lock()
	defer f.mtx.Unlock()
	return append([]committedSample(nil), f.committed[series]...)
}

func (f *flakyStorage) AppenderV2(context.Context) storage.AppenderV2 {
	return &flakyAppender{f: f}
}

type flakyAppender struct {
	f       *flakyStorage
	pending []struct {
		series string
		s      committedSample
		meta   metadata.Metadata
	}
}

func (a *flakyAppender) Append(_ storage.SeriesRef, ls labels.Labels, _, t int64, v float64, _ *histogram.Histogram, _ *histogram.FloatHistogram, opts storage.AOptions) (storage.SeriesRef, error) {
	a.pending = append(a.pending, struct {
		series string
		s      committedSample
		meta   metadata.Metadata
	}{ls.String(), committedSample{t, v}, opts.Metadata})
	return 1, nil
}

func (a *flakyAppender) Commit() error {
	a.f.mtx.Lock()
	defer a.f.mtx.Unlock()
	if a.f.down {
		return fmt.Errorf("%w: every ingester is down", distributor.ErrNoQuorum)
	}
	for _, p := range a.pending {
		a.f.committed[p.series] = append(a.f.committed[p.series], p.s)
		if !p.meta.IsEmpty() {
			a.f.metadata[p.series] = p.meta
		}
	}
	return nil
}

func (a *flakyAppender) Rollback() error { return nil }

// startAgent runs an agent scraping host every 100ms into walDir and
// sending into app; the returned function stops it.
func startAgent(t *testing.T, host, walDir string, app storage.AppendableV2, reg *prometheus.Registry) (stop func()) {
	t.Helper()
	cfg, err := agent.ParseScrapeConfig(fmt.Sprintf(`
global:
  scrape_interval: 100ms
  scrape_timeout: 100ms
scrape_configs:
  - job_name: counting
    static_configs:
      - targets: [%q]
`, host), nil)
	require.NoError(t, err)
	a, err := agent.New(agent.Config{WALPath: walDir, WALRetention: 2 * time.Hour, ScrapeInterval: time.Minute}, cfg, app, nil, reg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Error("agent did not stop within 20s")
		}
	}
	t.Cleanup(stop)
	require.Eventually(t, func() bool { return a.Ready() == nil }, 5*time.Second, 10*time.Millisecond)
	return stop
}

// requireExactly checks that got is what the target served, in order,
// from its first scrape on, with no gap and no duplicate.
func requireExactly(t *testing.T, served []int64, got []committedSample) {
	t.Helper()
	require.LessOrEqual(t, len(got), len(served), "served %v, got %v", served, got)
	for i, s := range got {
		require.Equal(t, committedSample{t: served[i], v: float64(i + 1)}, s, "sample %d of %d", i, len(got))
	}
}

const countingSeries = `{__name__="scraped_total", instance="%s", job="counting"}`

func TestAgent_LosesNothingWhileIngestersAreDown(t *testing.T) {
	target := &countingTarget{}
	host := target.start(t)
	series := fmt.Sprintf(countingSeries, host)
	store := newFlakyStorage()
	reg := prometheus.NewPedanticRegistry()
	startAgent(t, host, t.TempDir(), store, reg)

	require.Eventually(t, func() bool { return len(store.samples(series)) >= 3 }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, metadata.Metadata{Type: model.MetricTypeCounter}, store.metadataOf(series), "metadata travels with the samples")
	store.setDown(true)
	downAt := len(target.timestamps())
	require.Eventually(t, func() bool { return len(target.timestamps()) >= downAt+20 }, 10*time.Second, 10*time.Millisecond, "scrapes go on while the ingesters are down")
	// While down: the queue holds samples and the oldest one ages.
	require.Eventually(t, func() bool {
		return gauge(t, reg, "census_agent_queue_samples") > 0 && gauge(t, reg, "census_agent_oldest_unsent_sample_age_seconds") > 0.5
	}, 10*time.Second, 10*time.Millisecond)
	require.Positive(t, gauge(t, reg, "census_agent_wal_bytes"))
	require.Positive(t, gauge(t, reg, "census_agent_samples_failed_total"))

	store.setDown(false)
	upAt := target.timestamps()
	require.Eventually(t, func() bool { return len(store.samples(series)) >= len(upAt) }, 20*time.Second, 10*time.Millisecond, "the backlog is sent once the ingesters are back")
	got := store.samples(series) // Before what was served, which only grows.
	requireExactly(t, target.timestamps(), got)
	require.Positive(t, gauge(t, reg, "census_agent_samples_retried_total"))
	require.Eventually(t, func() bool { return gauge(t, reg, "census_agent_oldest_unsent_sample_age_seconds") < 0.5 }, 10*time.Second, 10*time.Millisecond)
}

func TestAgent_RestartResumesWhereItStopped(t *testing.T) {
	target := &countingTarget{}
	host := target.start(t)
	series := fmt.Sprintf(countingSeries, host)
	walDir := t.TempDir()
	store := newFlakyStorage()

	stop := startAgent(t, host, walDir, store, prometheus.NewPedanticRegistry())
	require.Eventually(t, func() bool { return len(store.samples(series)) >= 5 }, 10*time.Second, 10*time.Millisecond)
	store.setDown(true)
	downAt := len(target.timestamps())
	require.Eventually(t, func() bool { return len(target.timestamps()) >= downAt+10 }, 10*time.Second, 10*time.Millisecond)
	// Stopping gives up on the unsent samples after a while; the WAL
	// keeps them.
	stop()
	sentBefore := len(store.samples(series))
	servedBefore := len(target.timestamps())
	require.Less(t, sentBefore, servedBefore)

	store.setDown(false)
	startAgent(t, host, walDir, store, prometheus.NewPedanticRegistry())
	require.Eventually(t, func() bool { return len(store.samples(series)) >= servedBefore+5 }, 20*time.Second, 10*time.Millisecond)
	got := store.samples(series) // Before what was served, which only grows.
	requireExactly(t, target.timestamps(), got)
}

// gauge returns the value of the metric name without labels in reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		if m.GetGauge() != nil {
			return m.GetGauge().GetValue()
		}
		return m.GetCounter().GetValue()
	}
	t.Fatalf("no metric %s", name)
	return 0
}
