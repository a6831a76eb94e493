package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/golang/snappy"
	"github.com/prometheus/prometheus/prompb"

	"github.com/census-metrics/census/ingester"
	"github.com/census-metrics/census/ring"
)

// The hand-off benchmark's data (issue 11): handOffBenchSeries series of
// one metric, spread over handOffBenchGroups values of label g, each with
// handOffBenchSamples samples handOffBenchStep apart, so that all of it
// sits in the heads. They are pushed handOffBenchBatch series to a
// remote-write request by handOffBenchSenders senders at once.
const (
	handOffBenchMetric    = "bench_handoff"
	handOffBenchSeries    = 1_000_000
	handOffBenchGroups    = 100
	handOffBenchSamples   = 4
	handOffBenchStep      = 15 * time.Second
	handOffBenchBatch     = 10_000
	handOffBenchSenders   = 4
	handOffBenchIngesters = 4
	// handOffBenchQuiet is how long the queries run before the
	// decommission, on the quiet cluster.
	handOffBenchQuiet = 15 * time.Second
	// handOffBenchPoll is how often GET /ingester/decommission is read:
	// the leaver exits moments after it reports handed-off.
	handOffBenchPoll = 20 * time.Millisecond
)

// handOffBenchQueries are run in turn by one client in both phases: two
// that read every series and one that reads a single series.
var handOffBenchQueries = []struct {
	name, query, byLabel string
}{
	{"count all", `count({__name__="` + handOffBenchMetric + `"})`, ""},
	{"sum by g", `sum by (g) (` + handOffBenchMetric + `)`, "g"},
	{"one series", handOffBenchMetric + `{s="4242"}`, "s"},
}

// BenchmarkHandOff_Decommission runs 4 ingesters at RF 3, a distributor
// and a querier as processes, loads handOffBenchSeries series, and
// decommissions ingester-3: every series it holds is split by its new
// owners and streamed to them (issue 11). It reports the hand-off's
// throughput, the time from POST /ingester/decommission until GET reports
// handed-off, and the latency of the same queries on the quiet cluster and
// during the hand-off; afterwards the 3 ingesters left must answer every
// series exactly once.
func BenchmarkHandOff_Decommission(b *testing.B) {
	if testing.Short() {
		b.Skip("multi-process hand-off benchmark")
	}
	ingesters, dist, q := startHandOffBenchCluster(b)
	leaver, targets := ingesters[handOffBenchIngesters-1], ingesters[:handOffBenchIngesters-1]

	loaded := time.Now()
	at := loadHandOffBenchSeries(b, dist.http, loaded)
	waitPushesSettled(b, dist)
	b.Logf("loaded %d series x %d samples through the distributor in %s", handOffBenchSeries, handOffBenchSamples, time.Since(loaded).Round(time.Millisecond))
	requireHandOffBenchAnswers(b, q, at, "before the decommission")

	procs := append([]*process{q, dist}, ingesters...)
	quietStats := startOverloadStats(procs)
	ctx, cancel := context.WithTimeout(context.Background(), handOffBenchQuiet)
	// A query over every series takes longer than the quiet phase here:
	// each query runs at least once, so each has a quiet latency.
	quiet := runHandOffBenchQueries(ctx, q, at, len(handOffBenchQueries))
	cancel()
	quietStats.end(procs)

	// The same queries while ingester-3 hands off, until it says it has.
	b.ResetTimer()
	busyStats := startOverloadStats(procs)
	ctx, cancel = context.WithCancel(context.Background())
	duringc := make(chan *overloadQueryLog, 1)
	go func() { duringc <- runHandOffBenchQueries(ctx, q, at, 0) }()
	began := time.Now()
	if _, err := leaver.call(http.MethodPost, "/ingester/decommission", nil); err != nil {
		b.Fatal(err)
	}
	res := waitHandedOff(b, leaver, targets, began)
	busyStats.end(procs)
	b.StopTimer()
	cancel()
	during := <-duringc

	waitHandOffBenchExit(b, leaver, 2*time.Minute)
	waitLeft(b, q, leaver.name)
	requireHandOffBenchAnswers(b, q, at, "after the decommission, on the 3 ingesters left")

	ms := func(ds []time.Duration, p float64) float64 {
		return float64(percentile(ds, p)) / float64(time.Millisecond)
	}
	ratio := func(busy, quiet float64) float64 {
		if quiet == 0 {
			return 0
		}
		return busy / quiet
	}
	quietAll, duringAll := quiet.latencies(-1), during.latencies(-1)
	sec := res.took.Seconds()
	b.ReportMetric(float64(res.series), "series-handed-off")
	b.ReportMetric(float64(res.bytes)/1e6, "MB-handed-off")
	b.ReportMetric(sec, "decommission-s")
	b.ReportMetric(float64(res.bytes)/1e6/sec, "MB/s")
	b.ReportMetric(float64(res.series)/sec, "series/s")
	b.ReportMetric(ms(quietAll, 0.5), "query-p50-quiet-ms")
	b.ReportMetric(ms(quietAll, 0.99), "query-p99-quiet-ms")
	b.ReportMetric(ms(duringAll, 0.5), "query-p50-handoff-ms")
	b.ReportMetric(ms(duringAll, 0.99), "query-p99-handoff-ms")
	b.ReportMetric(ratio(ms(duringAll, 0.5), ms(quietAll, 0.5)), "query-p50-ratio")
	b.ReportMetric(ratio(ms(duringAll, 0.99), ms(quietAll, 0.99)), "query-p99-ratio")
	b.ReportMetric(float64(quiet.errors+during.errors), "query-errors")

	var sb strings.Builder
	w := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "%d series x %d samples on %d ingesters at RF 3; %s decommissioned (progress read from %s)\n",
		handOffBenchSeries, handOffBenchSamples, handOffBenchIngesters, leaver.name, res.source)
	fmt.Fprintf(w, "hand-off\t%d series and %.1f MB acknowledged over %d targets in %s: %.1f MB/s, %.0f series/s; snapshot %d blocks, %.1f MB\n",
		res.series, float64(res.bytes)/1e6, len(res.perTarget), res.took.Round(time.Millisecond), float64(res.bytes)/1e6/sec, float64(res.series)/sec, res.blocks, float64(res.snapshotBytes)/1e6)
	if res.answered > 0 {
		fmt.Fprintf(w, "GET /ingester/decommission last answered handing-off %s after the POST; then the leaver stopped serving\n", res.answered.Round(time.Millisecond))
	}
	for _, id := range slices.Sorted(maps.Keys(res.perTarget)) {
		t := res.perTarget[id]
		fmt.Fprintf(w, "target %s\tseries sent %d\tacked %d\tMB sent %.1f\tacked %.1f\tfailures %d\n",
			id, t.SeriesSent, t.SeriesAcked, float64(t.BytesSent)/1e6, float64(t.BytesAcked)/1e6, t.Failures)
	}
	fmt.Fprintf(w, "query\tphase\tcalls\terrors\tp50 ms\tp99 ms\tmax ms\tp50 ratio\tp99 ratio\n")
	for i := -1; i < len(handOffBenchQueries); i++ {
		name := "all"
		if i >= 0 {
			name = handOffBenchQueries[i].name
		}
		qs, ds := quiet.latencies(i), during.latencies(i)
		fmt.Fprintf(w, "%s\tquiet\t%d\t%d\t%.1f\t%.1f\t%.1f\n", name, len(qs), quiet.errorsOf(i), ms(qs, 0.5), ms(qs, 0.99), ms(qs, 1))
		fmt.Fprintf(w, "%s\thand-off\t%d\t%d\t%.1f\t%.1f\t%.1f\t%.2f\t%.2f\n", name, len(ds), during.errorsOf(i), ms(ds, 0.5), ms(ds, 0.99), ms(ds, 1),
			ratio(ms(ds, 0.5), ms(qs, 0.5)), ratio(ms(ds, 0.99), ms(qs, 0.99)))
	}
	fmt.Fprintf(w, "CPU cores used\tphase\tquerier\tdistributor\t%s\ttargets (sum)\tbenchmark\n", leaver.name)
	for _, ph := range []struct {
		name string
		s    *overloadStats
	}{{"quiet", quietStats}, {"hand-off", busyStats}} {
		// The leaver's CPU time cannot be read once it exited.
		leaverCores := "n/a"
		if c := ph.s.cores(leaver); c >= 0 {
			leaverCores = fmt.Sprintf("%.2f", c)
		}
		fmt.Fprintf(w, "\t%s\t%.2f\t%.2f\t%s\t%.2f\t%.2f\n", ph.name, ph.s.cores(q), ph.s.cores(dist), leaverCores, ph.s.cores(targets...), ph.s.selfCores())
	}
	_ = w.Flush()
	b.Logf("\n%s", sb.String())
	for _, e := range append(quiet.firstErrors, during.firstErrors...) {
		b.Logf("query error: %s", e)
	}
	// The leaver's own account of its steps, and what each target took,
	// say where the time went; warnings and errors say what went wrong.
	for _, line := range strings.Split(leaver.log.String(), "\n") {
		if strings.Contains(line, "component=decommission") {
			b.Logf("%s: %s", leaver.name, line)
		}
	}
	for _, p := range targets {
		for _, line := range strings.Split(p.log.String(), "\n") {
			if strings.Contains(line, "Took a handed-off block") {
				b.Logf("%s: %s", p.name, line)
			}
		}
	}
	for _, p := range procs {
		n := 0
		for _, line := range strings.Split(p.log.String(), "\n") {
			if (strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR")) && n < 10 {
				b.Logf("%s: %s", p.name, line)
				n++
			}
		}
	}
}

// startHandOffBenchCluster runs handOffBenchIngesters ingesters at RF 3, a
// distributor and a querier. Every ingester holds three quarters of the
// series, all of one metric, more than the default
// --ingester.max-series-per-metric (a fifth of the derived max series)
// lets in; the count query fetches every series, and the querier's limit
// gets headroom so that the limit is not what is measured.
func startHandOffBenchCluster(b *testing.B) (ingesters []*process, dist, q *process) {
	b.Helper()
	for i := range handOffBenchIngesters {
		cfg := roleConfig{id: fmt.Sprintf("ingester-%d", i), rf: 3, flags: []string{
			"--ingester.max-series=" + strconv.Itoa(2*handOffBenchSeries),
			"--ingester.max-series-per-metric=" + strconv.Itoa(2*handOffBenchSeries),
		}}
		if i > 0 {
			cfg.join = ingesters[0]
		}
		ingesters = append(ingesters, startRole(b, "ingester", cfg))
	}
	dist = startRole(b, "distributor", roleConfig{id: "distributor", join: ingesters[0], rf: 3})
	q = startRole(b, "querier", roleConfig{id: "querier", join: ingesters[0], rf: 3, flags: []string{
		"--query.max-series=" + strconv.Itoa(2*handOffBenchSeries),
	}})
	for _, p := range append([]*process{dist, q}, ingesters...) {
		p.waitReady(30 * time.Second)
	}
	for _, p := range []*process{dist, q} {
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, err := ringStatus(p)
			if err == nil && len(st) == handOffBenchIngesters {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s does not see %d ingesters in the ring: %v %v", p.name, handOffBenchIngesters, st, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return ingesters, dist, q
}

// loadHandOffBenchSeries pushes every series, with all its samples in one
// request, through the distributor at addr, and returns the timestamp of
// the last samples, in milliseconds: the queries are evaluated there, so
// the lookback delta does not run out however long the benchmark takes.
// A push that fails (a 429 of the adaptive limit, a timeout of the loaded
// machine) is resent: its samples are the same, so a copy stored twice is
// a duplicate the TSDB drops.
func loadHandOffBenchSeries(b *testing.B, addr string, now time.Time) int64 {
	b.Helper()
	last := now.Truncate(handOffBenchStep).UnixMilli()
	first := last - (handOffBenchSamples-1)*handOffBenchStep.Milliseconds()
	var (
		next atomic.Int64 // The next batch to push.
		wg   sync.WaitGroup
		errs = make([]error, handOffBenchSenders)
	)
	for si := range handOffBenchSenders {
		c := newOverloadClient(b, fmt.Sprintf("handoff-load-%d", si), addr)
		wg.Go(func() {
			for {
				batch := int(next.Add(1) - 1)
				if batch*handOffBenchBatch >= handOffBenchSeries {
					return
				}
				req := &prompb.WriteRequest{Timeseries: make([]prompb.TimeSeries, 0, handOffBenchBatch)}
				for k := batch * handOffBenchBatch; k < min((batch+1)*handOffBenchBatch, handOffBenchSeries); k++ {
					ts := prompb.TimeSeries{Labels: []prompb.Label{
						{Name: "__name__", Value: handOffBenchMetric},
						{Name: "g", Value: strconv.Itoa(k % handOffBenchGroups)},
						{Name: "s", Value: strconv.Itoa(k)},
					}}
					for i := range handOffBenchSamples {
						ts.Samples = append(ts.Samples, prompb.Sample{Timestamp: first + int64(i)*handOffBenchStep.Milliseconds(), Value: 1})
					}
					req.Timeseries = append(req.Timeseries, ts)
				}
				raw, err := req.Marshal()
				if err != nil {
					errs[si] = err
					return
				}
				body := snappy.Encode(nil, raw)
				for attempt := 0; ; attempt++ {
					if _, err = c.Store(context.Background(), body, attempt); err == nil {
						break
					}
					if attempt == 20 {
						errs[si] = fmt.Errorf("push series %d to %d: %w", batch*handOffBenchBatch, (batch+1)*handOffBenchBatch, err)
						return
					}
					time.Sleep(200 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatalf("load the series: %v", err)
	}
	return last
}

// requireHandOffBenchAnswers checks that the cluster answers every series
// exactly once at ts: all of them counted, each group of g summing its
// series' samples once, and the one series found.
func requireHandOffBenchAnswers(b *testing.B, q *process, ts int64, where string) {
	b.Helper()
	count, _, err := queryInstant(q, handOffBenchQueries[0].query, "", ts)
	if err != nil {
		b.Fatalf("%s: %v", where, err)
	}
	if count[""] != handOffBenchSeries {
		b.Fatalf("%s: %s = %v, want %d", where, handOffBenchQueries[0].query, count, handOffBenchSeries)
	}
	sums, _, err := queryInstant(q, handOffBenchQueries[1].query, "g", ts)
	if err != nil {
		b.Fatalf("%s: %v", where, err)
	}
	if len(sums) != handOffBenchGroups {
		b.Fatalf("%s: %s has %d groups, want %d", where, handOffBenchQueries[1].query, len(sums), handOffBenchGroups)
	}
	for g, v := range sums {
		if v != handOffBenchSeries/handOffBenchGroups {
			b.Fatalf("%s: group g=%s sums to %v, want %d", where, g, v, handOffBenchSeries/handOffBenchGroups)
		}
	}
	one, _, err := queryInstant(q, handOffBenchQueries[2].query, "s", ts)
	if err != nil {
		b.Fatalf("%s: %v", where, err)
	}
	if len(one) != 1 || one["4242"] != 1 {
		b.Fatalf("%s: %s = %v, want the one series valued 1", where, handOffBenchQueries[2].query, one)
	}
}

// runHandOffBenchQueries runs handOffBenchQueries in turn at ts, each once
// the one before has answered, until ctx ends and at least atLeast
// queries ran; the query in flight then finishes.
func runHandOffBenchQueries(ctx context.Context, q *process, ts int64, atLeast int) *overloadQueryLog {
	l := &overloadQueryLog{}
	for n := 0; ctx.Err() == nil || n < atLeast; n++ {
		i := n % len(handOffBenchQueries)
		qq := handOffBenchQueries[i]
		began := time.Now()
		_, _, err := queryInstant(q, qq.query, qq.byLabel, ts)
		l.kind = append(l.kind, i)
		l.took = append(l.took, time.Since(began))
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

// handOffResult is what a decommission handed off, and where the figures
// came from.
type handOffResult struct {
	took          time.Duration
	series, bytes uint64 // Acknowledged, summed over the targets.
	blocks        int
	snapshotBytes int64
	perTarget     map[string]*ingester.TargetProgress
	source        string
	// answered is when, since the POST, a GET last answered handing-off,
	// if no GET saw handed-off.
	answered time.Duration
}

// Log lines that account for a hand-off when the leaver exited before a
// GET saw it handed off.
var (
	handedOffLine = regexp.MustCompile(`msg="Decommission handed every series off: leaving the ring" .*duration=(\S+) blocks=(\d+) bytes=(\d+)`)
	tookBlockLine = regexp.MustCompile(`msg="Took a handed-off block" .*from=(\S+) series=(\d+) bytes=(\d+)`)
)

// waitHandedOff reads GET /ingester/decommission of leaver every
// handOffBenchPoll until it reports handed-off, and returns its figures
// with the time since began. The leaver stops serving HTTP moments after
// it finished, so a GET may never see the state: once it is gone, the
// duration is its own (logged, from when it started, just after the
// POST), what each target acknowledged comes from the targets' logs, and
// what was sent and failed from the last GET.
func waitHandedOff(b *testing.B, leaver *process, targets []*process, began time.Time) handOffResult {
	b.Helper()
	deadline := time.Now().Add(15 * time.Minute)
	var last ingester.DecommissionProgress
	res := handOffResult{source: "GET /ingester/decommission"}
	for {
		select {
		case <-leaver.done:
			res.source = "the logs, and sent and failures as of the last GET: the leaver stopped serving before a GET saw handed-off"
			res.perTarget = last.Targets
			handOffFromLogs(b, leaver, targets, &res)
			return res
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s did not hand off within 15 minutes", leaver.name)
		}
		body, err := leaver.get("/ingester/decommission")
		took := time.Since(began)
		if err != nil {
			time.Sleep(handOffBenchPoll)
			continue
		}
		if err := json.Unmarshal(body, &last); err != nil {
			b.Fatalf("decode GET /ingester/decommission of %s: %v: %s", leaver.name, err, body)
		}
		if last.State != "handed-off" {
			res.answered = took
			time.Sleep(handOffBenchPoll)
			continue
		}
		res.took, res.blocks, res.snapshotBytes, res.perTarget, res.answered = took, last.Blocks, last.Bytes, last.Targets, 0
		for _, t := range last.Targets {
			res.series += t.SeriesAcked
			res.bytes += t.BytesAcked
		}
		return res
	}
}

// handOffFromLogs fills res with the duration and snapshot the leaver
// logged and with what each target logged it took from the leaver.
func handOffFromLogs(b *testing.B, leaver *process, targets []*process, res *handOffResult) {
	b.Helper()
	m := handedOffLine.FindStringSubmatch(leaver.log.String())
	if m == nil {
		b.Fatalf("%s exited without handing off:\n%s", leaver.name, leaver.log.String())
	}
	var err error
	if res.took, err = time.ParseDuration(m[1]); err != nil {
		b.Fatal(err)
	}
	res.blocks, _ = strconv.Atoi(m[2])
	res.snapshotBytes, _ = strconv.ParseInt(m[3], 10, 64)
	if res.perTarget == nil {
		res.perTarget = map[string]*ingester.TargetProgress{}
	}
	for _, p := range targets {
		t := res.perTarget[p.name]
		if t == nil {
			t = &ingester.TargetProgress{}
			res.perTarget[p.name] = t
		}
		t.SeriesAcked, t.BytesAcked = 0, 0
		for _, m := range tookBlockLine.FindAllStringSubmatch(p.log.String(), -1) {
			if m[1] != leaver.name {
				continue
			}
			series, _ := strconv.ParseUint(m[2], 10, 64)
			bytes, _ := strconv.ParseUint(m[3], 10, 64)
			t.SeriesAcked += series
			t.BytesAcked += bytes
		}
		res.series += t.SeriesAcked
		res.bytes += t.BytesAcked
	}
}

// waitHandOffBenchExit waits for p to exit by itself, with code 0, as a
// decommissioned ingester does.
func waitHandOffBenchExit(b *testing.B, p *process, timeout time.Duration) {
	b.Helper()
	select {
	case <-p.done:
		if code := p.cmd.ProcessState.ExitCode(); code != 0 {
			b.Fatalf("%s exited with code %d:\n%s", p.name, code, p.log.String())
		}
	case <-time.After(timeout):
		b.Fatalf("%s did not exit within %s of handing off", p.name, timeout)
	}
}

// waitLeft waits until q's ring no longer lists id as a member that owns
// tokens, so the queries after it read only the ingesters that stay.
func waitLeft(b *testing.B, q *process, id string) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := ringStatus(q)
		if inst, ok := st[id]; err == nil && (!ok || inst.State == ring.LEFT) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s still lists %s 30s after it exited: %v %v", q.name, id, st[id], err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
