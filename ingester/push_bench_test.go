package ingester_test

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"

	censuspb "github.com/census-metrics/census/proto"
)

const (
	// benchActiveSeries is the head size of the push benchmarks.
	benchActiveSeries = 100_000
	// benchSeriesPerRequest is one push: what a distributor sends an
	// ingester for a few scrapes.
	benchSeriesPerRequest = 1000
	// benchInterval is the scrape interval between a series' samples.
	benchInterval = 15_000 // ms
)

// benchLabels returns the ten labels of series i, as a Kubernetes service's
// request counter has them.
func benchLabels(i int) []string {
	return []string{
		"__name__", "http_requests_total",
		"cluster", "eu-west-1",
		"code", fmt.Sprint(200 + i%5),
		"container", "api",
		"handler", fmt.Sprintf("/api/v1/resource/%d", i/5%2000),
		"instance", fmt.Sprintf("10.%d.%d.%d:8080", i/62500, i/250%250, i%250),
		"job", "api",
		"method", "GET",
		"namespace", fmt.Sprintf("prod-%d", i%7),
		"pod", fmt.Sprintf("api-%d-%x", i/20, i%20),
	}
}

// benchRequests returns the push requests that cover series [0, n), each
// with one sample per series.
func benchRequests(n int) []*censuspb.PushRequest {
	var reqs []*censuspb.PushRequest
	for from := 0; from < n; from += benchSeriesPerRequest {
		req := &censuspb.PushRequest{}
		for i := from; i < min(n, from+benchSeriesPerRequest); i++ {
			req.Series = append(req.Series, series(pairs(benchLabels(i)...), sample{}))
		}
		reqs = append(reqs, req)
	}
	return reqs
}

// setTimestamp gives every sample of req timestamp ts and a counter's value.
func setTimestamp(req *censuspb.PushRequest, ts int64) {
	for i, s := range req.Series {
		s.Samples[0].TimestampMs = ts
		s.Samples[0].Value = float64(ts/benchInterval*int64(i%13+1)) + 0.5
	}
}

// cpuTime is the CPU time this process used so far, every goroutine and
// the kernel's work for it (fsyncs, loopback networking) included.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(fmt.Sprintf("BUG: getrusage: %v", err))
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchBase is the first timestamp of the push benchmarks: every timestamp
// from it on for a century is a varint of encodedTimestampSize bytes, so
// encodedBatch can rewrite them in place.
const (
	benchBase            = int64(1) << 42
	encodedTimestampSize = 7
)

// encodedBatch is a push request of benchSeriesPerRequest series with one
// sample each, encoded once as a distributor encodes it (censuspb's
// Append* functions), whose timestamps and values are then rewritten in
// place: the sender costs the benchmark nothing but the transport.
type encodedBatch struct {
	req     censuspb.EncodedPushRequest
	samples []int // Offset in req of each series' sample timestamp.
}

func encodeBatches(n int) []*encodedBatch {
	var batches []*encodedBatch
	for from := 0; from < n; from += benchSeriesPerRequest {
		b := &encodedBatch{}
		for i := from; i < min(n, from+benchSeriesPerRequest); i++ {
			series := censuspb.AppendSeriesLabels(nil, labels.FromStrings(benchLabels(i)...))
			sample := len(series)
			series = censuspb.AppendSample(series, benchBase, 1.5)
			// The sample is a tag and a length of a byte each, then the
			// timestamp's tag and varint.
			offset := len(b.req) + censuspb.SizePushRequestSeries(len(series)) - len(series) + sample + 3
			b.req = censuspb.AppendPushRequestSeries(b.req, series)
			b.samples = append(b.samples, offset)
		}
		batches = append(batches, b)
	}
	return batches
}

// set rewrites every sample of b to timestamp ts and a counter's value.
func (b *encodedBatch) set(ts int64) {
	if protowire.SizeVarint(uint64(ts)) != encodedTimestampSize {
		panic(fmt.Sprintf("BUG: timestamp %d does not fit its slot", ts))
	}
	for i, off := range b.samples {
		protowire.AppendVarint(b.req[off:off], uint64(ts))
		v := float64(ts/benchInterval*int64(i%13+1)) + 0.5
		// The value's tag, then its 8 bytes.
		binary.LittleEndian.PutUint64(b.req[off+encodedTimestampSize+1:], math.Float64bits(v))
	}
}

// BenchmarkIngester_Push pushes over gRPC on loopback, from GOMAXPROCS
// goroutines at once, requests of 1,000 series with 10 labels and one
// sample each, into an ingester with 100,000 active series: the steady
// state of an ingester. samples/cpu-s is the throughput per core: samples
// divided by the CPU time of the whole process, which besides the ingester
// holds only the sending side of gRPC (requests are encoded once, then
// rewritten in place).
func BenchmarkIngester_Push(b *testing.B) {
	for _, fsync := range []bool{true, false} {
		b.Run(fmt.Sprintf("fsync=%t", fsync), func(b *testing.B) {
			cfg := testConfig(b.TempDir())
			cfg.WALFsync = fsync
			cfg.Limits.MaxSeries = 1_000_000
			ti := startIngesterWith(b, cfg)
			batches := encodeBatches(benchActiveSeries)
			ctx := context.Background()
			for _, batch := range batches {
				batch.set(benchBase)
				_, err := censuspb.PushEncoded(ctx, ti.conn, batch.req)
				require.NoError(b, err)
			}

			// Each goroutine owns the batches n with n%goroutines == its
			// id, so a series' samples stay in order.
			goroutines := runtime.GOMAXPROCS(0)
			var ids, pushed atomic.Int64
			cpu := cpuTime()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				id := int(ids.Add(1) - 1)
				ts := benchBase
				for n := id; pb.Next(); n += goroutines {
					batch := batches[n%len(batches)]
					if n%len(batches) < goroutines {
						ts += benchInterval
					}
					batch.set(ts)
					if _, err := censuspb.PushEncoded(ctx, ti.conn, batch.req); err != nil {
						b.Errorf("push: %v", err)
						return
					}
					pushed.Add(int64(len(batch.samples)))
				}
			})
			b.StopTimer()
			used := cpuTime() - cpu
			b.ReportMetric(float64(pushed.Load())/b.Elapsed().Seconds(), "samples/s")
			b.ReportMetric(float64(pushed.Load())/used.Seconds(), "samples/cpu-s")
		})
	}
}

// benchDB opens a bare TSDB with the ingester's TSDB options: the reference
// the ingester's overhead is measured against.
func benchDB(b testing.TB, dir string) *tsdb.DB {
	b.Helper()
	opts := tsdb.DefaultOptions()
	opts.EnableExemplarStorage = true
	opts.MaxExemplars = 100_000
	opts.EnableMemorySnapshotOnShutdown = true
	db, err := tsdb.Open(dir, nil, nil, opts, nil)
	require.NoError(b, err)
	return db
}

// BenchmarkIngester_PushVsHeadAppend measures, in one benchmark with 100,000
// active series on each side, the append throughput per core of
//   - an ingester over gRPC (requests of 1,000 series, encoded once and
//     rewritten in place, so the sender costs only the transport),
//   - an ingester called directly with the same encoded requests (its own
//     work, without gRPC), and
//   - the TSDB the ingester is built on, appended directly through its
//     AppenderV2 with prepared labels and a Commit per 1,000 samples, with
//     no fsync: Prometheus' own append path,
//
// and reports each one's ratio to the bare TSDB. Each runs one request at a
// time, taking turns, so they share the machine's noise.
func BenchmarkIngester_PushVsHeadAppend(b *testing.B) {
	for _, fsync := range []bool{true, false} {
		b.Run(fmt.Sprintf("fsync=%t", fsync), func(b *testing.B) {
			cfg := testConfig(b.TempDir())
			cfg.WALFsync = fsync
			cfg.Limits.MaxSeries = 1_000_000
			overGRPC := startIngesterWith(b, cfg)
			cfg.StoragePath = b.TempDir()
			direct := startIngesterWith(b, cfg)
			db := benchDB(b, b.TempDir())
			b.Cleanup(func() { require.NoError(b, db.Close()) })

			batches := encodeBatches(benchActiveSeries)
			sets := make([][]labels.Labels, len(batches))
			for i := range benchActiveSeries {
				sets[i/benchSeriesPerRequest] = append(sets[i/benchSeriesPerRequest], labels.FromStrings(benchLabels(i)...))
			}
			ctx := context.Background()
			appendHead := func(r int, ts int64) {
				app := db.AppenderV2(ctx)
				for i, ls := range sets[r] {
					v := float64(ts/benchInterval*int64(i%13+1)) + 0.5
					if _, err := app.Append(0, ls, 0, ts, v, nil, nil, storage.AOptions{}); err != nil {
						b.Fatalf("append: %v", err)
					}
				}
				require.NoError(b, app.Commit())
			}
			for r, batch := range batches {
				batch.set(benchBase)
				_, err := censuspb.PushEncoded(ctx, overGRPC.conn, batch.req)
				require.NoError(b, err)
				require.NoError(b, direct.ing.PushEncoded(ctx, batch.req))
				appendHead(r, benchBase)
			}

			var grpcCPU, directCPU, headCPU time.Duration
			ts := benchBase
			n := 0
			b.ReportAllocs()
			for b.Loop() {
				r := n % len(batches)
				if r == 0 {
					ts += benchInterval
				}
				n++
				batch := batches[r]
				batch.set(ts)

				cpu := cpuTime()
				_, err := censuspb.PushEncoded(ctx, overGRPC.conn, batch.req)
				require.NoError(b, err)
				grpcCPU += cpuTime() - cpu

				cpu = cpuTime()
				require.NoError(b, direct.ing.PushEncoded(ctx, batch.req))
				directCPU += cpuTime() - cpu

				cpu = cpuTime()
				appendHead(r, ts)
				headCPU += cpuTime() - cpu
			}
			samples := float64(n * benchSeriesPerRequest)
			b.ReportMetric(samples/grpcCPU.Seconds(), "grpc-samples/cpu-s")
			b.ReportMetric(samples/directCPU.Seconds(), "direct-samples/cpu-s")
			b.ReportMetric(samples/headCPU.Seconds(), "head-samples/cpu-s")
			b.ReportMetric(headCPU.Seconds()/grpcCPU.Seconds(), "grpc/head")
			b.ReportMetric(headCPU.Seconds()/directCPU.Seconds(), "direct/head")
		})
	}
}

// BenchmarkIngester_MemoryPerSeries measures the heap in use per active
// series (10 labels, one sample each) of an ingester filled over gRPC, and
// of the bare TSDB it is built on (same options) filled directly, in the
// same benchmark, and reports the ratio. The 1,000,000-series case takes
// about a minute and runs only when named:
//
//	go test -run='^$' -bench='MemoryPerSeries/series=1000000' -benchtime=1x ./ingester/
func BenchmarkIngester_MemoryPerSeries(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("series=%d", n), func(b *testing.B) {
			if n > 100_000 && !strings.Contains(flag.Lookup("test.bench").Value.String(), fmt.Sprint(n)) {
				b.Skipf("takes about a minute; run it with -bench='MemoryPerSeries/series=%d'", n)
			}
			for b.Loop() {
				ing, head := memoryPerSeries(b, n)
				b.ReportMetric(ing, "ingester-bytes/series")
				b.ReportMetric(head, "head-bytes/series")
				b.ReportMetric(ing/head, "ratio")
			}
		})
	}
}

// heapInUse returns the heap in use once collections stop freeing memory:
// memory held by finalizers and sync.Pools takes several cycles to go.
func heapInUse() uint64 {
	var ms runtime.MemStats
	prev := uint64(math.MaxUint64)
	for range 10 {
		runtime.GC()
		time.Sleep(10 * time.Millisecond) // Lets finalizers run; not for correctness.
		runtime.ReadMemStats(&ms)
		if ms.HeapInuse >= prev-prev/200 {
			break
		}
		prev = ms.HeapInuse
	}
	return ms.HeapInuse
}

// memoryPerSeries fills a bare TSDB and then an ingester with n series and
// returns the heap each holds per series. The bare TSDB goes first: closed
// and dropped, it leaves nothing behind, while a stopped test ingester stays
// reachable from its registry until the benchmark ends.
func memoryPerSeries(b *testing.B, n int) (ingBytes, headBytes float64) {
	reqs := benchRequests(n)
	for _, req := range reqs {
		setTimestamp(req, benchInterval)
	}
	ctx := context.Background()

	// The requests stay alive throughout; the labels the head is given
	// are built from them as the ingester builds them.
	before := heapInUse()
	db := benchDB(b, b.TempDir())
	var builder labels.ScratchBuilder
	for _, req := range reqs {
		app := db.AppenderV2(ctx)
		for _, s := range req.Series {
			ls, err := censuspb.ToLabels(&builder, s.GetLabels())
			require.NoError(b, err)
			_, err = app.Append(0, ls, 0, s.Samples[0].TimestampMs, s.Samples[0].Value, nil, nil, storage.AOptions{})
			require.NoError(b, err)
		}
		require.NoError(b, app.Commit())
	}
	after := heapInUse()
	require.Equal(b, uint64(n), db.Head().NumSeries())
	headBytes = (float64(after) - float64(before)) / float64(n)
	require.NoError(b, db.Close())
	db = nil // Lets the collector have it before the next baseline.

	before = heapInUse()
	cfg := testConfig(b.TempDir())
	cfg.Limits.MaxSeries, cfg.Limits.MaxSeriesPerMetric = 2*n, 2*n
	ti := startIngesterWith(b, cfg)
	for _, req := range reqs {
		_, err := ti.client.Push(ctx, req)
		require.NoError(b, err)
	}
	after = heapInUse()
	// The requests were in both baselines: they must not go before here.
	runtime.KeepAlive(reqs)
	require.Equal(b, float64(n), gaugeValue(b, ti.reg, "census_ingester_head_series"))
	ingBytes = (float64(after) - float64(before)) / float64(n)
	ti.stop()
	return ingBytes, headBytes
}

// BenchmarkIngester_DiskBytesPerSample pushes four hours of samples every
// 15s for 1,000 series of a service (counters, gauges and histogram
// buckets with realistic changes), compacts the head into a 2h block, and
// reports census_ingester_disk_bytes_per_sample.
func BenchmarkIngester_DiskBytesPerSample(b *testing.B) {
	const (
		seriesN = 1000
		hours   = 4
	)
	for b.Loop() {
		ti := startIngester(b, b.TempDir())
		rnd := rand.New(rand.NewPCG(1, 2))
		values := make([]float64, seriesN)
		reqs := benchRequests(seriesN)
		ctx := context.Background()
		for ts := int64(0); ts < hours*3600_000; ts += benchInterval {
			for _, req := range reqs {
				for i, s := range req.Series {
					switch i % 3 {
					case 0: // A counter of requests.
						values[i] += float64(rnd.IntN(100))
					case 1: // A gauge: memory in bytes, drifting by pages.
						if values[i] == 0 {
							values[i] = 200 << 20
						}
						values[i] += float64((rnd.IntN(64) - 32) * 4096)
					default: // A latency histogram bucket's counter.
						values[i] += float64(rnd.IntN(5))
					}
					s.Samples[0].TimestampMs, s.Samples[0].Value = ts, values[i]
				}
				_, err := ti.client.Push(ctx, req)
				require.NoError(b, err)
			}
		}
		require.NoError(b, ti.ing.CompactHead(ctx))
		perSample := gaugeValue(b, ti.reg, "census_ingester_disk_bytes_per_sample")
		require.Greater(b, perSample, 0.0, "a block was written")
		b.ReportMetric(perSample, "disk-bytes/sample")
		ti.stop()
	}
}

// gaugeValue returns the value of the gauge name in reg.
func gaugeValue(t testing.TB, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// BenchmarkIngester_PushResend pushes over gRPC requests of 1,000 series
// with 5 samples each. "resend" repeats a request the ingester stored
// before newer samples of the same series: the time rules refuse every
// sample, and each is looked up and found stored (resend.go), the worst
// case of a sender's retry. "new" pushes the same request with new
// timestamps, for comparison. ns/sample is per sample of the requests.
func BenchmarkIngester_PushResend(b *testing.B) {
	const samplesPerSeries = 5
	ti := startIngester(b, b.TempDir())
	ctx := context.Background()
	req := &censuspb.PushRequest{}
	for i := range benchSeriesPerRequest {
		ts := &censuspb.TimeSeries{Labels: pairs(benchLabels(i)...)}
		for n := range samplesPerSeries {
			ts.Samples = append(ts.Samples, &censuspb.Sample{TimestampMs: int64(n) * benchInterval, Value: float64(i + n)})
		}
		req.Series = append(req.Series, ts)
	}
	// setTime moves every sample of req to start at t0.
	setTime := func(t0 int64) {
		for _, ts := range req.GetSeries() {
			for n, s := range ts.GetSamples() {
				s.TimestampMs = t0 + int64(n)*benchInterval
			}
		}
	}
	_, err := ti.client.Push(ctx, req)
	require.NoError(b, err)
	setTime(samplesPerSeries * benchInterval)
	_, err = ti.client.Push(ctx, req)
	require.NoError(b, err)
	next := int64(2 * samplesPerSeries * benchInterval)

	for _, resend := range []bool{true, false} {
		name := "new"
		if resend {
			name = "resend"
		}
		b.Run(name, func(b *testing.B) {
			if resend {
				setTime(0)
			}
			b.ReportAllocs()
			for b.Loop() {
				if !resend {
					setTime(next)
					next += samplesPerSeries * benchInterval
				}
				if _, err := ti.client.Push(ctx, req); err != nil {
					b.Fatalf("push: %v", err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchSeriesPerRequest*samplesPerSeries), "ns/sample")
		})
	}
}
