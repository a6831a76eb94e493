package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/golang/snappy"
	config_util "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/prompb"
	"github.com/prometheus/prometheus/storage/remote"
	"github.com/stretchr/testify/require"

	censuspb "github.com/census-metrics/census/proto"
	"github.com/census-metrics/census/ring"
)

// handOffSeries is how many series the scale tests write: enough that some
// have every replica on the ingesters that leave.
const handOffSeries = 2000

// handOffWriter pushes every handOffSeries series through a distributor every
// 100ms, one sample each valued its timestamp, with Prometheus'
// remote-write client, and records the timestamps of the pushes that were
// acknowledged.
type handOffWriter struct {
	mtx    sync.Mutex
	acked  []int64
	failed []int64 // Pushes that failed: their samples may be stored or not.
	stopc  chan struct{}
	once   sync.Once
	done   sync.WaitGroup
}

func startHandOffWriter(t *testing.T, dist *process, start int64) *handOffWriter {
	t.Helper()
	c, err := remote.NewWriteClient("scale", &remote.ClientConfig{
		URL:     &config_util.URL{URL: &url.URL{Scheme: "http", Host: dist.http, Path: "/api/v1/push"}},
		Timeout: model.Duration(10 * time.Second),
	})
	require.NoError(t, err)
	w := &handOffWriter{stopc: make(chan struct{})}
	w.done.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for ts := start; ; ts += 1000 {
			select {
			case <-w.stopc:
				return
			case <-tick.C:
			}
			req := &prompb.WriteRequest{}
			for k := range handOffSeries {
				ls := labels.FromStrings("__name__", "scale_test", "s", strconv.Itoa(k))
				req.Timeseries = append(req.Timeseries, prompb.TimeSeries{Labels: prompb.FromLabels(ls, nil), Samples: []prompb.Sample{{Value: float64(ts), Timestamp: ts}}})
			}
			raw, err := req.Marshal()
			if err != nil {
				panic(err)
			}
			_, err = c.Store(context.Background(), snappy.Encode(nil, raw), 0)
			w.mtx.Lock()
			if err == nil {
				w.acked = append(w.acked, ts)
			} else {
				w.failed = append(w.failed, ts)
			}
			w.mtx.Unlock()
		}
	})
	t.Cleanup(w.stop)
	return w
}

func (w *handOffWriter) stop() {
	w.once.Do(func() {
		close(w.stopc)
		w.done.Wait()
	})
}

func (w *handOffWriter) ackedTimestamps() []int64 {
	w.mtx.Lock()
	defer w.mtx.Unlock()
	return append([]int64(nil), w.acked...)
}

func (w *handOffWriter) failedTimestamps() []int64 {
	w.mtx.Lock()
	defer w.mtx.Unlock()
	return append([]int64(nil), w.failed...)
}

// waitAcked waits until the writer has n acknowledged pushes.
func (w *handOffWriter) waitAcked(t *testing.T, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return len(w.ackedTimestamps()) >= n }, 60*time.Second, 20*time.Millisecond)
}

// requireComplete checks through the querier that every series holds one
// sample per acknowledged timestamp up to until, each valued its
// timestamp, and nothing else but samples of failed pushes (which may be
// stored or not): nothing acknowledged is missing and no copy is counted
// twice.
func requireComplete(t *testing.T, q *process, w *handOffWriter, until int64, where string) {
	t.Helper()
	var acked, failed []int64
	for _, ts := range w.ackedTimestamps() {
		if ts <= until {
			acked = append(acked, ts)
		}
	}
	for _, ts := range w.failedTimestamps() {
		if ts <= until {
			failed = append(failed, ts)
		}
	}
	require.NotEmpty(t, acked)
	first := min(acked[0], slices.Min(append([]int64{acked[0]}, failed...)))
	window := fmt.Sprintf("%dms", until-first+1)
	counts, _ := instantValues(t, q, "count_over_time(scale_test["+window+"])", "s", until)
	sums, _ := instantValues(t, q, "sum_over_time(scale_test["+window+"])", "s", until)
	require.Len(t, counts, handOffSeries, "series %s", where)
	var ackedSum, failedSum float64
	for _, ts := range acked {
		ackedSum += float64(ts)
	}
	for _, ts := range failed {
		failedSum += float64(ts)
	}
	for k := range handOffSeries {
		s := strconv.Itoa(k)
		if len(failed) == 0 {
			require.Equal(t, float64(len(acked)), counts[s], "samples of series %s %s", s, where)
			require.Equal(t, ackedSum, sums[s], "sum of series %s %s", s, where)
			continue
		}
		require.GreaterOrEqual(t, counts[s], float64(len(acked)), "samples of series %s %s", s, where)
		require.LessOrEqual(t, counts[s], float64(len(acked)+len(failed)), "samples of series %s %s", s, where)
		require.GreaterOrEqual(t, sums[s], ackedSum, "sum of series %s %s", s, where)
		require.LessOrEqual(t, sums[s], ackedSum+failedSum, "sum of series %s %s", s, where)
	}
}

// handOffIngester is the configuration of ingester i of the scale tests, on
// dir, joining the gossip through join.
func handOffIngester(i int, dir string, join *process, flags ...string) roleConfig {
	return roleConfig{id: fmt.Sprintf("ingester-%d", i), join: join, rf: 3, heartbeatTimeout: 5 * time.Second, storage: dir, flags: flags}
}

// startHandOffCluster runs n ingesters at replication factor 3, a distributor
// and a querier.
func startHandOffCluster(t *testing.T, n int, ingesterFlags ...string) (ingesters []*process, dirs []string, dist, q *process) {
	t.Helper()
	for i := range n {
		dirs = append(dirs, filepath.Join(t.TempDir(), "data"))
		var join *process
		if i > 0 {
			join = ingesters[0]
		}
		ingesters = append(ingesters, startRole(t, "ingester", handOffIngester(i, dirs[i], join, ingesterFlags...)))
	}
	dist = startRole(t, "distributor", roleConfig{id: "distributor", join: ingesters[0], rf: 3})
	q = startRole(t, "querier", roleConfig{id: "querier", join: ingesters[0], rf: 3})
	for _, p := range append([]*process{dist, q}, ingesters...) {
		p.waitReady(30 * time.Second)
	}
	require.Eventually(t, func() bool {
		st, err := ringStatus(dist)
		return err == nil && len(st) == n
	}, 30*time.Second, 50*time.Millisecond, "the distributor sees every ingester")
	return ingesters, dirs, dist, q
}

// waitExit waits for p to exit by itself, with code 0.
func waitExit(t *testing.T, p *process, timeout time.Duration) {
	t.Helper()
	select {
	case <-p.done:
		require.Equal(t, 0, p.cmd.ProcessState.ExitCode(), "%s exit code", p.name)
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %s", p.name, timeout)
	}
}

// TestCluster_ScaleDownHandsOff takes 5 ingesters at RF 3 down to 2, and 6
// down to 3, at once under writes: every series whose three replicas all
// leave is handed off, queries during the hand-off answer exactly what was
// written, and afterwards every acknowledged sample is there once.
func TestCluster_ScaleDownHandsOff(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	for _, tc := range []struct{ from, to int }{{5, 2}, {6, 3}} {
		t.Run(fmt.Sprintf("%d to %d", tc.from, tc.to), func(t *testing.T) { testScaleDown(t, tc.from, tc.to) })
	}
}

func testScaleDown(t *testing.T, from, to int) {
	ingesters, dirs, dist, q := startHandOffCluster(t, from)
	start := time.Now().Add(-time.Minute).Truncate(time.Second).UnixMilli()
	w := startHandOffWriter(t, dist, start)
	w.waitAcked(t, 10)
	before := w.ackedTimestamps()
	lastBefore := before[len(before)-1]
	requireComplete(t, q, w, lastBefore, "before the scale-down")

	// The highest leave at once: the ring loses every replica of some of
	// the series.
	leavers := ingesters[to:]
	var wg sync.WaitGroup
	for _, p := range leavers {
		wg.Go(func() {
			_, err := p.call("POST", "/ingester/decommission", nil)
			if err != nil {
				t.Errorf("POST /ingester/decommission to %s: %v", p.name, err)
			}
		})
	}
	wg.Wait()
	// Queries during the hand-off see every sample once.
	for running := true; running; {
		requireComplete(t, q, w, lastBefore, "during the hand-off")
		running = false
		for _, p := range leavers {
			select {
			case <-p.done:
			default:
				running = true
			}
		}
	}
	for _, p := range leavers {
		waitExit(t, p, 60*time.Second)
		entries, err := os.ReadDir(dirs[slices.Index(ingesters, p)])
		require.NoError(t, err)
		require.Empty(t, entries, "%s emptied its volume", p.name)
	}
	require.Eventually(t, func() bool {
		st, err := ringStatus(dist)
		if err != nil {
			return false
		}
		active := 0
		for _, inst := range st {
			if inst.State == ring.ACTIVE {
				active++
			}
		}
		return active == to
	}, 30*time.Second, 50*time.Millisecond, "%d ingesters left ACTIVE", to)

	n := len(w.ackedTimestamps())
	w.waitAcked(t, n+10)
	w.stop()
	acked := w.ackedTimestamps()
	requireComplete(t, q, w, acked[len(acked)-1], "after the scale-down")
	for _, p := range leavers {
		// The leavers' logs name what they sent.
		require.Contains(t, p.log.String(), "Decommission handed every series off")
	}
	for _, p := range ingesters[:to] {
		require.NoError(t, p.stop(30*time.Second))
	}
}

// TestCluster_DecommissionResumes kills a leaver half-way through its
// hand-off, while the target it is sending to is hung, then kills that
// target too and restarts both on their volumes: the leaver resumes from
// its journal, sends only what was not acknowledged, and nothing
// acknowledged is lost.
func TestCluster_DecommissionResumes(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	ingesters, dirs, dist, q := startHandOffCluster(t, 4)
	start := time.Now().Add(-time.Minute).Truncate(time.Second).UnixMilli()
	w := startHandOffWriter(t, dist, start)
	w.waitAcked(t, 10)
	w.stop()
	acked := w.ackedTimestamps()
	requireComplete(t, q, w, acked[len(acked)-1], "before the decommission")

	// With RF 3 of the 3 that stay, ingester-0, -1 and -2 each take every
	// series, in that order. ingester-2 hangs.
	leaver, target := ingesters[3], ingesters[2]
	require.NoError(t, target.cmd.Process.Signal(syscall.SIGSTOP))
	_, err := leaver.call("POST", "/ingester/decommission", nil)
	require.NoError(t, err)
	journal := filepath.Join(dirs[3], "decommission", "journal")
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(journal)
		return strings.Count(string(b), "\n") == 2
	}, 60*time.Second, 20*time.Millisecond, "ingester-0 and -1 acknowledge their parts")
	leaver.kill()
	target.kill()

	ingesters[2] = startRole(t, "ingester", handOffIngester(2, dirs[2], ingesters[0]))
	ingesters[2].waitReady(30 * time.Second)
	leaver = startRole(t, "ingester", handOffIngester(3, dirs[3], ingesters[0]))
	waitExit(t, leaver, 60*time.Second)
	require.Contains(t, leaver.log.String(), "resuming it")
	// ingester-0 took its part before the kill and is not sent it again.
	require.Equal(t, 1, strings.Count(ingesters[0].log.String(), "Took a handed-off block"))
	require.Equal(t, 1, strings.Count(ingesters[2].log.String(), "Took a handed-off block"))
	entries, err := os.ReadDir(dirs[3])
	require.NoError(t, err)
	require.Empty(t, entries, "the leaver emptied its volume")

	requireComplete(t, q, w, acked[len(acked)-1], "after the resumed decommission")
	// Each of the three that stay holds every series itself.
	clients := censuspb.NewClientPool()
	defer clients.Close()
	for _, p := range ingesters[:3] {
		got := ingesterSamples(t, clients, p.grpc, "scale_test", "s")
		require.Len(t, got, handOffSeries, "series on %s", p.name)
		for k := range handOffSeries {
			for _, ts := range acked {
				require.Equal(t, float64(ts), got[strconv.Itoa(k)][ts], "series %d at %d on %s", k, ts, p.name)
			}
		}
	}
}

// TestCluster_RollingRestartUnderLoad restarts every ingester in turn while
// writes go on: a restart keeps the data on the volume and hands nothing
// off, and nothing acknowledged is lost or counted twice.
func TestCluster_RollingRestartUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	ingesters, dirs, dist, q := startHandOffCluster(t, 3)
	start := time.Now().Add(-time.Minute).Truncate(time.Second).UnixMilli()
	w := startHandOffWriter(t, dist, start)
	w.waitAcked(t, 5)
	for i := range ingesters {
		require.NoError(t, ingesters[i].stop(60*time.Second))
		require.NotContains(t, ingesters[i].log.String(), "Decommissioning", "a restart hands nothing off")
		ingesters[i] = startRole(t, "ingester", handOffIngester(i, dirs[i], ingesters[(i+1)%3]))
		ingesters[i].waitReady(30 * time.Second)
		n := len(w.ackedTimestamps())
		w.waitAcked(t, n+5)
	}
	w.stop()
	acked := w.ackedTimestamps()
	require.Greater(t, len(acked), 15)
	requireComplete(t, q, w, acked[len(acked)-1], "after the rolling restart")
}
