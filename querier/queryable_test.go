package querier_test

import (
	"context"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"
	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/querier"
	"github.com/census-metrics/census/ring"

	censuspb "github.com/census-metrics/census/proto"
)

const (
	scrapeInterval = int64(15 * time.Second / time.Millisecond)
	numSamples     = 240 // An hour: two TSDB chunks per series.
)

// testData is what the tests store: ten counters, a sample every 15s for
// an hour from t=0.
func testData() []series {
	var out []series
	for _, job := range []string{"api", "db"} {
		for inst := range 5 {
			s := series{lset: labels.FromStrings(
				labels.MetricName, "http_requests_total",
				"instance", fmt.Sprintf("10.0.0.%d:80", inst),
				"job", job,
			)}
			for i := range numSamples {
				s.samples = append(s.samples, sample{T: int64(i) * scrapeInterval, F: float64(i * (inst + 1))})
			}
			out = append(out, s)
		}
	}
	// In the order of a Select.
	slices.SortFunc(out, func(a, b series) int { return labels.Compare(a.lset, b.lset) })
	return out
}

// without returns ss less the samples whose index drop selects.
func without(ss []series, drop func(i int) bool) []series {
	out := make([]series, 0, len(ss))
	for _, s := range ss {
		kept := series{lset: s.lset}
		for i, smp := range s.samples {
			if !drop(i) {
				kept.samples = append(kept.samples, smp)
			}
		}
		out = append(out, kept)
	}
	return out
}

// filter is what a correct Select returns: the series that match ms with
// their samples in [mint, maxt].
func filter(ss []series, mint, maxt int64, ms ...*labels.Matcher) []series {
	var out []series
next:
	for _, s := range ss {
		for _, m := range ms {
			if !m.Matches(s.lset.Get(m.Name)) {
				continue next
			}
		}
		kept := series{lset: s.lset}
		for _, smp := range s.samples {
			if smp.T >= mint && smp.T <= maxt {
				kept.samples = append(kept.samples, smp)
			}
		}
		if len(kept.samples) > 0 {
			out = append(out, kept)
		}
	}
	return out
}

// dbWith returns a TSDB holding ss.
func dbWith(t testing.TB, ss []series) *tsdb.DB {
	t.Helper()
	db := newTestDB(t)
	appendSeries(t, db, ss...)
	return db
}

// replicaDBs returns three replicas of data, none complete on its own: two
// miss every third sample, each a different third, and one the last ten
// minutes. Their union is data.
func replicaDBs(t testing.TB, data []series) []*tsdb.DB {
	t.Helper()
	return []*tsdb.DB{
		dbWith(t, without(data, func(i int) bool { return i%3 == 0 })),
		dbWith(t, without(data, func(i int) bool { return i%3 == 1 })),
		dbWith(t, without(data, func(i int) bool { return i >= numSamples-40 })),
	}
}

// readSeries expands a series set.
func readSeries(t testing.TB, set storage.SeriesSet) ([]series, annotations.Annotations, error) {
	t.Helper()
	var out []series
	var it chunkenc.Iterator
	for set.Next() {
		s := series{lset: set.At().Labels()}
		it = set.At().Iterator(it)
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			require.Equal(t, chunkenc.ValFloat, vt)
			ts, f := it.At()
			s.samples = append(s.samples, sample{T: ts, F: f})
		}
		require.NoError(t, it.Err())
		out = append(out, s)
	}
	return out, set.Warnings(), set.Err()
}

func mustMatcher(t testing.TB, typ labels.MatchType, name, value string) *labels.Matcher {
	t.Helper()
	m, err := labels.NewMatcher(typ, name, value)
	require.NoError(t, err)
	return m
}

func TestQueryable_Select(t *testing.T) {
	data := testData()
	c := newCluster(t, 3, replicaDBs(t, data)...)
	reference := dbWith(t, data)
	metric := mustMatcher(t, labels.MatchEqual, labels.MetricName, "http_requests_total")
	minute := int64(time.Minute / time.Millisecond)

	for _, tc := range []struct {
		name       string
		mint, maxt int64
		hints      *storage.SelectHints
		matchers   []*labels.Matcher
		wantSeries int
	}{
		{
			name: "whole range", mint: math.MinInt64, maxt: math.MaxInt64,
			matchers: []*labels.Matcher{metric}, wantSeries: 10,
		},
		{
			name: "trimmed to an unaligned range", mint: 10*minute + 7000, maxt: 20*minute + 1,
			matchers: []*labels.Matcher{metric}, wantSeries: 10,
		},
		{
			name: "range of hints over the querier's", mint: 0, maxt: 60 * minute,
			hints:    &storage.SelectHints{Start: 55 * minute, End: 57 * minute},
			matchers: []*labels.Matcher{metric}, wantSeries: 10,
		},
		{
			name: "regexp and negative matchers", mint: 0, maxt: 60 * minute,
			matchers: []*labels.Matcher{
				mustMatcher(t, labels.MatchRegexp, "job", "d.*"),
				mustMatcher(t, labels.MatchNotEqual, "instance", "10.0.0.0:80"),
			},
			wantSeries: 4,
		},
		{
			name: "no series match", mint: 0, maxt: 60 * minute,
			matchers: []*labels.Matcher{mustMatcher(t, labels.MatchEqual, "job", "none")},
		},
		{
			name: "range before any sample", mint: -60 * minute, maxt: -1,
			matchers: []*labels.Matcher{metric},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			mint, maxt := tc.mint, tc.maxt
			if tc.hints != nil {
				mint, maxt = tc.hints.Start, tc.hints.End
			}
			want := filter(data, mint, maxt, tc.matchers...)
			require.Len(t, want, tc.wantSeries)

			q, err := c.queryable.Querier(tc.mint, tc.maxt)
			require.NoError(t, err)
			defer q.Close()
			got, ws, err := readSeries(t, q.Select(ctx, true, tc.hints, tc.matchers...))
			require.NoError(t, err)
			require.Empty(t, ws)
			require.Equal(t, want, got)

			// Prometheus' own TSDB holding the union answers the same.
			rq, err := reference.Querier(tc.mint, tc.maxt)
			require.NoError(t, err)
			defer rq.Close()
			ref, _, err := readSeries(t, rq.Select(ctx, true, tc.hints, tc.matchers...))
			require.NoError(t, err)
			require.Equal(t, ref, got)
		})
	}
}

func TestQueryable_SelectLabelSetsOnly(t *testing.T) {
	data := testData()
	c := newCluster(t, 3, replicaDBs(t, data)...)
	reference := dbWith(t, data)

	for _, tc := range []struct {
		name  string
		limit int
		want  int
	}{
		{name: "no limit", want: 10},
		{name: "limit", limit: 4, want: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hints := &storage.SelectHints{Start: 0, End: 3600_000, Func: "series", Limit: tc.limit}
			job := mustMatcher(t, labels.MatchRegexp, "job", ".+")

			q, err := c.queryable.Querier(0, 3600_000)
			require.NoError(t, err)
			defer q.Close()
			got := labelSets(t, q.Select(context.Background(), true, hints, job))

			rq, err := reference.Querier(0, 3600_000)
			require.NoError(t, err)
			defer rq.Close()
			require.Len(t, got, tc.want)
			// The TSDB leaves the limit to the caller; the first series are
			// the same.
			require.Equal(t, labelSets(t, rq.Select(context.Background(), true, hints, job))[:tc.want], got)
		})
	}
}

func labelSets(t testing.TB, set storage.SeriesSet) []labels.Labels {
	t.Helper()
	var out []labels.Labels
	for set.Next() {
		out = append(out, set.At().Labels())
	}
	require.NoError(t, set.Err())
	return out
}

func TestQueryable_ChunkQuerier(t *testing.T) {
	data := testData()
	c := newCluster(t, 3, replicaDBs(t, data)...)
	metric := mustMatcher(t, labels.MatchEqual, labels.MetricName, "http_requests_total")

	for _, tc := range []struct {
		name       string
		mint, maxt int64
	}{
		{name: "whole range", mint: math.MinInt64, maxt: math.MaxInt64},
		{name: "part of the range", mint: 20 * 60_000, maxt: 40 * 60_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cq, err := c.queryable.ChunkQuerier(tc.mint, tc.maxt)
			require.NoError(t, err)
			defer cq.Close()
			set := cq.Select(context.Background(), true, nil, metric)
			var got []series
			var chkIt chunks.Iterator
			var smpIt chunkenc.Iterator
			for set.Next() {
				s := series{lset: set.At().Labels()}
				chkIt = set.At().Iterator(chkIt)
				for chkIt.Next() {
					meta := chkIt.At()
					require.Equal(t, chunkenc.EncXOR, meta.Chunk.Encoding())
					// Chunks are whole, so they may reach beyond the range,
					// but never miss it.
					require.LessOrEqual(t, meta.MinTime, tc.maxt)
					require.GreaterOrEqual(t, meta.MaxTime, tc.mint)
					smpIt = meta.Chunk.Iterator(smpIt)
					for smpIt.Next() == chunkenc.ValFloat {
						ts, f := smpIt.At()
						s.samples = append(s.samples, sample{T: ts, F: f})
					}
					require.NoError(t, smpIt.Err())
				}
				require.NoError(t, chkIt.Err())
				got = append(got, s)
			}
			require.NoError(t, set.Err())
			require.Empty(t, set.Warnings())

			// Each sample once, the union of the replicas, covering the range.
			want := filter(data, tc.mint, tc.maxt, metric)
			require.Len(t, got, len(want))
			for i := range want {
				require.Equal(t, want[i].lset, got[i].lset)
				require.Subset(t, got[i].samples, want[i].samples)
				require.True(t, isStrictlyIncreasing(got[i].samples), "samples of %s repeat or are out of order", got[i].lset)
				require.Equal(t, filter([]series{got[i]}, tc.mint, tc.maxt), want[i:i+1])
			}
		})
	}
}

func isStrictlyIncreasing(ss []sample) bool {
	for i := 1; i < len(ss); i++ {
		if ss[i].T <= ss[i-1].T {
			return false
		}
	}
	return true
}

func TestQueryable_LabelNamesAndValues(t *testing.T) {
	data := testData()
	// Sharded as the ring shards: each ingester holds some of the series,
	// every series is on two of them.
	extra := series{
		lset:    labels.FromStrings(labels.MetricName, "up", "job", "node", "zone", "eu-1"),
		samples: []sample{{T: 0, F: 1}},
	}
	dbs := []*tsdb.DB{
		dbWith(t, append(append([]series{}, data[:5]...), extra)),
		dbWith(t, data[3:]),
		dbWith(t, append(append([]series{}, data[:3]...), append(data[5:], extra)...)),
	}
	c := newCluster(t, 2, dbs...)
	reference := dbWith(t, append(append([]series{}, data...), extra))

	for _, tc := range []struct {
		name      string
		label     string // Empty: label names.
		hints     *storage.LabelHints
		matchers  []*labels.Matcher
		wantCount int
	}{
		{name: "names", wantCount: 4},
		{name: "names of matching series", matchers: []*labels.Matcher{mustMatcher(t, labels.MatchEqual, "job", "api")}, wantCount: 3},
		{name: "names with limit", hints: &storage.LabelHints{Limit: 2}, wantCount: 2},
		{name: "values", label: "job", wantCount: 3},
		{name: "values of matching series", label: "instance", matchers: []*labels.Matcher{mustMatcher(t, labels.MatchEqual, "job", "db")}, wantCount: 5},
		{name: "values with limit", label: labels.MetricName, hints: &storage.LabelHints{Limit: 1}, wantCount: 1},
		{name: "values of a missing label", label: "nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			read := func(q storage.Querier) []string {
				var (
					res []string
					ws  annotations.Annotations
					err error
				)
				if tc.label == "" {
					res, ws, err = q.LabelNames(ctx, tc.hints, tc.matchers...)
				} else {
					res, ws, err = q.LabelValues(ctx, tc.label, tc.hints, tc.matchers...)
				}
				require.NoError(t, err)
				require.Empty(t, ws)
				return res
			}
			q, err := c.queryable.Querier(math.MinInt64, math.MaxInt64)
			require.NoError(t, err)
			defer q.Close()
			rq, err := reference.Querier(math.MinInt64, math.MaxInt64)
			require.NoError(t, err)
			defer rq.Close()

			got := read(q)
			require.Len(t, got, tc.wantCount)
			require.Equal(t, read(rq), got)
		})
	}
}

func TestQueryable_IngesterFailures(t *testing.T) {
	data := testData()
	metric := mustMatcher(t, labels.MatchEqual, labels.MetricName, "http_requests_total")

	const (
		up        = iota
		stopped   // The server is down: the connection fails.
		midStream // The stream fails after its first frame.
	)
	for _, tc := range []struct {
		name   string
		rf     int
		faults [3]int
	}{
		{name: "all up", rf: 3},
		{name: "one of three stopped, RF 3", rf: 3, faults: [3]int{up, stopped, up}},
		{name: "two of three stopped, RF 3", rf: 3, faults: [3]int{stopped, up, stopped}},
		{name: "three of three stopped, RF 3", rf: 3, faults: [3]int{stopped, stopped, stopped}},
		{name: "two of three stopped, RF 2", rf: 2, faults: [3]int{up, stopped, stopped}},
		{name: "one of three stopped, RF 1", rf: 1, faults: [3]int{up, up, stopped}},
		{name: "one stream fails midway, RF 3", rf: 3, faults: [3]int{midStream, up, up}},
		{name: "one stopped, one fails midway, RF 3", rf: 3, faults: [3]int{up, midStream, stopped}},
		{name: "two streams fail midway, RF 2", rf: 2, faults: [3]int{midStream, midStream, up}},
		{name: "all streams fail midway, RF 3", rf: 3, faults: [3]int{midStream, midStream, midStream}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Fully replicated, so any ingester holds the whole answer.
			c := newCluster(t, tc.rf, dbWith(t, data), dbWith(t, data), dbWith(t, data))
			var failed, down []*ingesterProc
			for i, f := range tc.faults {
				switch f {
				case stopped:
					c.ingesters[i].stop()
					down = append(down, c.ingesters[i])
					failed = append(failed, c.ingesters[i])
				case midStream:
					c.ingesters[i].failAfterFirstFrame.Store(true)
					failed = append(failed, c.ingesters[i])
				}
			}
			q, err := c.queryable.Querier(math.MinInt64, math.MaxInt64)
			require.NoError(t, err)
			defer q.Close()
			ctx := context.Background()

			got, ws, err := readSeries(t, q.Select(ctx, true, nil, metric))
			requireTolerated(t, tc.rf, failed, ws, err)
			if err == nil {
				require.Equal(t, data, got, "the answer must be complete")
			}

			// Label reads fail only on the stopped ingesters.
			names, ws, err := q.LabelNames(ctx, nil)
			requireTolerated(t, tc.rf, down, ws, err)
			if err == nil {
				require.Equal(t, []string{labels.MetricName, "instance", "job"}, names)
			}
			values, ws, err := q.LabelValues(ctx, "job", nil)
			requireTolerated(t, tc.rf, down, ws, err)
			if err == nil {
				require.Equal(t, []string{"api", "db"}, values)
			}
		})
	}
}

// requireTolerated checks the outcome of a read of three ingesters of which
// failed failed: an error naming them all once the replicas cannot cover
// them (more than RF/2 failed, since a push needs RF/2+1 replicas),
// otherwise one warning naming each.
func requireTolerated(t *testing.T, rf int, failed []*ingesterProc, ws annotations.Annotations, err error) {
	t.Helper()
	if len(failed) > rf/2 || len(failed) == 3 {
		require.Error(t, err)
		var ingErrs *querier.IngesterErrors
		require.ErrorAs(t, err, &ingErrs)
		require.Len(t, ingErrs.Failed, len(failed))
		for _, p := range failed {
			require.ErrorContains(t, err, fmt.Sprintf("ingester %s (%s)", p.desc.ID, p.desc.Addr))
		}
		return
	}
	require.NoError(t, err)
	require.Len(t, ws, len(failed))
	for _, p := range failed {
		require.Contains(t, fmt.Sprint(ws.AsErrors()), fmt.Sprintf("ingester %s (%s)", p.desc.ID, p.desc.Addr))
	}
}

// A ring without instances has no one to ask: every read fails with
// ErrNoIngesters rather than answer empty, as if there were no data.
func TestQueryable_NoInstances(t *testing.T) {
	c := newCluster(t, 3)
	ctx := context.Background()
	metric := mustMatcher(t, labels.MatchEqual, labels.MetricName, "http_requests_total")

	q, err := c.queryable.Querier(0, 1000)
	require.NoError(t, err)
	defer q.Close()
	_, _, err = readSeries(t, q.Select(ctx, true, nil, metric))
	require.ErrorIs(t, err, querier.ErrNoIngesters)
	_, _, err = readSeries(t, q.Select(ctx, true, &storage.SelectHints{Start: 0, End: 1000, Func: "series"}, metric))
	require.ErrorIs(t, err, querier.ErrNoIngesters)
	_, _, err = q.LabelNames(ctx, nil)
	require.ErrorIs(t, err, querier.ErrNoIngesters)
	_, _, err = q.LabelValues(ctx, "job", nil)
	require.ErrorIs(t, err, querier.ErrNoIngesters)

	cq, err := c.queryable.ChunkQuerier(0, 1000)
	require.NoError(t, err)
	defer cq.Close()
	set := cq.Select(ctx, true, nil, metric)
	require.False(t, set.Next())
	require.ErrorIs(t, set.Err(), querier.ErrNoIngesters)

	eq, err := c.queryable.ExemplarQuerier(ctx)
	require.NoError(t, err)
	_, err = eq.Select(0, 1000, []*labels.Matcher{metric})
	require.ErrorIs(t, err, querier.ErrNoIngesters)
}

func TestQueryable_CloseReleasesStreams(t *testing.T) {
	data := testData()
	c := newCluster(t, 3, replicaDBs(t, data)...)
	open := func() (n int64) {
		for _, p := range c.ingesters {
			n += p.openStreams.Load()
		}
		return n
	}
	for _, p := range c.ingesters {
		// The ingesters send all they have and then hold their streams
		// open, as slow ingesters would.
		p.holdStreams.Store(true)
	}

	q, err := c.queryable.Querier(math.MinInt64, math.MaxInt64)
	require.NoError(t, err)
	metric := mustMatcher(t, labels.MatchEqual, labels.MetricName, "http_requests_total")
	// Two Selects, each used only in part, as a query that stops early.
	for range 2 {
		set := q.Select(context.Background(), true, nil, metric)
		require.True(t, set.Next())
		require.Equal(t, data[0].lset, set.At().Labels())
	}
	require.Equal(t, int64(6), open())

	require.NoError(t, q.Close())
	require.Eventually(t, func() bool { return open() == 0 }, 10*time.Second, 10*time.Millisecond)
}

func TestQueryable_Metrics(t *testing.T) {
	data := testData()
	c := newCluster(t, 3, dbWith(t, data), dbWith(t, data), dbWith(t, data))
	c.ingesters[2].stop()

	q, err := c.queryable.Querier(math.MinInt64, math.MaxInt64)
	require.NoError(t, err)
	defer q.Close()
	got, ws, err := readSeries(t, q.Select(context.Background(), true, nil, mustMatcher(t, labels.MatchRegexp, "job", ".+")))
	require.NoError(t, err)
	require.Len(t, ws, 1)
	require.Len(t, got, len(data))
	_, _, err = q.LabelNames(context.Background(), nil)
	require.NoError(t, err)

	// Every replica's series counts, before the merge.
	require.Equal(t, float64(2*len(data)), gathered(t, c.reg, "census_querier_series_fetched_total", ""))
	for _, tc := range []struct {
		op         string
		errs, reqs float64
	}{
		{op: "query_stream", errs: 1, reqs: 3},
		{op: "label_names", errs: 1, reqs: 3},
		{op: "label_values", errs: 0, reqs: 0},
	} {
		require.Equal(t, tc.errs, gathered(t, c.reg, "census_querier_ingester_errors_total", tc.op), tc.op)
		require.Equal(t, tc.reqs, gathered(t, c.reg, "census_querier_ingester_request_duration_seconds", tc.op), tc.op)
	}
}

// gathered returns the value of the counter, or the observation count of
// the histogram, called name, with the given operation label unless op is
// empty.
func gathered(t testing.TB, reg *prometheus.Registry, name, op string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if op != "" && !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
				return l.GetName() == "operation" && l.GetValue() == op
			}) {
				continue
			}
			if m.GetHistogram() != nil {
				return float64(m.GetHistogram().GetSampleCount())
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s{operation=%q}", name, op)
	return 0
}

func TestQueryable_ZoneFailures(t *testing.T) {
	data := testData()
	metric := mustMatcher(t, labels.MatchEqual, labels.MetricName, "http_requests_total")
	for _, tc := range []struct {
		name    string
		zones   []string // Of each ingester; the ring has RF 3.
		down    []int
		wantErr bool
	}{
		{name: "a whole zone down", zones: []string{"a", "a", "b", "b", "c", "c"}, down: []int{0, 1}},
		{name: "a zone and one more ingester, two zones down", zones: []string{"a", "a", "b", "b", "c", "c"}, down: []int{0, 1, 2}, wantErr: true},
		{name: "all of two zones down", zones: []string{"a", "a", "b", "b", "c", "c"}, down: []int{0, 1, 2, 3}, wantErr: true},
		{name: "one ingester of a zone down", zones: []string{"a", "a", "b", "b", "c", "c"}, down: []int{3}},
		{name: "one ingester in each of three zones down", zones: []string{"a", "a", "b", "b", "c", "c"}, down: []int{0, 2, 4}, wantErr: true},
		{name: "fewer zones than replicas", zones: []string{"a", "a", "a", "b", "b", "b"}, down: []int{0, 1, 2}, wantErr: true},
		{name: "an ingester without a zone", zones: []string{"a", "a", "b", "b", "c", ""}, down: []int{0, 1, 2}, wantErr: true},
		{name: "no zones, three down", zones: []string{"", "", "", "", "", ""}, down: []int{0, 1, 2}, wantErr: true},
		{name: "no zones, one down", zones: []string{"", "", "", "", "", ""}, down: []int{5}},
		{name: "no zones, two down", zones: []string{"", "", "", "", "", ""}, down: []int{0, 1}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dbs := make([]*tsdb.DB, len(tc.zones))
			for i := range dbs {
				dbs[i] = dbWith(t, data)
			}
			c := newCluster(t, 3, dbs...)
			for i, z := range tc.zones {
				c.ring.instances[i].Zone = z
			}
			for _, i := range tc.down {
				c.ingesters[i].stop()
			}
			q, err := c.queryable.Querier(math.MinInt64, math.MaxInt64)
			require.NoError(t, err)
			defer q.Close()
			got, ws, err := readSeries(t, q.Select(context.Background(), true, nil, metric))
			if tc.wantErr {
				var ingErrs *querier.IngesterErrors
				require.ErrorAs(t, err, &ingErrs)
				require.Len(t, ingErrs.Failed, len(tc.down))
				return
			}
			require.NoError(t, err)
			require.Equal(t, data, got)
			require.Len(t, ws, len(tc.down))
		})
	}
}

func TestQueryable_UnhealthyInstancesCountAsFailed(t *testing.T) {
	data := testData()
	metric := mustMatcher(t, labels.MatchEqual, labels.MetricName, "http_requests_total")
	c := newCluster(t, 2, dbWith(t, data), dbWith(t, data), dbWith(t, data))
	// The ring still lists an ingester that stopped heartbeating; its
	// replicas are missing, so it counts against the replication factor.
	stale := ring.InstanceDesc{ID: "ingester-stale", Addr: "127.0.0.1:1", State: ring.ACTIVE}
	left := ring.InstanceDesc{ID: "ingester-left", Addr: "127.0.0.1:2", State: ring.LEFT}
	r := &fakeRing{instances: c.ring.instances, unhealthy: []ring.InstanceDesc{stale, left}, rf: c.ring.rf}
	pool := censuspb.NewClientPool()
	t.Cleanup(func() { require.NoError(t, pool.Close()) })
	queryable := querier.NewQueryable(r, pool, nil, nil)

	read := func() ([]series, annotations.Annotations, error) {
		q, err := queryable.Querier(math.MinInt64, math.MaxInt64)
		require.NoError(t, err)
		defer q.Close()
		return readSeries(t, q.Select(context.Background(), true, nil, metric))
	}
	got, ws, err := read()
	require.NoError(t, err)
	require.Equal(t, data, got)
	require.Len(t, ws, 1, "the LEFT tombstone is no failure")
	require.Contains(t, fmt.Sprint(ws.AsErrors()), "ingester ingester-stale (127.0.0.1:1): unhealthy in the ring")

	// One more failure is one more than RF 2 tolerates: a push is
	// acknowledged by both replicas, so one of them answers for it.
	r.instances = r.instances[:2]
	r.unhealthy = append(r.unhealthy, c.ring.instances[2])
	_, _, err = read()
	var ingErrs *querier.IngesterErrors
	require.ErrorAs(t, err, &ingErrs)
	require.Len(t, ingErrs.Failed, 2)
	require.ErrorContains(t, err, "ingester-stale")
	require.ErrorContains(t, err, "ingester-2")
}

func TestQueryable_DeduplicatesIdenticalReplicaChunks(t *testing.T) {
	data := testData()
	metric := mustMatcher(t, labels.MatchEqual, labels.MetricName, "http_requests_total")
	reference := dbWith(t, data)
	// Three replicas that received the same pushes hold the same chunks.
	c := newCluster(t, 3, dbWith(t, data), dbWith(t, data), dbWith(t, data))

	count := func(q storage.ChunkQueryable) (n int) {
		cq, err := q.ChunkQuerier(math.MinInt64, math.MaxInt64)
		require.NoError(t, err)
		defer cq.Close()
		set := cq.Select(context.Background(), true, nil, metric)
		var it chunks.Iterator
		for set.Next() {
			it = set.At().Iterator(it)
			for it.Next() {
				n++
			}
		}
		require.NoError(t, set.Err())
		return n
	}
	want := count(reference)
	require.Greater(t, want, len(data), "several chunks per series")
	require.Equal(t, want, count(c.queryable), "each chunk once, not once per replica")
	require.Equal(t, float64(3*want), gathered(t, c.reg, "census_querier_chunks_fetched_total", ""), "every replica's chunks crossed the wire")
}
