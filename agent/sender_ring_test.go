package agent_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/census-metrics/census/distributor"
	censuspb "github.com/census-metrics/census/proto"
	"github.com/census-metrics/census/ring"
)

// fakeIngester keeps the float samples pushed to it, or fails while down.
type fakeIngester struct {
	censuspb.UnimplementedIngesterServer
	mtx    sync.Mutex // Guards the fields below.
	down   bool
	pushed map[string][]committedSample
}

func (f *fakeIngester) Push(_ context.Context, req *censuspb.PushRequest) (*censuspb.PushResponse, error) {
	f.mtx.Lock()
	defer f.mtx.Unlock()
	if f.down {
		return nil, status.Error(codes.Unavailable, "ingester is down")
	}
	for _, ts := range req.Series {
		key := censuspb.FormatLabelPairs(ts.Labels)
		for _, s := range ts.Samples {
			f.pushed[key] = append(f.pushed[key], committedSample{t: s.TimestampMs, v: s.Value})
		}
	}
	return &censuspb.PushResponse{}, nil
}

func (f *fakeIngester) setDown(down bool) {
	f.mtx.Lock()
	defer f.mtx.Unlock()
	f.down = down
}

func (f *fakeIngester) samples(series string) []committedSample {
	f.mtx.Lock()
	defer f.mtx.Unlock()
	return append([]committedSample(nil), f.pushed[series]...)
}

func startFakeIngester(t *testing.T) (*fakeIngester, string) {
	t.Helper()
	f := &fakeIngester{pushed: map[string][]committedSample{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	censuspb.RegisterIngesterServer(srv, f)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return f, ln.Addr().String()
}

// swappableRing has one instance at a time, which the test replaces.
type swappableRing struct {
	mtx  sync.Mutex // Guards inst.
	inst ring.InstanceDesc
}

func (r *swappableRing) set(inst ring.InstanceDesc) {
	r.mtx.Lock()
	defer r.mtx.Unlock()
	r.inst = inst
}

func (r *swappableRing) Get(_ uint32, buf []ring.InstanceDesc) ([]ring.InstanceDesc, error) {
	r.mtx.Lock()
	defer r.mtx.Unlock()
	return append(buf[:0], r.inst), nil
}

func (r *swappableRing) ReplicationFactor() int { return 1 }

func TestAgent_RingChangeReroutesQueuedSamples(t *testing.T) {
	a, addrA := startFakeIngester(t)
	b, addrB := startFakeIngester(t)
	r := &swappableRing{inst: ring.InstanceDesc{ID: "a", Addr: addrA, State: ring.ACTIVE}}
	clients := censuspb.NewClientPool()
	t.Cleanup(func() { _ = clients.Close() })
	reg := prometheus.NewPedanticRegistry()
	d, err := distributor.New(distributor.Config{PushTimeout: time.Second}, r, clients, nil, reg)
	require.NoError(t, err)

	target := &countingTarget{}
	host := target.start(t)
	series := censusSeries(host)
	startAgent(t, host, t.TempDir(), d, reg)
	require.Eventually(t, func() bool { return len(a.samples(series)) >= 3 }, 10*time.Second, 10*time.Millisecond)

	// a fails: its samples queue up in the agent.
	a.setDown(true)
	downAt := len(target.timestamps())
	require.Eventually(t, func() bool { return len(target.timestamps()) >= downAt+10 }, 10*time.Second, 10*time.Millisecond)
	// a leaves the ring and b takes its series: what was queued for a
	// goes to b, and so does what comes next.
	r.set(ring.InstanceDesc{ID: "b", Addr: addrB, State: ring.ACTIVE})
	movedAt := len(target.timestamps())
	require.Eventually(t, func() bool {
		return len(a.samples(series))+len(b.samples(series)) >= movedAt+5
	}, 20*time.Second, 10*time.Millisecond)

	got := append(a.samples(series), b.samples(series)...)
	requireExactly(t, target.timestamps(), got)
	require.Greater(t, len(b.samples(series)), movedAt-downAt, "b got the samples queued while a was down")
}

// censusSeries is the counting target's series as the ingesters see it.
func censusSeries(host string) string {
	return fmt.Sprintf(`{"__name__"="scraped_total", "instance"=%q, "job"="counting"}`, host)
}
