package distributor

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/alecthomas/units"
	"github.com/golang/snappy"
	remoteapi "github.com/prometheus/client_golang/exp/api/remote"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/timestamp"
	"github.com/prometheus/prometheus/prompb"
	writev2 "github.com/prometheus/prometheus/prompb/io/prometheus/write/v2"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/storage/remote"

	"github.com/census-metrics/census/ring"
)

// shardOnly is the distributor with Commit cut short after sharding: it
// encodes every series and builds every ingester's request, then drops
// them instead of sending, so a benchmark measures the distributor's CPU
// and not the network or the ingesters.
type shardOnly struct{ d *Distributor }

func (s shardOnly) AppenderV2(ctx context.Context) storage.AppenderV2 {
	return shardOnlyAppender{s.d.AppenderV2(ctx).(*appender)}
}

type shardOnlyAppender struct{ *appender }

func (a shardOnlyAppender) Commit() error {
	if err := a.encode(); err != nil {
		return err
	}
	if _, err := a.shard(); err != nil {
		return err
	}
	return a.Rollback()
}

// BenchmarkReceiver_RemoteWrite measures what one core of a distributor
// does per remote-write request, as Prometheus sends them by default
// (2,000 samples, here of 2,000 series with 10 labels each): snappy and
// protobuf decoding (1.0 by Census' own store, 2.0 by Prometheus'
// handler), validation, hashing, encoding each series once and building
// the requests of 3 replicas among 10 ingesters. Sending is left out (see
// shardOnly). v1-prometheus is 1.0 through Prometheus' own handler, the
// peer of v1 in the same run.
func BenchmarkReceiver_RemoteWrite(b *testing.B) {
	const numSeries = 2000
	r := &FakeRing{RF: 3}
	for i := range 10 {
		r.Instances = append(r.Instances, ring.InstanceDesc{ID: fmt.Sprintf("ingester-%d", i), Addr: fmt.Sprintf("10.0.0.%d:9095", i), State: ring.ACTIVE})
	}
	cfg := Config{PushTimeout: 10 * time.Second, MaxLabelNamesPerSeries: 64, MaxLabelNameLength: 1024, MaxLabelValueLength: 4096, MaxFutureSkew: 10 * time.Minute}
	d := &Distributor{cfg: cfg, ring: r, metrics: newMetrics(nil), appenders: newFreeList()}
	prometheusHandler := remote.NewWriteHandler(nil, nil, shardOnly{d}, remoteapi.MessageTypes{remoteapi.WriteV1MessageType, remoteapi.WriteV2MessageType}, false, true)
	handler := newRemoteWriteHandler(prometheusHandler, shardOnly{d}, nil)

	now := timestamp.FromTime(time.Now())
	series := make([]labels.Labels, numSeries)
	for i := range series {
		series[i] = labels.FromStrings(
			"__name__", "http_requests_total",
			"cluster", "eu-west-1",
			"code", strconv.Itoa(200+i%5),
			"container", "api",
			"instance", fmt.Sprintf("10.1.%d.%d:8080", i/250, i%250),
			"job", "api",
			"method", "GET",
			"namespace", "shop",
			"node", fmt.Sprintf("node-%d", i%40),
			"pod", fmt.Sprintf("api-%d", i),
		)
	}
	v1 := &prompb.WriteRequest{}
	st := writev2.NewSymbolTable()
	v2 := &writev2.Request{}
	for i, ls := range series {
		v1.Timeseries = append(v1.Timeseries, prompb.TimeSeries{Labels: prompb.FromLabels(ls, nil), Samples: []prompb.Sample{{Value: float64(i), Timestamp: now}}})
		v2.Timeseries = append(v2.Timeseries, writev2.TimeSeries{LabelsRefs: st.SymbolizeLabels(ls, nil), Samples: []writev2.Sample{{Value: float64(i), Timestamp: now}}})
	}
	v2.Symbols = st.Symbols()
	v1Bytes, err := v1.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	v2Bytes, err := v2.Marshal()
	if err != nil {
		b.Fatal(err)
	}

	for _, tc := range []struct {
		name, contentType string
		body              []byte
		handler           http.Handler
	}{
		{"v1", "application/x-protobuf;proto=prometheus.WriteRequest", snappy.Encode(nil, v1Bytes), handler},
		{"v1-prometheus", "application/x-protobuf;proto=prometheus.WriteRequest", snappy.Encode(nil, v1Bytes), prometheusHandler},
		{"v2", "application/x-protobuf;proto=io.prometheus.write.v2.Request", snappy.Encode(nil, v2Bytes), handler},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(tc.body)))
			cpu := processCPUTime()
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPost, RemoteWritePath, bytes.NewReader(tc.body))
				req.Header.Set("Content-Type", tc.contentType)
				req.Header.Set("Content-Encoding", "snappy")
				w := httptest.NewRecorder()
				tc.handler.ServeHTTP(w, req)
				if w.Code != http.StatusNoContent {
					b.Fatalf("status %d: %s", w.Code, w.Body)
				}
			}
			cpu = processCPUTime() - cpu
			b.ReportMetric(float64(numSeries)*float64(b.N)/b.Elapsed().Seconds(), "samples/s")
			// Per core: the garbage collector works on the other cores
			// too, so count the process' CPU time, not the wall clock.
			b.ReportMetric(float64(numSeries)*float64(b.N)/cpu.Seconds(), "samples/cpu-s")
		})
	}
}

// processCPUTime is the CPU time this process has used, user and system.
func processCPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkReceiver_ConcurrentLargePushes sends 16 remote-write 1.0
// pushes of 29MB each decoded (195,000 series) at once, as a flood of
// large pushes would, and reports the distributor's peak heap and how many
// pushes it took: with the default in-flight byte limit (256MB, counted
// decompressed: eight are taken, the others answered 429 before they are
// read) and with 64MB (two). Sending to the ingesters is left out (see
// shardOnly).
func BenchmarkReceiver_ConcurrentLargePushes(b *testing.B) {
	const numSeries, pushes = 195_000, 16
	r := &FakeRing{RF: 3}
	for i := range 10 {
		r.Instances = append(r.Instances, ring.InstanceDesc{ID: fmt.Sprintf("ingester-%d", i), Addr: fmt.Sprintf("10.0.0.%d:9095", i), State: ring.ACTIVE})
	}
	cfg := Config{PushTimeout: 10 * time.Second, MaxLabelNamesPerSeries: 64, MaxLabelNameLength: 1024, MaxLabelValueLength: 4096, MaxFutureSkew: 10 * time.Minute}
	d := &Distributor{cfg: cfg, ring: r, metrics: newMetrics(nil), appenders: newFreeList()}
	prometheusHandler := remote.NewWriteHandler(nil, nil, shardOnly{d}, remoteapi.MessageTypes{remoteapi.WriteV1MessageType, remoteapi.WriteV2MessageType}, false, true)

	now := timestamp.FromTime(time.Now())
	req := &prompb.WriteRequest{}
	for i := range numSeries {
		ls := labels.FromStrings("__name__", "http_requests_total", "cluster", "eu-west-1", "code", strconv.Itoa(200+i%5),
			"instance", fmt.Sprintf("10.%d.%d.%d:8080", i/65536, i/256%256, i%256), "job", "api", "pod", fmt.Sprintf("api-%d", i))
		req.Timeseries = append(req.Timeseries, prompb.TimeSeries{Labels: prompb.FromLabels(ls, nil), Samples: []prompb.Sample{{Value: float64(i), Timestamp: now}}})
	}
	raw, err := req.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	body := snappy.Encode(nil, raw)
	req, raw = nil, nil
	b.Logf("each push: %d bytes compressed", len(body))

	for _, tc := range []struct {
		name     string
		maxBytes units.Base2Bytes
	}{
		{"inflight-256MB", 256 << 20},
		{"inflight-64MB", 64 << 20},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h := &pushHandler{next: newRemoteWriteHandler(prometheusHandler, shardOnly{d}, nil), logger: slog.New(slog.DiscardHandler), maxBytes: 64 << 20, inflight: newInflight(Config{MaxInflightPushRequests: 256, MaxInflightPushBytes: tc.maxBytes}, nil, nil)}
			var peak uint64
			for b.Loop() {
				runtime.GC()
				stop := make(chan struct{})
				sampled := make(chan uint64)
				go func() {
					var (
						ms  runtime.MemStats
						top uint64
					)
					t := time.NewTicker(5 * time.Millisecond)
					defer t.Stop()
					for {
						runtime.ReadMemStats(&ms)
						top = max(top, ms.HeapInuse)
						select {
						case <-stop:
							sampled <- top
							return
						case <-t.C:
						}
					}
				}()
				var wg sync.WaitGroup
				var taken, throttled atomic.Int64
				for range pushes {
					wg.Go(func() {
						r := httptest.NewRequest(http.MethodPost, RemoteWritePath, bytes.NewReader(body))
						r.Header.Set("Content-Type", "application/x-protobuf;proto=prometheus.WriteRequest")
						r.Header.Set("Content-Encoding", "snappy")
						w := httptest.NewRecorder()
						h.ServeHTTP(w, r)
						switch w.Code {
						case http.StatusNoContent:
							taken.Add(1)
						case http.StatusTooManyRequests:
							throttled.Add(1)
						default:
							b.Errorf("status %d: %.200s", w.Code, w.Body)
						}
					})
				}
				wg.Wait()
				close(stop)
				peak = max(peak, <-sampled)
				b.ReportMetric(float64(taken.Load()), "taken")
				b.ReportMetric(float64(throttled.Load()), "throttled")
			}
			b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MB")
		})
	}
}
