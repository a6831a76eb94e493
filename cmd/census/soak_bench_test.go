package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
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

// The soak's load: soakPushers goroutines, each writing its own
// soakSeriesPerPusher series, one sample each every soakPushInterval, and
// one goroutine querying every soakQueryInterval.
const (
	soakPushers         = 4
	soakSeriesPerPusher = 25
	soakPushInterval    = 100 * time.Millisecond
	soakQueryInterval   = 250 * time.Millisecond
	// soakRetryFor is how long a pusher resends a batch that failed with
	// a retryable error (5xx, no answer) before it gives the batch up, as
	// Prometheus' queue manager resends until it succeeds.
	soakRetryFor = time.Minute
)

// soakValue is the value of series k at timestamp ts: every sample is
// checkable on its own.
func soakValue(k int, ts int64) float64 {
	return float64(k)*1e9 + float64(ts%1e9)
}

// BenchmarkSoak_Faults runs 3 ingesters (RF 3, each on its own storage), a
// distributor and a querier as processes, under remote write from several
// pushers and a stream of instant and range queries, for
// CENSUS_SOAK_DURATION (3m; b.N times that), while one ingester at a time
// is hung (SIGSTOP, then SIGCONT), killed (SIGKILL) or stopped (SIGTERM)
// and restarted on its data with its ID, on a schedule drawn from
// CENSUS_SOAK_SEED. With every ingester back it reads each series through
// the querier and checks that every acknowledged sample is there with its
// value. It reports acknowledged samples lost and pushes answered 4xx
// (both must be 0), push and query latency inside and outside the fault
// windows, and the peak RSS (VmHWM) of each role.
func BenchmarkSoak_Faults(b *testing.B) {
	if testing.Short() {
		b.Skip("multi-process soak")
	}
	duration := 3 * time.Minute
	if s := os.Getenv("CENSUS_SOAK_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			b.Fatalf("CENSUS_SOAK_DURATION=%q: want a positive duration (%v)", s, err)
		}
		duration = d
	}
	seed := int64(1)
	if s := os.Getenv("CENSUS_SOAK_SEED"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			b.Fatalf("CENSUS_SOAK_SEED=%q: %v", s, err)
		}
		seed = n
	}

	c := startSoakCluster(b)
	log := &soakLog{began: time.Now()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	pushers := make([]*soakPusher, soakPushers)
	for i := range pushers {
		pushers[i] = newSoakPusher(b, i, c.dist.http, log)
		wg.Go(func() { pushers[i].run(stop) })
	}
	queries := &soakQuerier{q: c.q, log: log}
	wg.Go(func() { queries.run(stop) })

	b.ResetTimer()
	c.injectFaults(rand.New(rand.NewSource(seed)), time.Duration(b.N)*duration, log)
	close(stop)
	wg.Wait()
	b.StopTimer()

	// Every sample acknowledged, through the querier, with every ingester
	// back.
	var acked, lost, unexpected int
	var lostExamples []string
	firstTS, lastTS := int64(math.MaxInt64), int64(0)
	for _, p := range pushers {
		if len(p.attempted) > 0 {
			firstTS, lastTS = min(firstTS, p.attempted[0]), max(lastTS, p.attempted[len(p.attempted)-1])
		}
	}
	for _, p := range pushers {
		attempted := map[int64]bool{}
		for _, ts := range p.attempted {
			attempted[ts] = true
		}
		for _, k := range p.series {
			got, err := c.seriesSamples(k, firstTS, lastTS)
			if err != nil {
				b.Errorf("read series %d: %v", k, err)
			}
			acked += len(p.acked)
			for _, ts := range p.acked {
				v, ok := got[ts]
				if !ok || v != soakValue(k, ts) {
					lost++
					if len(lostExamples) < 10 {
						lostExamples = append(lostExamples, fmt.Sprintf("series %d at %d: got %v (found %v), want %v", k, ts, v, ok, soakValue(k, ts)))
					}
				}
			}
			for ts, v := range got {
				if !attempted[ts] || v != soakValue(k, ts) {
					unexpected++
				}
			}
		}
	}

	var refused, failed, retries int
	var refusedExamples []string
	for _, p := range pushers {
		refused += len(p.refused)
		failed += p.failed
		retries += p.retries
		for _, e := range p.refused {
			if len(refusedExamples) < 5 {
				refusedExamples = append(refusedExamples, e)
			}
		}
	}
	c.stopAll()

	pushFault, pushQuiet := log.split(log.pushes)
	queryFault, queryQuiet := log.split(log.queries)
	ms := func(ds []time.Duration, p float64) float64 {
		return float64(percentile(ds, p)) / float64(time.Millisecond)
	}
	mb := func(kb int64) float64 { return float64(kb) / 1024 }
	b.ReportMetric(float64(acked), "acked-samples")
	b.ReportMetric(float64(lost), "lost-samples")
	b.ReportMetric(float64(unexpected), "unexpected-samples")
	b.ReportMetric(float64(refused), "pushes-4xx")
	b.ReportMetric(float64(failed), "pushes-given-up")
	b.ReportMetric(float64(retries), "push-retries")
	b.ReportMetric(float64(len(log.faults)), "faults")
	b.ReportMetric(ms(pushQuiet, 0.5), "push-p50-quiet-ms")
	b.ReportMetric(ms(pushQuiet, 0.99), "push-p99-quiet-ms")
	b.ReportMetric(ms(pushFault, 0.5), "push-p50-fault-ms")
	b.ReportMetric(ms(pushFault, 0.99), "push-p99-fault-ms")
	b.ReportMetric(ms(queryQuiet, 0.5), "query-p50-quiet-ms")
	b.ReportMetric(ms(queryQuiet, 0.99), "query-p99-quiet-ms")
	b.ReportMetric(ms(queryFault, 0.5), "query-p50-fault-ms")
	b.ReportMetric(ms(queryFault, 0.99), "query-p99-fault-ms")
	b.ReportMetric(float64(queries.errors), "query-errors")
	b.ReportMetric(mb(c.rss["ingester"]), "rss-ingester-MB")
	b.ReportMetric(mb(c.rss["distributor"]), "rss-distributor-MB")
	b.ReportMetric(mb(c.rss["querier"]), "rss-querier-MB")

	var sb strings.Builder
	w := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "soak of %s, seed %d: %d pushers x %d series every %s, a query every %s\n", time.Duration(b.N)*duration, seed, soakPushers, soakSeriesPerPusher, soakPushInterval, soakQueryInterval)
	for _, f := range log.faults {
		fmt.Fprintf(w, "fault\t%s\tat %s\tback in the ring %s after the SIGCONT or restart\n", f.name, f.start.Sub(log.began).Round(time.Millisecond), f.end.Sub(f.back).Round(time.Millisecond))
	}
	fmt.Fprintf(w, "samples\tacknowledged %d\tlost %d\tunexpected %d\n", acked, lost, unexpected)
	fmt.Fprintf(w, "pushes\t4xx %d\tgiven up %d\tretries %d\n", refused, failed, retries)
	row := func(what string, ds []time.Duration) {
		fmt.Fprintf(w, "%s\t%d calls\tp50 %.1f ms\tp99 %.1f ms\tmax %.1f ms\n", what, len(ds), ms(ds, 0.5), ms(ds, 0.99), ms(ds, 1))
	}
	row("push, quiet", pushQuiet)
	row("push, fault", pushFault)
	row("query, quiet", queryQuiet)
	row("query, fault", queryFault)
	fmt.Fprintf(w, "queries\terrors %d\twith warnings %d\n", queries.errors, queries.warned)
	fmt.Fprintf(w, "peak RSS\tingester %.0f MB\tdistributor %.0f MB\tquerier %.0f MB\n", mb(c.rss["ingester"]), mb(c.rss["distributor"]), mb(c.rss["querier"]))
	_ = w.Flush()
	b.Logf("\n%s", sb.String())
	for _, e := range queries.firstErrors {
		b.Logf("query error: %s", e)
	}

	if lost > 0 {
		b.Errorf("%d of %d acknowledged samples are not queryable as pushed, e.g. %s", lost, acked, strings.Join(lostExamples, "; "))
	}
	if unexpected > 0 {
		b.Errorf("%d samples queried were never pushed or have another value", unexpected)
	}
	if refused > 0 {
		b.Errorf("%d pushes of valid samples were answered 4xx, so a sender drops them: %s", refused, strings.Join(refusedExamples, "; "))
	}
}

// soakCluster is the soak's processes. Only the benchmark's goroutine
// replaces an ingester; the load uses the distributor and the querier.
type soakCluster struct {
	b         *testing.B
	dirs      []string
	ingesters []*process
	dist, q   *process
	rss       map[string]int64 // Peak VmHWM in kB by role.
}

func startSoakCluster(b *testing.B) *soakCluster {
	c := &soakCluster{b: b, dirs: make([]string, 3), ingesters: make([]*process, 3), rss: map[string]int64{}}
	for i := range c.ingesters {
		c.dirs[i] = filepath.Join(b.TempDir(), "data")
		c.ingesters[i] = c.startIngester(i)
	}
	c.dist = startRole(b, "distributor", roleConfig{id: "distributor", join: c.ingesters[0], rf: 3})
	c.q = startRole(b, "querier", roleConfig{id: "querier", join: c.ingesters[0], rf: 3})
	for _, p := range append(slices.Clone(c.ingesters), c.dist, c.q) {
		p.waitReady(30 * time.Second)
	}
	for i := range c.ingesters {
		c.waitRecovered(i)
	}
	return c
}

// startIngester starts ingester i on its storage, with its ID, joining
// another ingester (none at the first start of ingester 0).
func (c *soakCluster) startIngester(i int) *process {
	cfg := roleConfig{id: fmt.Sprintf("ingester-%d", i), rf: 3, storage: c.dirs[i]}
	for j := 1; j < len(c.ingesters) && cfg.join == nil; j++ {
		cfg.join = c.ingesters[(i+j)%len(c.ingesters)]
	}
	return startRole(c.b, "ingester", cfg)
}

// waitRecovered waits until ingester i is ready and both the distributor
// and the querier see it ACTIVE and healthy at its current address.
func (c *soakCluster) waitRecovered(i int) {
	c.b.Helper()
	ing := c.ingesters[i]
	ing.waitReady(60 * time.Second)
	deadline := time.Now().Add(60 * time.Second)
	for _, p := range []*process{c.dist, c.q} {
		for {
			st, err := ringStatus(p)
			inst, ok := st[ing.name]
			if err == nil && ok && inst.State.String() == "ACTIVE" && inst.Healthy && inst.Addr == ing.grpc {
				break
			}
			if time.Now().After(deadline) {
				c.b.Fatalf("%s does not see %s ACTIVE at %s within 60s: %+v (%v)", p.name, ing.name, ing.grpc, inst, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// recordRSS keeps the peak resident set size of p, read before it stops.
func (c *soakCluster) recordRSS(p *process, role string) {
	kb, err := peakRSS(p.cmd.Process.Pid)
	if err != nil {
		c.b.Logf("peak RSS of %s: %v", p.name, err)
		return
	}
	c.rss[role] = max(c.rss[role], kb)
}

// injectFaults runs faults on one ingester at a time, each after a quiet
// while, until total has passed and the last one has recovered.
func (c *soakCluster) injectFaults(rng *rand.Rand, total time.Duration, log *soakLog) {
	end := time.Now().Add(total)
	var kinds []int // The kinds of fault left in this round of all three.
	for {
		if len(kinds) == 0 {
			kinds = rng.Perm(3)
		}
		kind := kinds[0]
		kinds = kinds[1:]
		quiet := 5*time.Second + time.Duration(rng.Int63n(int64(10*time.Second)))
		i := rng.Intn(len(c.ingesters))
		down := 2*time.Second + time.Duration(rng.Int63n(int64(4*time.Second)))
		if time.Now().Add(quiet).After(end) {
			time.Sleep(time.Until(end))
			return
		}
		time.Sleep(quiet)

		ing := c.ingesters[i]
		f := soakFault{start: time.Now()}
		switch kind {
		case 0:
			f.name = fmt.Sprintf("SIGSTOP %s for %s", ing.name, down.Round(time.Millisecond))
			if err := ing.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
				c.b.Fatalf("SIGSTOP %s: %v", ing.name, err)
			}
			time.Sleep(down)
			f.back = time.Now()
			if err := ing.cmd.Process.Signal(syscall.SIGCONT); err != nil {
				c.b.Fatalf("SIGCONT %s: %v", ing.name, err)
			}
		case 1:
			f.name = fmt.Sprintf("SIGKILL %s, restart after %s", ing.name, down.Round(time.Millisecond))
			c.recordRSS(ing, "ingester")
			ing.kill()
			time.Sleep(down)
			f.back = time.Now()
			c.ingesters[i] = c.startIngester(i)
		case 2:
			f.name = fmt.Sprintf("SIGTERM %s, restart after %s", ing.name, down.Round(time.Millisecond))
			c.recordRSS(ing, "ingester")
			if err := ing.stop(60 * time.Second); err != nil {
				c.b.Errorf("clean stop of %s: %v", ing.name, err)
				ing.kill()
			}
			time.Sleep(down)
			f.back = time.Now()
			c.ingesters[i] = c.startIngester(i)
		}
		c.waitRecovered(i)
		f.end = time.Now()
		log.fault(f)
	}
}

// seriesSamples reads series k's samples in [from, to] through the
// querier with a range selector, by timestamp, retrying a failed read a
// few times.
func (c *soakCluster) seriesSamples(k int, from, to int64) (map[int64]float64, error) {
	params := url.Values{
		"query": {fmt.Sprintf(`soak_value{job="soak",series="%d"}[%ds]`, k, (to-from)/1000+2)},
		"time":  {fmt.Sprintf("%.3f", float64(to)/1000)},
	}
	var err error
	for range 3 {
		var resp apiResponse
		resp, err = c.q.api("/api/v1/query", params)
		if err != nil {
			time.Sleep(time.Second)
			continue
		}
		if len(resp.Warnings) > 0 {
			return nil, fmt.Errorf("answer with every ingester up warns %q", resp.Warnings)
		}
		var d queryData
		if err := json.Unmarshal(resp.Data, &d); err != nil {
			return nil, err
		}
		var mat []matrixSeries
		if err := json.Unmarshal(d.Result, &mat); err != nil {
			return nil, err
		}
		out := map[int64]float64{}
		for _, s := range mat {
			for _, pt := range s.Values {
				sec, _ := pt[0].(float64)
				str, _ := pt[1].(string)
				v, err := strconv.ParseFloat(str, 64)
				if err != nil {
					return nil, fmt.Errorf("value %v: %w", pt[1], err)
				}
				out[int64(math.Round(sec*1000))] = v
			}
		}
		return out, nil
	}
	return nil, err
}

// stopAll records every process' peak RSS and stops it with SIGTERM.
func (c *soakCluster) stopAll() {
	c.recordRSS(c.q, "querier")
	c.recordRSS(c.dist, "distributor")
	for _, ing := range c.ingesters {
		c.recordRSS(ing, "ingester")
	}
	for _, p := range append([]*process{c.q, c.dist}, c.ingesters...) {
		if err := p.stop(60 * time.Second); err != nil {
			c.b.Errorf("clean stop: %v", err)
		}
	}
}

// peakRSS returns VmHWM of process pid in kB.
func peakRSS(pid int) (int64, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// soakCall is one request's span.
type soakCall struct{ start, end time.Time }

// soakFault is one fault's window: from its signal until the ingester is
// ready again and seen ACTIVE by the distributor and the querier.
type soakFault struct {
	name       string
	start, end time.Time
	back       time.Time // When it was resumed or restarted.
}

// soakLog collects the spans of every push, query and fault.
type soakLog struct {
	began time.Time // When the load started; set before it starts.

	mtx     sync.Mutex // Guards the fields below.
	pushes  []soakCall
	queries []soakCall
	faults  []soakFault
}

func (l *soakLog) push(start time.Time) {
	l.mtx.Lock()
	defer l.mtx.Unlock()
	l.pushes = append(l.pushes, soakCall{start, time.Now()})
}

func (l *soakLog) query(start time.Time) {
	l.mtx.Lock()
	defer l.mtx.Unlock()
	l.queries = append(l.queries, soakCall{start, time.Now()})
}

func (l *soakLog) fault(f soakFault) {
	l.mtx.Lock()
	defer l.mtx.Unlock()
	l.faults = append(l.faults, f)
}

// split returns the latencies of the calls that overlap a fault window and
// of the others. Called once the load has stopped.
func (l *soakLog) split(calls []soakCall) (fault, quiet []time.Duration) {
	for _, c := range calls {
		in := false
		for _, f := range l.faults {
			if c.start.Before(f.end) && c.end.After(f.start) {
				in = true
				break
			}
		}
		if in {
			fault = append(fault, c.end.Sub(c.start))
		} else {
			quiet = append(quiet, c.end.Sub(c.start))
		}
	}
	return fault, quiet
}

// percentile returns the p-quantile (0..1) of ds by nearest rank, 0 for
// none.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[max(0, int(math.Ceil(p*float64(len(s))))-1)]
}

// httpStatus finds the status code in an error of Prometheus' remote-write
// client.
var httpStatus = regexp.MustCompile(`server returned HTTP status (\d{3})`)

// soakPusher writes its own series with Prometheus' remote-write client,
// one sample per series per push, all at one timestamp that grows with
// every push. Its fields are read once run has returned.
type soakPusher struct {
	b      *testing.B
	id     int
	series []int // Global series numbers.
	client remote.WriteClient
	log    *soakLog

	attempted []int64  // Timestamps pushed, ascending.
	acked     []int64  // Timestamps whose push answered 2xx.
	refused   []string // Errors of pushes answered 4xx.
	failed    int      // Pushes given up after soakRetryFor.
	retries   int      // Resends after a retryable error.
}

func newSoakPusher(b *testing.B, id int, addr string, log *soakLog) *soakPusher {
	c, err := remote.NewWriteClient(fmt.Sprintf("soak-%d", id), &remote.ClientConfig{
		URL:           &config_util.URL{URL: &url.URL{Scheme: "http", Host: addr, Path: "/api/v1/push"}},
		Timeout:       model.Duration(10 * time.Second),
		WriteProtoMsg: remoteapi.WriteV1MessageType,
	})
	if err != nil {
		b.Fatal(err)
	}
	p := &soakPusher{b: b, id: id, client: c, log: log}
	for s := range soakSeriesPerPusher {
		p.series = append(p.series, id*soakSeriesPerPusher+s)
	}
	return p
}

// run pushes every soakPushInterval until stop is closed, resending a
// batch that failed with a retryable error as Prometheus does: the next
// batch waits, so each series' samples arrive in order.
func (p *soakPusher) run(stop <-chan struct{}) {
	tick := time.NewTicker(soakPushInterval)
	defer tick.Stop()
	var last int64
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		ts := max(time.Now().UnixMilli(), last+1)
		last = ts
		req := &prompb.WriteRequest{}
		for _, k := range p.series {
			req.Timeseries = append(req.Timeseries, prompb.TimeSeries{
				Labels: []prompb.Label{
					{Name: "__name__", Value: "soak_value"},
					{Name: "job", Value: "soak"},
					{Name: "pusher", Value: strconv.Itoa(p.id)},
					{Name: "series", Value: strconv.Itoa(k)},
				},
				Samples: []prompb.Sample{{Timestamp: ts, Value: soakValue(k, ts)}},
			})
		}
		raw, err := req.Marshal()
		if err != nil {
			p.b.Error(err)
			return
		}
		body := snappy.Encode(nil, raw)
		p.attempted = append(p.attempted, ts)
		first := time.Now()
		for attempt := 0; ; attempt++ {
			began := time.Now()
			_, err := p.client.Store(context.Background(), body, attempt)
			p.log.push(began)
			if err == nil {
				p.acked = append(p.acked, ts)
				break
			}
			if m := httpStatus.FindStringSubmatch(err.Error()); m != nil && m[1][0] == '4' {
				// Not retried: Prometheus drops a batch answered 4xx.
				p.refused = append(p.refused, err.Error())
				break
			}
			if time.Since(first) > soakRetryFor {
				p.failed++
				break
			}
			p.retries++
			time.Sleep(min(100*time.Millisecond<<min(attempt, 4), time.Second))
		}
	}
}

// soakQuerier queries the pushed series through the querier, instant and
// range queries in turn, until stop is closed. Its counts are read once
// run has returned.
type soakQuerier struct {
	q   *process
	log *soakLog

	errors, warned int
	firstErrors    []string
}

func (s *soakQuerier) run(stop <-chan struct{}) {
	tick := time.NewTicker(soakQueryInterval)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		now := time.Now()
		var path string
		params := url.Values{}
		if n%2 == 0 {
			path = "/api/v1/query"
			params.Set("query", `sum by (pusher) (soak_value{job="soak"})`)
			params.Set("time", strconv.FormatFloat(float64(now.UnixMilli())/1000, 'f', 3, 64))
		} else {
			path = "/api/v1/query_range"
			params.Set("query", `sum by (pusher) (count_over_time(soak_value{job="soak"}[30s]))`)
			params.Set("start", strconv.FormatFloat(float64(now.Add(-2*time.Minute).UnixMilli())/1000, 'f', 3, 64))
			params.Set("end", strconv.FormatFloat(float64(now.UnixMilli())/1000, 'f', 3, 64))
			params.Set("step", "5")
		}
		resp, err := s.q.api(path, params)
		s.log.query(now)
		switch {
		case err != nil:
			s.errors++
			if len(s.firstErrors) < 5 {
				s.firstErrors = append(s.firstErrors, fmt.Sprintf("%s after the start: %v", now.Sub(s.log.began).Round(time.Millisecond), err))
			}
		case len(resp.Warnings) > 0:
			s.warned++
		}
	}
}
