package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/stretchr/testify/require"

	censuspb "github.com/census-metrics/census/proto"
)

// durabilitySeries is how many series the continuous pushers write.
const durabilitySeries = 4

// durabilityValue is the value of series k at timestamp ts: every sample is
// checkable on its own.
func durabilityValue(k int, ts int64) float64 {
	return float64(k)*1e9 + float64(ts%1e9)
}

// ackedPushes records, per ingester, the timestamps of the pushes it
// acknowledged, and every timestamp pushed to it.
type ackedPushes struct {
	mtx       sync.Mutex // Guards the maps.
	acked     map[int]map[int64]bool
	attempted map[int]map[int64]bool
}

func (a *ackedPushes) record(ingester int, ts int64, ok bool) {
	a.mtx.Lock()
	defer a.mtx.Unlock()
	if a.acked[ingester] == nil {
		a.acked[ingester], a.attempted[ingester] = map[int64]bool{}, map[int64]bool{}
	}
	a.attempted[ingester][ts] = true
	if ok {
		a.acked[ingester][ts] = true
	}
}

// of returns the acknowledged and attempted timestamps of ingester.
func (a *ackedPushes) of(ingester int) (acked, attempted map[int64]bool) {
	a.mtx.Lock()
	defer a.mtx.Unlock()
	acked, attempted = map[int64]bool{}, map[int64]bool{}
	for ts := range a.acked[ingester] {
		acked[ts] = true
	}
	for ts := range a.attempted[ingester] {
		attempted[ts] = true
	}
	return acked, attempted
}

// anyAcked returns the timestamps any ingester acknowledged.
func (a *ackedPushes) anyAcked() map[int64]bool {
	a.mtx.Lock()
	defer a.mtx.Unlock()
	out := map[int64]bool{}
	for _, m := range a.acked {
		for ts := range m {
			out[ts] = true
		}
	}
	return out
}

// continuousPusher pushes every series at a new timestamp every few
// milliseconds to each ingester directly over gRPC (replication factor 3 of
// 3: every ingester gets everything), as a distributor would, and records
// which pushes each ingester acknowledged.
type continuousPusher struct {
	addrs   []atomic.Pointer[string] // gRPC address per ingester; swapped on restart.
	clients *censuspb.ClientPool
	log     *ackedPushes
	next    atomic.Int64 // Next timestamp.
	stopc   chan struct{}
	done    sync.WaitGroup
}

func startContinuousPusher(t *testing.T, ingesters []*process, start int64) *continuousPusher {
	t.Helper()
	p := &continuousPusher{
		addrs:   make([]atomic.Pointer[string], len(ingesters)),
		clients: censuspb.NewClientPool(),
		log:     &ackedPushes{acked: map[int]map[int64]bool{}, attempted: map[int]map[int64]bool{}},
		stopc:   make(chan struct{}),
	}
	t.Cleanup(func() { _ = p.clients.Close() })
	for i, ing := range ingesters {
		addr := ing.grpc
		p.addrs[i].Store(&addr)
	}
	p.next.Store(start)
	p.done.Go(func() {
		ticker := time.NewTicker(5 * time.Millisecond)
		defer ticker.Stop()
		for {
			select {
			case <-p.stopc:
				return
			case <-ticker.C:
			}
			ts := p.next.Add(100) - 100
			req := &censuspb.PushRequest{}
			for k := range durabilitySeries {
				req.Series = append(req.Series, &censuspb.TimeSeries{
					Labels:  []*censuspb.LabelPair{{Name: []byte("__name__"), Value: []byte("durability")}, {Name: []byte("series"), Value: []byte(strconv.Itoa(k))}},
					Samples: []*censuspb.Sample{{TimestampMs: ts, Value: durabilityValue(k, ts)}},
				})
			}
			var wg sync.WaitGroup
			for i := range p.addrs {
				wg.Go(func() {
					c, err := p.clients.Get(*p.addrs[i].Load())
					if err == nil {
						ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
						_, err = c.Push(ctx, req)
						cancel()
					}
					p.log.record(i, ts, err == nil)
				})
			}
			wg.Wait()
		}
	})
	return p
}

func (p *continuousPusher) stop() {
	close(p.stopc)
	p.done.Wait()
}

// ingesterSamples reads every sample of the series named name from the
// ingester at addr with QueryStream: series label value -> timestamp ->
// value.
func ingesterSamples(t *testing.T, clients *censuspb.ClientPool, addr, name, byLabel string) map[string]map[int64]float64 {
	t.Helper()
	c, err := clients.Get(addr)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := c.QueryStream(ctx, &censuspb.QueryStreamRequest{
		StartMs: 0, EndMs: math.MaxInt64,
		Matchers: []*censuspb.LabelMatcher{{Type: censuspb.LabelMatcher_EQ, Name: "__name__", Value: name}},
	})
	require.NoError(t, err)
	out := map[string]map[int64]float64{}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		require.NoError(t, err)
		for _, s := range resp.GetSeries() {
			key := ""
			for _, l := range s.GetLabels() {
				if string(l.GetName()) == byLabel {
					key = string(l.GetValue())
				}
			}
			if out[key] == nil {
				out[key] = map[int64]float64{}
			}
			for _, chk := range s.GetChunks() {
				dec, err := chunkenc.FromData(chunkenc.Encoding(chk.GetEncoding()), chk.GetData())
				require.NoError(t, err)
				it := dec.Iterator(nil)
				for it.Next() == chunkenc.ValFloat {
					ts, v := it.At()
					out[key][ts] = v
				}
				require.NoError(t, it.Err())
			}
		}
	}
}

// requireDurable checks that got, samples by series then timestamp, holds
// every acknowledged timestamp of every series with its value, and nothing
// that was never pushed.
func requireDurable(t *testing.T, got map[string]map[int64]float64, acked, attempted map[int64]bool, where string) {
	t.Helper()
	require.NotEmpty(t, acked, "no push was acknowledged by %s", where)
	for k := range durabilitySeries {
		samples := got[strconv.Itoa(k)]
		var missing []int64
		for ts := range acked {
			v, ok := samples[ts]
			if !ok {
				missing = append(missing, ts)
				continue
			}
			require.Equal(t, durabilityValue(k, ts), v, "%s: series %d at %d", where, k, ts)
		}
		require.Empty(t, missing, "%s: series %d lost %d of %d acknowledged samples", where, k, len(missing), len(acked))
		for ts := range samples {
			require.True(t, attempted[ts], "%s: series %d has a sample at %d that was never pushed", where, k, ts)
		}
	}
}

// querierSamples reads every sample of the series named name through the
// querier's HTTP API with a range selector covering [from, to].
func querierSamples(t *testing.T, q *process, name string, from, to int64) map[string]map[int64]float64 {
	t.Helper()
	window := (to-from)/1000 + 2
	resp, err := q.api("/api/v1/query", url.Values{
		"query": {fmt.Sprintf("%s[%ds]", name, window)},
		"time":  {fmt.Sprintf("%.3f", float64(to+500)/1000)},
	})
	require.NoError(t, err)
	var d queryData
	require.NoError(t, json.Unmarshal(resp.Data, &d))
	require.Equal(t, "matrix", d.ResultType)
	var mat []matrixSeries
	require.NoError(t, json.Unmarshal(d.Result, &mat))
	out := map[string]map[int64]float64{}
	for _, s := range mat {
		key := s.Metric["series"]
		out[key] = map[int64]float64{}
		for _, pt := range s.Values {
			ts := int64(math.Round(pt[0].(float64) * 1000))
			v, err := strconv.ParseFloat(pt[1].(string), 64)
			require.NoError(t, err)
			out[key][ts] = v
		}
	}
	return out
}

// TestCluster_IngesterKilledMidWrite pushes continuously into 3 ingesters
// (replication factor 3), kills one with SIGKILL mid-stream and restarts it
// on the same data: every push it acknowledged is back, on it and through a
// querier. Then it gives that ingester a WAL big enough for the replay to
// take a while, kills it, kills it again while /ready says it is replaying,
// and restarts it: still nothing acknowledged is lost.
func TestCluster_IngesterKilledMidWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	ingesters, startIngester := restartableIngesters(t, 3, 5*time.Second)
	for i := range ingesters {
		ingesters[i] = startIngester(i)
	}
	q := startRole(t, "querier", roleConfig{id: "querier", join: ingesters[2], rf: 3, heartbeatTimeout: 5 * time.Second})
	for _, p := range append(ingesters[:], q) {
		p.waitReady(30 * time.Second)
	}

	// Push continuously; kill ingester 1 mid-stream; restart it while the
	// pushes go on.
	start := time.Now().Add(-10 * time.Minute).UnixMilli()
	pusher := startContinuousPusher(t, ingesters, start)
	waitAcked := func(i, n int) {
		t.Helper()
		require.Eventually(t, func() bool {
			acked, _ := pusher.log.of(i)
			return len(acked) >= n
		}, 30*time.Second, 10*time.Millisecond)
	}
	waitAcked(1, 200)
	ingesters[1].kill()
	killedAt := pusher.next.Load()
	require.Eventually(t, func() bool { return pusher.next.Load() > killedAt+50*100 }, 10*time.Second, 10*time.Millisecond, "pushes go on")
	ingesters[1] = startIngester(1)
	ingesters[1].waitReady(30 * time.Second)
	addr := ingesters[1].grpc
	pusher.addrs[1].Store(&addr)
	ackedBefore, _ := pusher.log.of(1)
	waitAcked(1, len(ackedBefore)+100)
	pusher.stop()
	end := pusher.next.Load()

	acked, attempted := pusher.log.of(1)
	clients := censuspb.NewClientPool()
	t.Cleanup(func() { _ = clients.Close() })
	requireDurable(t, ingesterSamples(t, clients, ingesters[1].grpc, "durability", "series"), acked, attempted, "restarted ingester-1")
	for _, i := range []int{0, 2} {
		a, at := pusher.log.of(i)
		requireDurable(t, ingesterSamples(t, clients, ingesters[i].grpc, "durability", "series"), a, at, ingesters[i].name)
	}
	allAttempted := map[int64]bool{}
	for ts := start; ts < end; ts += 100 {
		allAttempted[ts] = true
	}
	requireDurable(t, querierSamples(t, q, "durability", start, end), pusher.log.anyAcked(), allAttempted, "querier")

	// A WAL that takes a while to replay: many series and samples, pushed
	// to ingester 1 only.
	const (
		bulkSeries  = 100_000
		bulkSamples = 10
		perRequest  = 5_000
	)
	c, err := clients.Get(ingesters[1].grpc)
	require.NoError(t, err)
	bulkAcked := 0
	for from := 0; from < bulkSeries; from += perRequest {
		req := &censuspb.PushRequest{}
		for s := from; s < from+perRequest; s++ {
			ts := &censuspb.TimeSeries{Labels: []*censuspb.LabelPair{
				{Name: []byte("__name__"), Value: []byte("bulk")},
				{Name: []byte("id"), Value: []byte(fmt.Sprintf("%06d", s))},
				{Name: []byte("job"), Value: []byte("durability")},
			}}
			for n := range bulkSamples {
				ts.Samples = append(ts.Samples, &censuspb.Sample{TimestampMs: end + int64(n)*1000, Value: float64(s + n)})
			}
			req.Series = append(req.Series, ts)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := c.Push(ctx, req)
		cancel()
		require.NoError(t, err)
		bulkAcked += perRequest
	}

	// Kill it, then kill it again while it replays that WAL.
	ingesters[1].kill()
	ingesters[1] = startIngester(1)
	var replaying string
	require.Eventually(t, func() bool {
		body, err := ingesters[1].get("/ready")
		// The WAL has several segments by now (each start begins one), so
		// this is the replay itself, not the loading before it.
		if httpCode(err) == http.StatusServiceUnavailable && strings.Contains(string(body), "replaying WAL: segment") {
			replaying = string(body)
			return true
		}
		return false
	}, 30*time.Second, time.Millisecond, "/ready reports the WAL replay")
	ingesters[1].kill()
	require.NotContains(t, replaying, "segment 1 of 1")
	require.NotContains(t, ingesters[1].log.String(), "TSDB opened", "killed before the replay ended")
	t.Logf("killed during the WAL replay: /ready said %q", strings.TrimSpace(replaying))

	ingesters[1] = startIngester(1)
	ingesters[1].waitReady(60 * time.Second)
	log := ingesters[1].log.String()
	require.Contains(t, log, "WAL segment loaded", "the replay logs its progress")
	require.Contains(t, log, "TSDB opened, WAL replayed", "and its duration")

	requireDurable(t, ingesterSamples(t, clients, ingesters[1].grpc, "durability", "series"), acked, attempted, "ingester-1 restarted after a kill during replay")
	bulk := ingesterSamples(t, clients, ingesters[1].grpc, "bulk", "id")
	require.Len(t, bulk, bulkAcked)
	for id, samples := range bulk {
		s, err := strconv.Atoi(id)
		require.NoError(t, err)
		require.Len(t, samples, bulkSamples, "series %s", id)
		for n := range bulkSamples {
			require.Equal(t, float64(s+n), samples[end+int64(n)*1000], "series %s sample %d", id, n)
		}
	}
	// The querier answers from the restarted ingester too, once it sees
	// it healthy again.
	require.Eventually(t, func() bool {
		got, _, err := queryInstant(q, `count(bulk{job="durability"})`, "job", end+int64(bulkSamples)*1000)
		return err == nil && got[""] == float64(bulkAcked)
	}, 30*time.Second, 100*time.Millisecond, "count(bulk) through the querier")
	requireDurable(t, querierSamples(t, q, "durability", start, end), pusher.log.anyAcked(), allAttempted, "querier after the second restart")

	// SIGTERM stops ingester 1 cleanly, writing its head snapshot, so its
	// next start loads the snapshot instead of replaying the WAL.
	require.NoError(t, ingesters[1].stop(60*time.Second))
	require.Contains(t, ingesters[1].log.String(), "TSDB closed, head snapshot written")
	ingesters[1] = startIngester(1)
	ingesters[1].waitReady(30 * time.Second)
	require.Contains(t, ingesters[1].log.String(), "Chunk snapshot loading time")
	requireDurable(t, ingesterSamples(t, clients, ingesters[1].grpc, "durability", "series"), acked, attempted, "ingester-1 after a clean restart")
	require.Len(t, ingesterSamples(t, clients, ingesters[1].grpc, "bulk", "id"), bulkAcked)

	// A clean stop of every process.
	for _, p := range append(ingesters[:], q) {
		require.NoError(t, p.stop(60*time.Second))
	}
}
