package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/census-metrics/census/distributor"
	"github.com/census-metrics/census/ingester"
	censuspb "github.com/census-metrics/census/proto"
	"github.com/census-metrics/census/querier"
	"github.com/census-metrics/census/ring"
)

// testCluster is Census in one process: real ingesters serving gRPC on
// loopback, each a member of a real memberlist ring, plus one watching
// member through which a distributor writes and a querier reads. It is for
// tests that need many clusters or many queries (the PromQL suite, the
// benchmark), where a process per role would cost too much.
type testCluster struct {
	ingesters []*clusterIngester
	watcher   *ring.Ring
	clients   *censuspb.ClientPool
	dist      *distributor.Distributor
	queryable *querier.Queryable
	// reg holds the querier's metrics.
	reg *prometheus.Registry
}

// clusterIngester is one ingester of a testCluster. Its address and ring
// member live as long as the cluster; the ingester and its production gRPC
// server (ingester.Server) behind that address can be replaced by fresh
// ones (reset), which is how the PromQL suite's "clear" gets an empty
// cluster without re-forming the ring.
type clusterIngester struct {
	id      string
	addr    string
	ring    *ring.Ring
	serving *servingIngester // The ingester behind addr now, if any.

	// holdSends makes every stream's first Send wait until the client
	// cancels it, as a slow network would: the ingester is mid-stream.
	holdSends atomic.Bool
	// openStreams counts the streams being served; canceledStreams those
	// that ended because the client canceled them, with the ingester's
	// handler returning Canceled.
	openStreams, canceledStreams atomic.Int64
}

// interceptStream counts the ingester's streams and holds their sends
// while holdSends is set.
func (ci *clusterIngester) interceptStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ci.openStreams.Add(1)
	defer ci.openStreams.Add(-1)
	err := handler(srv, &heldStream{ServerStream: ss, ci: ci})
	if ss.Context().Err() != nil && status.Code(err) == codes.Canceled {
		ci.canceledStreams.Add(1)
	}
	return err
}

// heldStream is a server stream whose sends wait for the client to cancel
// while its ingester's holdSends is set.
type heldStream struct {
	grpc.ServerStream
	ci *clusterIngester
}

func (s *heldStream) SendMsg(m any) error {
	if s.ci.holdSends.Load() {
		<-s.Context().Done()
		return status.FromContextError(s.Context().Err()).Err()
	}
	return s.ServerStream.SendMsg(m)
}

// newTestCluster starts n ingesters with replication factor rf and waits
// until the watcher sees every one of them ACTIVE.
func newTestCluster(t testing.TB, n, rf int) *testCluster {
	t.Helper()
	c := &testCluster{clients: censuspb.NewClientPool(), reg: prometheus.NewPedanticRegistry()}
	t.Cleanup(func() { _ = c.clients.Close() })

	var join []string
	for i := range n {
		ci := &clusterIngester{id: fmt.Sprintf("ingester-%d", i), addr: "127.0.0.1:0"}
		ci.serve(t, filepath.Join(t.TempDir(), ci.id))
		t.Cleanup(func() { require.NoError(t, ci.stopServing()) })
		ci.ring = startRingMember(t, testRingConfig(ci.id, rf, join...), ci.addr)
		if i == 0 {
			join = []string{ci.ring.GossipAddr()}
		}
		c.ingesters = append(c.ingesters, ci)
	}
	c.watcher = startRingMember(t, testRingConfig("watcher", rf, join...), "")
	require.Eventually(t, func() bool {
		return len(c.watcher.ReadInstances()) == n
	}, 30*time.Second, 10*time.Millisecond, "the watcher sees %d ingesters", n)

	var err error
	c.dist, err = distributor.New(distributor.Config{PushTimeout: 30 * time.Second}, c.watcher, c.clients, nil, nil)
	require.NoError(t, err)
	c.queryable = querier.NewQueryable(c.watcher, c.clients, nil, c.reg)
	return c
}

// testRingConfig is a ring member on loopback that converges quickly.
func testRingConfig(id string, rf int, join ...string) ring.Config {
	return ring.Config{
		BindAddress:       "127.0.0.1:0",
		Join:              join,
		InstanceID:        id,
		ReplicationFactor: rf,
		Tokens:            64,
		HeartbeatPeriod:   200 * time.Millisecond,
		HeartbeatTimeout:  10 * time.Second,
	}
}

// startRingMember runs a ring member until the test ends.
func startRingMember(t testing.TB, cfg ring.Config, instanceAddr string) *ring.Ring {
	t.Helper()
	r, err := ring.New(cfg, instanceAddr, nil, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Errorf("ring member %s did not stop", cfg.InstanceID)
		}
	})
	return r
}

// reset puts a fresh, empty ingester behind every address and stops the
// previous ones. It returns a function that stops the fresh ones.
func (c *testCluster) reset(t testing.TB) func() error {
	t.Helper()
	for _, ci := range c.ingesters {
		require.NoError(t, ci.stopServing())
		ci.serve(t, filepath.Join(t.TempDir(), ci.id))
	}
	return func() error {
		var errs []error
		for _, ci := range c.ingesters {
			errs = append(errs, ci.stopServing())
		}
		return errors.Join(errs...)
	}
}

// servingIngester is an ingester and the production gRPC server serving it.
type servingIngester struct {
	ing    *runningIngester
	cancel context.CancelFunc
	served chan error
}

// serve starts a real ingester on dir and an ingester.Server for it on
// ci.addr, which is 127.0.0.1:0 the first time and the same address after.
// Clients of the old server reconnect on their next call.
func (ci *clusterIngester) serve(t testing.TB, dir string) {
	t.Helper()
	ing := startTestIngester(t, dir)
	var (
		ln  net.Listener
		err error
	)
	// The port was just released by the previous server; another
	// listener may take a moment to let it go.
	require.Eventually(t, func() bool {
		ln, err = net.Listen("tcp", ci.addr)
		return err == nil
	}, 10*time.Second, 10*time.Millisecond, "listen on %s: %v", ci.addr, err)
	ci.addr = ln.Addr().String()
	srv := ingester.NewServer(ing.Ingester, ln, grpc.ChainStreamInterceptor(ci.interceptStream))
	ctx, cancel := context.WithCancel(context.Background())
	si := &servingIngester{ing: ing, cancel: cancel, served: make(chan error, 1)}
	go func() { si.served <- srv.Run(ctx) }()
	ci.serving = si
}

// stopServing stops the server, then its ingester; it may be called when
// nothing is serving.
func (ci *clusterIngester) stopServing() error {
	si := ci.serving
	if si == nil {
		return nil
	}
	ci.serving = nil
	si.cancel()
	return errors.Join(<-si.served, si.ing.stop())
}

// testIngesterFlags are the flags of the cluster's ingesters beyond their
// storage path.
var testIngesterFlags = []string{
	// The tests' data is not worth an fsync per push.
	"--storage.wal-fsync=false",
	// Accept samples far behind the newest: the PromQL suite loads series
	// one after another from time 0, and later loads of a file go back to
	// times hours before the newest sample of earlier ones. Prometheus'
	// own suite storage allows that with 24h head blocks.
	"--storage.out-of-order-window=100y",
	// The suite's start_timestamps.test needs them, as Prometheus' own
	// suite storage enables them.
	"--storage.start-timestamps",
	// Do not derive the series limit from the machine's memory.
	"--ingester.max-series=10000000",
	"--ingester.max-series-per-metric=10000000",
}

// runningIngester is an ingester whose Run is going.
type runningIngester struct {
	*ingester.Ingester
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// stop ends the ingester's Run and returns its error; it may be called
// more than once.
func (r *runningIngester) stop() error {
	r.once.Do(func() {
		r.cancel()
		r.err = <-r.done
	})
	return r.err
}

// startTestIngester runs a real ingester on dir until the test ends, and
// waits until it serves.
func startTestIngester(t testing.TB, dir string) *runningIngester {
	t.Helper()
	var cfg ingester.Config
	fs := flag.NewFlagSet("ingester", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	require.NoError(t, fs.Parse(append([]string{"--storage.path=" + dir}, testIngesterFlags...)))
	ing, err := ingester.New(cfg, nil, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningIngester{Ingester: ing, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- ing.Run(ctx) }()
	t.Cleanup(func() { require.NoError(t, r.stop()) })
	require.Eventually(t, func() bool { return ing.Ready() == nil }, 30*time.Second, time.Millisecond, "ingester on %s serves", dir)
	return r
}

// storage returns the cluster as a storage.Storage: appends go through the
// distributor, reads through the querier. closeFn is what Close does.
func (c *testCluster) storage(closeFn func() error) storage.Storage {
	return &clusterStorage{Queryable: c.queryable, dist: c.dist, closeFn: closeFn}
}

// clusterStorage is a testCluster as a storage.Storage.
type clusterStorage struct {
	// Appendable is nil: Census has only the AppenderV2 interface, and
	// everything these tests drive appends through it.
	storage.Appendable
	*querier.Queryable
	dist    *distributor.Distributor
	closeFn func() error
}

func (s *clusterStorage) AppenderV2(ctx context.Context) storage.AppenderV2 {
	return s.dist.AppenderV2(ctx)
}

func (*clusterStorage) StartTime() (int64, error) { return int64(model.Earliest), nil }

func (s *clusterStorage) Close() error { return s.closeFn() }
