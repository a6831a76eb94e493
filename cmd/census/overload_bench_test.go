package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/golang/snappy"
	remoteapi "github.com/prometheus/client_golang/exp/api/remote"
	config_util "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/prompb"
	"github.com/prometheus/prometheus/storage/remote"
)

// The overload benchmark's data and load (issue 13): overloadSeries series
// of a dashboard's counter with overloadHistory of samples every
// overloadStep, queried alone for overloadQuiet, then for overloadBusy
// while overloadWriters remote-write senders each push overloadBatch
// series of their own, one sample each, as fast as they are answered.
const (
	overloadSeries  = 2000
	overloadJobs    = 10
	overloadHistory = time.Hour
	overloadStep    = 15 * time.Second
	overloadQuiet   = 20 * time.Second
	overloadBusy    = 30 * time.Second
	overloadWriters = 256
	overloadBatch   = 500
	// overloadRamp is how long the writers run before the queries of the
	// busy phase start, so that every one of them is in its loop.
	overloadRamp = 2 * time.Second
	// overloadMinBackoff and overloadMaxBackoff bound the wait before a
	// push answered 429 or 5xx is resent, doubling in between, as
	// Prometheus' queue manager does (min_backoff 30ms; its max_backoff
	// is 5s, shortened here so that the phase sees several rounds). A
	// Retry-After replaces the wait, as there.
	overloadMinBackoff = 30 * time.Millisecond
	overloadMaxBackoff = time.Second
)

// overloadMetric is the dashboard's counter, queried by overloadQueries.
const overloadMetric = "overload_requests_total"

// overloadQueries are the dashboard's queries, run in turn by one client.
var overloadQueries = []struct {
	name  string
	path  string // /api/v1/query or /api/v1/query_range over the last overloadHistory.
	query string
}{
	{"rate, instant", "/api/v1/query", "sum by (job) (rate(" + overloadMetric + "[5m]))"},
	{"rate, range 1h/15s", "/api/v1/query_range", "sum by (job) (rate(" + overloadMetric + "[5m]))"},
	{"count all series", "/api/v1/query", `count({__name__=~".+"})`},
}

// BenchmarkOverload_QueriesUnderIngest runs 3 ingesters (RF 3), a
// distributor and a querier as processes with their default limits, loads
// an hour of a dashboard's series, creates the writers' series, and measures the dashboard's queries
// (overloadQueries, one client, back to back) first alone, then while
// overloadWriters remote-write senders push as fast as they are answered
// and resend what is answered 429 or 5xx. It reports query latency in
// both phases, the samples acknowledged per second, the pushes answered
// 429 and 5xx, query errors, and the CPU each role used in each phase, to
// say where queries wait when ingest saturates the machine (issue 13).
func BenchmarkOverload_QueriesUnderIngest(b *testing.B) {
	if testing.Short() {
		b.Skip("multi-process overload benchmark")
	}
	c := startSoakCluster(b)
	loaded := time.Now()
	loadOverloadHistory(b, c.dist.http, loaded)
	b.Logf("loaded %d series x %d samples in %s", overloadSeries, int(overloadHistory/overloadStep), time.Since(loaded).Round(time.Millisecond))

	// The writers' series exist before the quiet phase, so that both
	// phases query the same series: count({__name__=~".+"}) counts theirs
	// too, and in the busy phase only their new samples are the change.
	var pushes overloadPushes
	writers := make([]*overloadWriter, overloadWriters)
	for i := range writers {
		writers[i] = newOverloadWriter(b, i, c.dist.http, &pushes)
	}
	primed := time.Now()
	var prime sync.WaitGroup
	slots := make(chan struct{}, 16)
	for _, w := range writers {
		slots <- struct{}{}
		prime.Go(func() {
			defer func() { <-slots }()
			w.prime()
		})
	}
	prime.Wait()
	waitPushesSettled(b, c.dist)
	b.Logf("created %d writers' series x %d in %s", overloadWriters, overloadBatch, time.Since(primed).Round(time.Millisecond))
	pushes = overloadPushes{}

	procs := append([]*process{c.q, c.dist}, c.ingesters...)
	b.ResetTimer()

	// Phase 1: the dashboard alone.
	quietStats := startOverloadStats(procs)
	quiet := runOverloadQueries(c.q, time.Now().Add(time.Duration(b.N)*overloadQuiet))
	quietStats.end(procs)

	// Phase 2: the same queries while the writers push.
	busyStats := startOverloadStats(procs)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	writing := time.Now()
	for _, w := range writers {
		wg.Go(func() { w.run(ctx) })
	}
	inflight := &overloadGaugeSampler{p: c.dist, name: "census_distributor_inflight_push_requests"}
	wg.Go(func() { inflight.run(ctx, 500*time.Millisecond) })
	limit := &overloadGaugeSampler{p: c.dist, name: "census_distributor_inflight_push_requests_limit"}
	wg.Go(func() { limit.run(ctx, 500*time.Millisecond) })
	time.Sleep(overloadRamp)
	busy := runOverloadQueries(c.q, time.Now().Add(time.Duration(b.N)*overloadBusy))
	busyStats.end(procs)
	cancel()
	wg.Wait()
	written := time.Since(writing)
	b.StopTimer()
	c.stopAll()

	ms := func(ds []time.Duration, p float64) float64 {
		return float64(percentile(ds, p)) / float64(time.Millisecond)
	}
	quietAll, busyAll := quiet.latencies(-1), busy.latencies(-1)
	ratio := 0.0
	if p := ms(quietAll, 0.5); p > 0 {
		ratio = ms(busyAll, 0.5) / p
	}
	samplesPerSec := float64(pushes.ok.Load()*overloadBatch) / written.Seconds()
	b.ReportMetric(ms(quietAll, 0.5), "query-p50-quiet-ms")
	b.ReportMetric(ms(quietAll, 0.99), "query-p99-quiet-ms")
	b.ReportMetric(ms(busyAll, 0.5), "query-p50-overload-ms")
	b.ReportMetric(ms(busyAll, 0.99), "query-p99-overload-ms")
	b.ReportMetric(ratio, "query-p50-overload/quiet")
	b.ReportMetric(samplesPerSec, "samples/s-overload")
	b.ReportMetric(float64(pushes.ok.Load()), "pushes-2xx")
	b.ReportMetric(float64(pushes.throttled.Load()), "pushes-429")
	b.ReportMetric(float64(pushes.failed.Load()), "pushes-5xx")
	b.ReportMetric(float64(quiet.errors+busy.errors), "query-errors")

	var sb strings.Builder
	w := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "%d series x %s at %s loaded; quiet %s, then %d writers x %d series x 1 sample for %s (queries from %s in)\n",
		overloadSeries, overloadHistory, overloadStep, time.Duration(b.N)*overloadQuiet, overloadWriters, overloadBatch, written.Round(time.Millisecond), overloadRamp)
	fmt.Fprintf(w, "query\tphase\tcalls\terrors\tp50 ms\tp99 ms\tmax ms\n")
	for i := -1; i < len(overloadQueries); i++ {
		name := "all"
		if i >= 0 {
			name = overloadQueries[i].name
		}
		for _, ph := range []struct {
			name string
			r    *overloadQueryLog
		}{{"quiet", quiet}, {"overload", busy}} {
			ds := ph.r.latencies(i)
			fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%.1f\t%.1f\t%.1f\n", name, ph.name, len(ds), ph.r.errorsOf(i), ms(ds, 0.5), ms(ds, 0.99), ms(ds, 1))
		}
	}
	fmt.Fprintf(w, "pushes\t2xx %d\t429 %d\t5xx %d\tno answer %d\t%.0f samples/s acknowledged\n",
		pushes.ok.Load(), pushes.throttled.Load(), pushes.failed.Load(), pushes.other.Load(), samplesPerSec)
	fmt.Fprintf(w, "push latency (2xx)\tp50 %.1f ms\tp99 %.1f ms\n", ms(pushes.latencies(), 0.5), ms(pushes.latencies(), 0.99))
	fmt.Fprintf(w, "distributor pushes in flight\tmean %.0f\tmax %.0f\t(of --distributor.max-inflight-push-requests=256)\n", inflight.mean(), inflight.max)
	fmt.Fprintf(w, "distributor in-flight limit\tmean %.0f\tmin %.0f\t(--distributor.adaptive-push-limit)\n", limit.mean(), limit.min)
	fmt.Fprintf(w, "CPU cores used\tphase\tquerier\tdistributor\tingesters (sum)\tbenchmark (writers, client)\n")
	for _, ph := range []struct {
		name string
		s    *overloadStats
	}{{"quiet", quietStats}, {"overload", busyStats}} {
		fmt.Fprintf(w, "\t%s\t%.2f\t%.2f\t%.2f\t%.2f\n", ph.name, ph.s.cores(c.q), ph.s.cores(c.dist), ph.s.cores(c.ingesters...), ph.s.selfCores())
	}
	for _, ph := range []struct {
		name string
		s    *overloadStats
	}{{"quiet", quietStats}, {"overload", busyStats}} {
		fmt.Fprintf(w, "mean per call, %s\tquerier->ingester query_stream %.1f ms\tdistributor->ingester push %.1f ms\tingester throttled pushes %.0f\n",
			ph.name, ph.s.meanMS("stream"), ph.s.meanMS("push"), ph.s.delta("throttled"))
	}
	_ = w.Flush()
	b.Logf("\n%s", sb.String())
	for _, e := range append(quiet.firstErrors, busy.firstErrors...) {
		b.Logf("query error: %s", e)
	}
	for _, e := range pushes.examples() {
		b.Logf("push error: %s", e)
	}
}

// loadOverloadHistory pushes overloadHistory of samples up to end for the
// dashboard's series, in time order: windows of 20 steps, each in
// overloadSeries/overloadBatch requests sent at once, so every series'
// samples arrive in order and within the head's appendable range.
func loadOverloadHistory(b *testing.B, addr string, end time.Time) {
	steps := int(overloadHistory / overloadStep)
	last := end.Truncate(overloadStep).UnixMilli()
	first := last - int64(steps-1)*overloadStep.Milliseconds()
	const window = 20
	clients := make([]remote.WriteClient, overloadSeries/overloadBatch)
	for i := range clients {
		clients[i] = newOverloadClient(b, fmt.Sprintf("history-%d", i), addr)
	}
	for w := 0; w < steps; w += window {
		var wg sync.WaitGroup
		errs := make([]error, len(clients))
		for ci, cl := range clients {
			wg.Go(func() {
				req := &prompb.WriteRequest{}
				for k := ci * overloadBatch; k < (ci+1)*overloadBatch; k++ {
					ts := prompb.TimeSeries{Labels: []prompb.Label{
						{Name: "__name__", Value: overloadMetric},
						{Name: "instance", Value: fmt.Sprintf("host-%d", k)},
						{Name: "job", Value: fmt.Sprintf("job-%d", k%overloadJobs)},
					}}
					for s := w; s < min(w+window, steps); s++ {
						t := first + int64(s)*overloadStep.Milliseconds()
						ts.Samples = append(ts.Samples, prompb.Sample{Timestamp: t, Value: float64(s * (1 + k%7))})
					}
					req.Timeseries = append(req.Timeseries, ts)
				}
				raw, err := req.Marshal()
				if err != nil {
					errs[ci] = err
					return
				}
				body := snappy.Encode(nil, raw)
				for attempt := 0; attempt < 10; attempt++ {
					if _, errs[ci] = cl.Store(context.Background(), body, attempt); errs[ci] == nil {
						return
					}
					time.Sleep(100 * time.Millisecond)
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			b.Fatalf("load the history: %v", err)
		}
	}
}

// waitPushesSettled waits until the distributor's pushes to ingesters
// have stopped: those to the replica past the quorum go on after the
// answer, and would be counted in the quiet phase.
func waitPushesSettled(b *testing.B, dist *process) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	last, still := -1.0, 0
	for still < 2 {
		if time.Now().After(deadline) {
			b.Fatalf("the distributor still pushes to ingesters 30s after the writers' series were acknowledged")
		}
		time.Sleep(500 * time.Millisecond)
		n, err := dist.metric("census_distributor_ingester_push_duration_seconds_count", "code", "OK")
		if err != nil {
			b.Fatal(err)
		}
		if n == last {
			still++
		} else {
			last, still = n, 0
		}
	}
}

// newOverloadClient is Prometheus' remote-write client of the distributor
// at addr, with Prometheus' default remote_timeout (30s) and
// retry_on_http_429, as senders that back off from a 429 set it.
func newOverloadClient(b *testing.B, name, addr string) remote.WriteClient {
	c, err := remote.NewWriteClient(name, &remote.ClientConfig{
		URL:              &config_util.URL{URL: &url.URL{Scheme: "http", Host: addr, Path: "/api/v1/push"}},
		Timeout:          model.Duration(30 * time.Second),
		WriteProtoMsg:    remoteapi.WriteV1MessageType,
		RetryOnRateLimit: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// retryAfterTransport notes the Retry-After of the last response, which
// Prometheus' client reads but keeps in an unexported field of its error.
// Like the writer that owns it, it is used by one goroutine at a time.
type retryAfterTransport struct {
	next       http.RoundTripper
	retryAfter time.Duration // Of the last response; 0 without one.
}

func (t *retryAfterTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(r)
	t.retryAfter = 0
	if err == nil {
		if sec, convErr := strconv.Atoi(resp.Header.Get("Retry-After")); convErr == nil && sec > 0 {
			t.retryAfter = time.Duration(sec) * time.Second
		}
	}
	return resp, err
}

// overloadPushes counts the answers to every writer's pushes, attempt by
// attempt. Writers add to it concurrently; read it once they returned.
type overloadPushes struct {
	ok, throttled, failed, other atomic.Int64

	mtx       sync.Mutex // Guards the fields below.
	latency   []time.Duration
	firstErrs []string
}

func (p *overloadPushes) record(d time.Duration, err error) {
	var code string
	if err != nil {
		if m := httpStatus.FindStringSubmatch(err.Error()); m != nil {
			code = m[1]
		}
	}
	switch {
	case err == nil:
		p.ok.Add(1)
	case code == "429":
		p.throttled.Add(1)
	case strings.HasPrefix(code, "5"):
		p.failed.Add(1)
	default:
		p.other.Add(1)
	}
	p.mtx.Lock()
	defer p.mtx.Unlock()
	if err == nil {
		p.latency = append(p.latency, d)
	} else if len(p.firstErrs) < 5 {
		p.firstErrs = append(p.firstErrs, err.Error())
	}
}

func (p *overloadPushes) latencies() []time.Duration {
	p.mtx.Lock()
	defer p.mtx.Unlock()
	return p.latency
}

func (p *overloadPushes) examples() []string {
	p.mtx.Lock()
	defer p.mtx.Unlock()
	return p.firstErrs
}

// overloadWriter is one remote-write sender with overloadBatch series of
// its own, pushing one sample of each per request.
type overloadWriter struct {
	b      *testing.B
	client remote.WriteClient
	answer *retryAfterTransport // The client's, for the Retry-After of its answers.
	req    *prompb.WriteRequest
	counts *overloadPushes
	last   int64 // Timestamp of the last batch, in milliseconds.
}

func newOverloadWriter(b *testing.B, id int, addr string, counts *overloadPushes) *overloadWriter {
	w := &overloadWriter{b: b, client: newOverloadClient(b, fmt.Sprintf("overload-%d", id), addr), req: &prompb.WriteRequest{}, counts: counts}
	hc := w.client.(*remote.Client).Client
	w.answer = &retryAfterTransport{next: hc.Transport}
	hc.Transport = w.answer
	for s := range overloadBatch {
		w.req.Timeseries = append(w.req.Timeseries, prompb.TimeSeries{
			Labels: []prompb.Label{
				{Name: "__name__", Value: "overload_ingest"},
				{Name: "series", Value: strconv.Itoa(s)},
				{Name: "writer", Value: strconv.Itoa(id)},
			},
			Samples: []prompb.Sample{{}},
		})
	}
	return w
}

// prime pushes one batch, which creates the writer's series, and resends
// it until it is acknowledged.
func (w *overloadWriter) prime() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w.push(ctx, 0)
	if ctx.Err() != nil {
		w.b.Errorf("create the series of a writer: not acknowledged within a minute")
	}
}

// run pushes batch after batch until ctx ends, each at a timestamp past the
// last. A batch answered 429 or 5xx (or not answered) is resent after a
// backoff, or its Retry-After, before the next one, as Prometheus' queue
// manager does with retry_on_http_429; one
// answered another 4xx is dropped, as Prometheus drops it.
func (w *overloadWriter) run(ctx context.Context) {
	for n := 1; ctx.Err() == nil; n++ {
		w.push(ctx, n)
	}
}

// push sends batch n, with every sample at a timestamp past the last
// batch's, and resends it until it is answered 2xx or another 4xx than 429,
// or ctx ends.
func (w *overloadWriter) push(ctx context.Context, n int) {
	ts := max(time.Now().UnixMilli(), w.last+1)
	w.last = ts
	for i := range w.req.Timeseries {
		w.req.Timeseries[i].Samples[0] = prompb.Sample{Timestamp: ts, Value: float64(n)}
	}
	raw, err := w.req.Marshal()
	if err != nil {
		w.b.Error(err)
		return
	}
	body := snappy.Encode(nil, raw)
	backoff := overloadMinBackoff
	for attempt := 0; ctx.Err() == nil; attempt++ {
		began := time.Now()
		_, err := w.client.Store(ctx, body, attempt)
		if ctx.Err() != nil {
			return // Ended by the phase, not answered.
		}
		w.counts.record(time.Since(began), err)
		if err == nil {
			return
		}
		if m := httpStatus.FindStringSubmatch(err.Error()); m != nil && m[1][0] == '4' && m[1] != "429" {
			return
		}
		// As Prometheus' queue manager: a Retry-After replaces the
		// backoff, and the next backoff doubles what was waited.
		sleep := backoff
		if w.answer.retryAfter > 0 {
			sleep = w.answer.retryAfter
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(sleep):
		}
		backoff = min(2*sleep, overloadMaxBackoff)
	}
}

// overloadQueryLog is one phase's dashboard queries.
type overloadQueryLog struct {
	kind        []int // Index in overloadQueries.
	took        []time.Duration
	failed      []bool
	errors      int
	firstErrors []string
}

// latencies returns the latencies of the queries of kind i, or of all
// for -1, failed ones included: a dashboard waits for those too.
func (l *overloadQueryLog) latencies(i int) []time.Duration {
	var out []time.Duration
	for j, k := range l.kind {
		if i < 0 || k == i {
			out = append(out, l.took[j])
		}
	}
	return out
}

func (l *overloadQueryLog) errorsOf(i int) int {
	n := 0
	for j, k := range l.kind {
		if (i < 0 || k == i) && l.failed[j] {
			n++
		}
	}
	return n
}

// runOverloadQueries runs overloadQueries in turn, each once the one
// before has answered, until deadline; the query in flight then finishes.
func runOverloadQueries(q *process, deadline time.Time) *overloadQueryLog {
	l := &overloadQueryLog{}
	for n := 0; time.Now().Before(deadline); n++ {
		i := n % len(overloadQueries)
		qq := overloadQueries[i]
		now := time.Now()
		sec := func(t time.Time) string { return strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', 3, 64) }
		params := url.Values{"query": {qq.query}}
		if qq.path == "/api/v1/query_range" {
			params.Set("start", sec(now.Add(-overloadHistory)))
			params.Set("end", sec(now))
			params.Set("step", strconv.Itoa(int(overloadStep.Seconds())))
		} else {
			params.Set("time", sec(now))
		}
		resp, err := q.api(qq.path, params)
		l.kind = append(l.kind, i)
		l.took = append(l.took, time.Since(now))
		if err == nil && resp.Status != "success" {
			err = fmt.Errorf("status %q: %s", resp.Status, resp.Error)
		}
		l.failed = append(l.failed, err != nil)
		if err != nil {
			l.errors++
			if len(l.firstErrors) < 5 {
				l.firstErrors = append(l.firstErrors, fmt.Sprintf("%s: %v", qq.name, err))
			}
		}
	}
	return l
}

// overloadGaugeSampler reads a gauge of p every interval and keeps its
// mean, minimum and maximum. Read them once run has returned.
type overloadGaugeSampler struct {
	p    *process
	name string

	sum, max, min float64
	n             int
}

func (s *overloadGaugeSampler) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if v, err := s.p.metric(s.name); err == nil {
			if s.n == 0 || v < s.min {
				s.min = v
			}
			s.sum += v
			s.max = max(s.max, v)
			s.n++
		}
	}
}

func (s *overloadGaugeSampler) mean() float64 {
	if s.n == 0 {
		return 0
	}
	return s.sum / float64(s.n)
}

// overloadStats is what the processes used during one phase: CPU seconds
// by PID, of the benchmark too, and the counters of the cluster that say
// where a call's time went.
type overloadStats struct {
	began, ended      time.Time
	cpu0, cpu1        map[int]float64 // CPU seconds by PID at the start and the end.
	self0, self1      float64
	counter0, counter map[string]float64
}

// overloadCounters are the counters read at both ends of a phase, by a
// short name.
var overloadCounters = map[string]struct {
	role   string
	name   string
	labels []string
}{
	"stream_sum":   {"querier", "census_querier_ingester_request_duration_seconds_sum", []string{"operation", "query_stream"}},
	"stream_count": {"querier", "census_querier_ingester_request_duration_seconds_count", []string{"operation", "query_stream"}},
	"push_sum":     {"distributor", "census_distributor_ingester_push_duration_seconds_sum", []string{"code", "OK"}},
	"push_count":   {"distributor", "census_distributor_ingester_push_duration_seconds_count", []string{"code", "OK"}},
	"throttled":    {"ingester", "census_ingester_throttled_pushes_total", nil},
}

func startOverloadStats(procs []*process) *overloadStats {
	s := &overloadStats{began: time.Now()}
	s.cpu0, s.self0, s.counter0 = overloadSnapshot(procs)
	return s
}

func (s *overloadStats) end(procs []*process) {
	s.ended = time.Now()
	s.cpu1, s.self1, s.counter = overloadSnapshot(procs)
}

// overloadSnapshot reads the CPU seconds of procs and of the benchmark,
// and overloadCounters summed over the processes of each one's role.
func overloadSnapshot(procs []*process) (map[int]float64, float64, map[string]float64) {
	cpu := map[int]float64{}
	for _, p := range procs {
		cpu[p.cmd.Process.Pid], _ = cpuSeconds(strconv.Itoa(p.cmd.Process.Pid))
	}
	self, _ := cpuSeconds("self")
	counters := map[string]float64{}
	for short, c := range overloadCounters {
		for _, p := range procs {
			if !strings.HasPrefix(p.name, c.role) {
				continue
			}
			if v, err := p.metric(c.name, c.labels...); err == nil {
				counters[short] += v
			}
		}
	}
	return cpu, self, counters
}

// cores returns the CPU the processes ps used during the phase, in cores.
func (s *overloadStats) cores(ps ...*process) float64 {
	var sec float64
	for _, p := range ps {
		pid := p.cmd.Process.Pid
		sec += s.cpu1[pid] - s.cpu0[pid]
	}
	return sec / s.ended.Sub(s.began).Seconds()
}

func (s *overloadStats) selfCores() float64 {
	return (s.self1 - s.self0) / s.ended.Sub(s.began).Seconds()
}

func (s *overloadStats) delta(short string) float64 { return s.counter[short] - s.counter0[short] }

// meanMS returns the mean of the histogram prefix (stream or push) over
// the phase, in milliseconds.
func (s *overloadStats) meanMS(prefix string) float64 {
	n := s.delta(prefix + "_count")
	if n == 0 {
		return 0
	}
	return s.delta(prefix+"_sum") / n * 1000
}

// cpuSeconds returns the user and system CPU time of /proc/<pid>, at
// Linux' USER_HZ of 100 ticks a second.
func cpuSeconds(pid string) (float64, error) {
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, err
	}
	// The fields after the command, which is in parentheses and may hold
	// spaces: state is the first, utime and stime the 12th and 13th.
	_, rest, ok := strings.Cut(string(stat), ") ")
	fields := strings.Fields(rest)
	if !ok || len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%s/stat: %q", pid, stat)
	}
	utime, err1 := strconv.ParseFloat(fields[11], 64)
	stime, err2 := strconv.ParseFloat(fields[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%s/stat: %w", pid, err)
	}
	return (utime + stime) / 100, nil
}
