package ingester_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/census-metrics/census/ingester"
	censuspb "github.com/census-metrics/census/proto"
)

// testIngester is an Ingester served over real gRPC on loopback.
type testIngester struct {
	ing    *ingester.Ingester
	addr   string // The gRPC server's.
	client censuspb.IngesterClient
	conn   grpc.ClientConnInterface // client's, for censuspb.PushEncoded.
	reg    *prometheus.Registry
	stop   func()     // Stops the server and the ingester; idempotent.
	ran    chan error // Receives Run's result, for waitReady.
}

// testConfig is the ingester's default configuration on dir, with a fixed
// series limit so that tests do not depend on the machine's memory.
func testConfig(dir string) ingester.Config {
	var cfg ingester.Config
	cfg.RegisterFlags(flag.NewFlagSet("test", flag.PanicOnError))
	cfg.StoragePath = dir
	cfg.Limits.MaxSeries = 100_000
	return cfg
}

// startIngester runs an Ingester on dir with the default configuration and
// serves it on 127.0.0.1:0, as cmd/census does. Everything is stopped by
// t.Cleanup, or earlier by stop.
func startIngester(t testing.TB, dir string) *testIngester {
	t.Helper()
	return startIngesterWith(t, testConfig(dir))
}

// startIngesterWith is startIngester with cfg.
func startIngesterWith(t testing.TB, cfg ingester.Config) *testIngester {
	t.Helper()
	return startIngesterServing(t, cfg, func(i *ingester.Ingester, ln net.Listener) *ingester.Server { return ingester.NewServer(i, ln) })
}

// startIngesterServing is startIngesterWith with the gRPC server newServer
// returns.
func startIngesterServing(t testing.TB, cfg ingester.Config, newServer func(*ingester.Ingester, net.Listener) *ingester.Server) *testIngester {
	t.Helper()
	ti := startIngesterSetUp(t, cfg, newServer, nil)
	waitReady(t, ti.ing, ti.ran)
	return ti
}

// startIngesterSetUp is startIngesterServing that calls setUp, if not nil,
// on the new Ingester before Run, and returns without waiting until it is
// ready.
func startIngesterSetUp(t testing.TB, cfg ingester.Config, newServer func(*ingester.Ingester, net.Listener) *ingester.Server, setUp func(*ingester.Ingester)) *testIngester {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	ing, err := ingester.New(cfg, nil, reg)
	require.NoError(t, err)
	if setUp != nil {
		setUp(ing)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- ing.Run(ctx) }()

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srvCtx, stopServer := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- newServer(ing, lis).Run(srvCtx) }()

	pool := censuspb.NewClientPool()
	client, err := pool.Get(lis.Addr().String())
	require.NoError(t, err)
	conn, err := pool.Conn(lis.Addr().String())
	require.NoError(t, err)

	var once sync.Once
	stop := func() {
		once.Do(func() {
			require.NoError(t, pool.Close())
			stopServer()
			require.NoError(t, <-served)
			cancel()
			require.NoError(t, <-ran)
		})
	}
	t.Cleanup(stop)
	return &testIngester{ing: ing, addr: lis.Addr().String(), client: client, conn: conn, reg: reg, stop: stop, ran: ran}
}

// waitReady polls ing until it is ready; ran receives Run's result.
func waitReady(t testing.TB, ing *ingester.Ingester, ran chan error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for ing.Ready() != nil {
		select {
		case err := <-ran:
			ran <- err // For stop.
			t.Fatalf("Run returned before the ingester was ready: %v", err)
		case <-time.After(time.Millisecond):
		}
		require.False(t, time.Now().After(deadline), "not ready within 30s: %v", ing.Ready())
	}
}

// pairs builds wire labels from name, value, name, value, ... in the given
// order, so tests can also build invalid sets.
func pairs(nv ...string) []*censuspb.LabelPair {
	out := make([]*censuspb.LabelPair, 0, len(nv)/2)
	for i := 0; i+1 < len(nv); i += 2 {
		out = append(out, &censuspb.LabelPair{Name: []byte(nv[i]), Value: []byte(nv[i+1])})
	}
	return out
}

// sample is one (timestamp, value) as the tests expect it.
type sample struct {
	T int64
	V float64
}

func wireSamples(ss ...sample) []*censuspb.Sample {
	out := make([]*censuspb.Sample, 0, len(ss))
	for _, s := range ss {
		out = append(out, &censuspb.Sample{TimestampMs: s.T, Value: s.V})
	}
	return out
}

func series(ls []*censuspb.LabelPair, ss ...sample) *censuspb.TimeSeries {
	return &censuspb.TimeSeries{Labels: ls, Samples: wireSamples(ss...)}
}

// linear returns n samples from t0 every step ms, each valued its timestamp.
func linear(t0, step int64, n int) []sample {
	out := make([]sample, 0, n)
	for i := range n {
		t := t0 + int64(i)*step
		out = append(out, sample{T: t, V: float64(t)})
	}
	return out
}

func push(t testing.TB, c censuspb.IngesterClient, ts ...*censuspb.TimeSeries) {
	t.Helper()
	_, err := c.Push(context.Background(), &censuspb.PushRequest{Series: ts})
	require.NoError(t, err)
}

// streamedSeries is one series of a QueryStream answer, its chunks decoded.
type streamedSeries struct {
	Labels  string
	Samples []sample
}

// queryStream runs QueryStream and decodes every chunk with chunkenc; see
// readStream. It returns the series in the order received and the number of
// frames.
func queryStream(t testing.TB, c censuspb.IngesterClient, start, end int64, ms ...*labels.Matcher) ([]streamedSeries, int) {
	t.Helper()
	out, frames, err := readStream(c, start, end, ms...)
	require.NoError(t, err)
	return out, frames
}

// readStream is queryStream for goroutines other than the test's: it
// returns errors instead of failing the test.
func readStream(c censuspb.IngesterClient, start, end int64, ms ...*labels.Matcher) ([]streamedSeries, int, error) {
	stream, err := c.QueryStream(context.Background(), &censuspb.QueryStreamRequest{
		StartMs: start, EndMs: end, Matchers: censuspb.FromMatchers(ms),
	})
	if err != nil {
		return nil, 0, err
	}
	var (
		out    []streamedSeries
		frames int
	)
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, frames, nil
		}
		if err != nil {
			return nil, 0, err
		}
		frames++
		for _, s := range resp.GetSeries() {
			samples, err := decodeChunks(s.GetChunks())
			if err != nil {
				return nil, 0, fmt.Errorf("series %s: %w", censuspb.FormatLabelPairs(s.GetLabels()), err)
			}
			out = append(out, streamedSeries{Labels: censuspb.FormatLabelPairs(s.GetLabels()), Samples: samples})
		}
	}
}

// decodeChunks decodes chunks with chunkenc, checking each one's encoding and
// time bounds against its samples.
func decodeChunks(chks []*censuspb.Chunk) ([]sample, error) {
	var out []sample
	for i, c := range chks {
		if c.GetEncoding() != censuspb.Chunk_XOR {
			return nil, fmt.Errorf("chunk %d: encoding %v, want XOR", i, c.GetEncoding())
		}
		chk, err := chunkenc.FromData(chunkenc.Encoding(c.GetEncoding()), c.GetData())
		if err != nil {
			return nil, fmt.Errorf("chunk %d: %w", i, err)
		}
		var got []sample
		it := chk.Iterator(nil)
		for it.Next() != chunkenc.ValNone {
			ts, v := it.At()
			got = append(got, sample{T: ts, V: v})
		}
		switch {
		case it.Err() != nil:
			return nil, fmt.Errorf("chunk %d: %w", i, it.Err())
		case len(got) == 0:
			return nil, fmt.Errorf("chunk %d is empty", i)
		case got[0].T != c.GetMinTimeMs() || got[len(got)-1].T != c.GetMaxTimeMs():
			return nil, fmt.Errorf("chunk %d: samples from %d to %d, but chunk says %d to %d",
				i, got[0].T, got[len(got)-1].T, c.GetMinTimeMs(), c.GetMaxTimeMs())
		}
		out = append(out, got...)
	}
	return out, nil
}

// fmtLabels formats a label set as QueryStream results are compared.
func fmtLabels(nv ...string) string {
	return censuspb.FormatLabelPairs(censuspb.FromLabels(nil, labels.FromStrings(nv...)))
}
