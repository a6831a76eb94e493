// Package querier answers queries over the ingesters of the ring: Queryable
// is a storage.SampleAndChunkQueryable that fans out to every ingester and
// merges the replicas of each series, and NewAPI serves the Prometheus HTTP
// API, with Prometheus' own PromQL engine, over it.
package querier

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/census-metrics/census/ring"

	censuspb "github.com/census-metrics/census/proto"
)

// errClosed is returned by the reads of a closed querier.
var errClosed = errors.New("querier is closed")

// Ring is what the querier needs of the ring; *ring.Ring implements it.
type Ring interface {
	// ReadInstances returns every healthy instance that may hold data.
	ReadInstances() []ring.InstanceDesc
	// Instances returns every known instance, healthy or not, including
	// LEFT tombstones. Those that are not LEFT and that ReadInstances
	// leaves out for a stale heartbeat count as failed ingesters, so
	// that their missing replicas are noticed.
	Instances() []ring.InstanceDesc
	// ReplicationFactor is the number of ingesters that hold each series.
	ReplicationFactor() int
}

// Queryable implements storage.SampleAndChunkQueryable over the ingesters of
// the ring. Every read asks every instance ReadInstances returns, with the
// matchers and the time range, so the ingesters select the series and
// chunks; it merges what they answer, so each sample stored on several
// replicas appears once. A read tolerates ReplicationFactor()-1 failed
// ingesters (or failed zones, see failures), adding a warning that names
// them; more fail it with an *IngesterErrors. While the ring lists no
// instance at all, every read fails with ErrNoIngesters. It is safe for
// concurrent use.
type Queryable struct {
	ring    Ring
	clients *censuspb.ClientPool
	logger  *slog.Logger
	metrics *metrics

	// HedgeDelay is how long a read waits for the last ingesters once the
	// others hold a read quorum of every series (see streams.live); 0
	// waits for every ingester. Set it before the first read.
	HedgeDelay time.Duration
}

var (
	_ storage.SampleAndChunkQueryable = (*Queryable)(nil)
	_ storage.ExemplarQueryable       = (*Queryable)(nil)
)

// NewQueryable returns a Queryable that reaches the ingesters of r through
// clients. A nil logger discards; a nil reg registers nothing.
func NewQueryable(r Ring, clients *censuspb.ClientPool, logger *slog.Logger, reg prometheus.Registerer) *Queryable {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Queryable{ring: r, clients: clients, logger: logger, metrics: newMetrics(reg), HedgeDelay: DefaultHedgeDelay}
}

// ErrNoIngesters is why a querier is not ready: its ring holds no ACTIVE
// ingester, so any answer would be empty for want of data, not because
// there is none. Every read fails with it while the ring lists no ingester
// to ask. It is a tsdb.ErrNotReady too, so that the HTTP API answers it as
// Prometheus answers a TSDB that is not ready yet: 503 "unavailable".
var ErrNoIngesters error = noIngestersError{}

type noIngestersError struct{}

func (noIngestersError) Error() string { return "no ACTIVE ingester in the ring yet" }

// Is reports whether target is tsdb.ErrNotReady: Prometheus' API gives the
// errors that are the "unavailable" type.
func (noIngestersError) Is(target error) bool { return target == tsdb.ErrNotReady }

// Ready returns nil once the ring holds at least one ACTIVE ingester, and
// ErrNoIngesters while it holds none.
func (q *Queryable) Ready() error {
	for _, inst := range q.ring.ReadInstances() {
		if inst.State == ring.ACTIVE {
			return nil
		}
	}
	return ErrNoIngesters
}

// Querier returns a querier of the samples in [mint, maxt]. Close it to
// release its gRPC streams.
func (q *Queryable) Querier(mint, maxt int64) (storage.Querier, error) {
	return &querier{reader: q.newReader(mint, maxt)}, nil
}

// ChunkQuerier returns a querier of the chunks that overlap [mint, maxt].
// Close it to release its gRPC streams.
func (q *Queryable) ChunkQuerier(mint, maxt int64) (storage.ChunkQuerier, error) {
	return &chunkQuerier{reader: q.newReader(mint, maxt)}, nil
}

// reader is what a querier and a chunk querier share: the time range, the
// label reads, and the streams to close.
type reader struct {
	q          *Queryable
	mint, maxt int64

	mtx     sync.Mutex // Guards the fields below: Selects may run concurrently.
	closed  bool
	cancels []context.CancelFunc
	opening sync.WaitGroup // The goroutines opening streams; Close waits for them.
}

func (q *Queryable) newReader(mint, maxt int64) *reader {
	return &reader{q: q, mint: mint, maxt: maxt}
}

// streams is one Select's fan-out of QueryStream calls.
type streams struct {
	fails  *failures
	req    *request // The HTTP request's limits and counters; nil outside the API.
	cancel context.CancelFunc
	opened sync.WaitGroup
	all    []*ingesterStream // Indexed like the instances; complete once opened is done.

	// Hedging: openedc gets each stream's index once it opened, and
	// cancels[i] ends stream i with errHedged. hedgeOnce makes live hedge
	// once, whoever calls it first.
	instances  []ring.InstanceDesc
	hedgeDelay time.Duration
	openedc    chan int
	cancels    []context.CancelCauseFunc
	hedgeOnce  sync.Once

	stopMtx sync.Mutex // Guards stopErr.
	stopErr error      // Why the query stopped the streams itself.
}

// open starts a QueryStream on every instance and returns without waiting
// for them, so the engine's Selects of one query reach the ingesters
// concurrently. The streams live until Close. Without instances there are
// no streams, and their failures are ErrNoIngesters.
func (r *reader) open(ctx context.Context, hints *storage.SelectHints, matchers []*labels.Matcher) (*streams, error) {
	instances, unhealthy := r.q.instances()
	start, end, limit := r.mint, r.maxt, 0
	if hints != nil {
		start, end, limit = hints.Start, hints.End, hints.Limit
	}
	req := &censuspb.QueryStreamRequest{StartMs: start, EndMs: end, Matchers: censuspb.FromMatchers(matchers)}
	rq := requestFrom(ctx)
	if rq != nil && limit <= 0 {
		// Each ingester stops once it alone would breach a limit of the
		// query: what one sends counts in full against the query's total,
		// so it stops no query that would answer. A Select with a series
		// limit hands none: the ingesters do not know the hint, and would
		// stop at series the merge never reads.
		req.MaxSeries, req.MaxChunks = rq.maxSeries, rq.maxChunks
	}

	r.mtx.Lock()
	defer r.mtx.Unlock()
	if r.closed {
		return nil, errClosed
	}
	streamCtx, cancel := context.WithCancel(ctx)
	r.cancels = append(r.cancels, cancel)

	st := &streams{
		fails:  newFailures(ctx, r.q.ring.ReplicationFactor(), instances, unhealthy),
		req:    rq,
		cancel: cancel,
		all:    make([]*ingesterStream, len(instances)),

		instances:  instances,
		hedgeDelay: r.q.HedgeDelay,
		openedc:    make(chan int, len(instances)),
		cancels:    make([]context.CancelCauseFunc, len(instances)),
	}
	if st.req != nil {
		st.req.selects.Add(1)
	}
	st.opened.Add(len(instances))
	r.opening.Add(len(instances))
	for i, inst := range instances {
		var sctx context.Context
		sctx, st.cancels[i] = context.WithCancelCause(streamCtx)
		go func() {
			defer r.opening.Done()
			defer st.opened.Done()
			st.all[i] = r.q.openStream(sctx, inst, req, st)
			st.openedc <- i
		}()
	}
	return st, nil
}

// live waits for every stream to open and returns those that did. Once
// the streams open so far hold a read quorum of every series, it waits
// only the hedge delay for the others, then ends them with errHedged: a
// hung ingester does not hold a query whose answer is complete without it.
func (st *streams) live() []*ingesterStream {
	st.hedgeOnce.Do(func() { hedge(st.openedc, st.instances, st.cancels, st.fails, st.hedgeDelay) })
	st.opened.Wait()
	live := make([]*ingesterStream, 0, len(st.all))
	for _, s := range st.all {
		if !s.done {
			live = append(live, s)
		}
	}
	return live
}

// stop ends every stream of the Select because the query cannot go on
// (a breached limit): the ingesters stop sending.
func (st *streams) stop(err error) {
	st.stopMtx.Lock()
	if st.stopErr == nil {
		st.stopErr = err
	}
	st.stopMtx.Unlock()
	st.cancel()
}

func (st *streams) stopped() bool {
	st.stopMtx.Lock()
	defer st.stopMtx.Unlock()
	return st.stopErr != nil
}

// err is why the Select cannot answer: the query stopped it, or more
// ingesters failed than the replicas cover.
func (st *streams) err() error {
	st.stopMtx.Lock()
	err := st.stopErr
	st.stopMtx.Unlock()
	if err != nil {
		return err
	}
	return st.fails.err()
}

// LabelNames returns the sorted union of the label names of the series that
// match matchers, over every ingester.
func (r *reader) LabelNames(ctx context.Context, hints *storage.LabelHints, matchers ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	req := &censuspb.LabelNamesRequest{StartMs: r.mint, EndMs: r.maxt, Matchers: censuspb.FromMatchers(matchers), Limit: labelLimit(hints)}
	return r.labelQuery(ctx, opLabelNames, hints, func(ctx context.Context, c censuspb.IngesterClient) ([]string, error) {
		resp, err := c.LabelNames(ctx, req)
		return resp.GetNames(), err
	})
}

// LabelValues returns the sorted union of the values of label name in the
// series that match matchers, over every ingester.
func (r *reader) LabelValues(ctx context.Context, name string, hints *storage.LabelHints, matchers ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	req := &censuspb.LabelValuesRequest{Name: name, StartMs: r.mint, EndMs: r.maxt, Matchers: censuspb.FromMatchers(matchers), Limit: labelLimit(hints)}
	return r.labelQuery(ctx, opLabelValues, hints, func(ctx context.Context, c censuspb.IngesterClient) ([]string, error) {
		resp, err := c.LabelValues(ctx, req)
		return resp.GetValues(), err
	})
}

// labelLimit is the limit each ingester applies: the union of every
// ingester's smallest N holds the smallest N overall.
func labelLimit(hints *storage.LabelHints) int64 {
	if hints == nil || hints.Limit <= 0 {
		return 0
	}
	return int64(hints.Limit)
}

func (r *reader) labelQuery(ctx context.Context, op string, hints *storage.LabelHints, call func(context.Context, censuspb.IngesterClient) ([]string, error)) ([]string, annotations.Annotations, error) {
	results, fails := fanOut(ctx, r.q, op, call)
	if err := fails.err(); err != nil {
		return nil, nil, err
	}
	var n int
	for _, res := range results {
		n += len(res)
	}
	all := make([]string, 0, n)
	for _, res := range results {
		all = append(all, res...)
	}
	if len(all) == 0 {
		return nil, fails.warnings(), nil // As the TSDB answers.
	}
	slices.Sort(all)
	all = slices.Compact(all)
	all, _ = hints.ApplyLimit(all)
	return all, fails.warnings(), nil
}

// Close cancels the querier's gRPC streams and waits until none is being
// opened any more. The series sets of its Selects must not be used after.
func (r *reader) Close() error {
	r.mtx.Lock()
	r.closed = true
	for _, cancel := range r.cancels {
		cancel()
	}
	r.cancels = nil
	r.mtx.Unlock()
	r.opening.Wait()
	return nil
}

// querier is the storage.Querier of a Queryable.
type querier struct {
	*reader
}

// Select returns the series that match matchers, with their samples in the
// hinted range (the querier's range without hints), each series once with
// the union of its replicas' samples. The series are always sorted: the
// merge needs each ingester's sorted stream.
func (q *querier) Select(ctx context.Context, _ bool, hints *storage.SelectHints, matchers ...*labels.Matcher) storage.SeriesSet {
	if hints != nil && hints.Func == "series" {
		// The caller wants label sets only (/api/v1/series): ask for no chunks.
		return q.selectLabelSets(ctx, hints, matchers)
	}
	st, err := q.open(ctx, hints, matchers)
	if err != nil {
		return storage.ErrSeriesSet(err)
	}
	limit, mint, maxt, trim := 0, q.mint, q.maxt, true
	if hints != nil {
		limit, mint, maxt, trim = hints.Limit, hints.Start, hints.End, !hints.DisableTrimming
	}
	return mergedSeriesSet{m: newReplicaMerge(st, limit, mint, maxt, trim)}
}

// selectLabelSets answers a Select for label sets only with the ingesters'
// Series call, which sends no chunks.
func (q *querier) selectLabelSets(ctx context.Context, hints *storage.SelectHints, matchers []*labels.Matcher) storage.SeriesSet {
	req := &censuspb.SeriesRequest{StartMs: hints.Start, EndMs: hints.End, Matchers: censuspb.FromMatchers(matchers), Limit: int64(max(hints.Limit, 0))}
	if rq := requestFrom(ctx); rq != nil && (req.Limit == 0 || req.Limit > rq.maxSeries) {
		// Each ingester fails once it alone would answer more series than
		// the query may fetch; a limit no larger than that cannot be
		// breached, and then the ingesters get none.
		req.MaxSeries = rq.maxSeries
	}
	results, fails := fanOut(ctx, q.q, opSeries, func(ctx context.Context, c censuspb.IngesterClient) ([]labels.Labels, error) {
		resp, err := c.Series(ctx, req)
		if err != nil {
			return nil, err
		}
		var b labels.ScratchBuilder
		out := make([]labels.Labels, 0, len(resp.GetSeries()))
		for _, s := range resp.GetSeries() {
			ls, err := censuspb.ToLabels(&b, s.GetLabels())
			if err != nil {
				return nil, err
			}
			out = append(out, ls)
		}
		q.q.metrics.seriesFetched.Add(float64(len(out)))
		return out, nil
	})
	if err := fails.err(); err != nil {
		return storage.ErrSeriesSet(err)
	}
	var all []labels.Labels
	for _, res := range results {
		all = append(all, res...)
	}
	slices.SortFunc(all, labels.Compare)
	all = slices.CompactFunc(all, labels.Equal)
	if hints.Limit > 0 && len(all) > hints.Limit {
		all = all[:hints.Limit]
	}
	if req := requestFrom(ctx); req != nil {
		req.selects.Add(1)
		if err := req.addSeries(int64(len(all))); err != nil {
			return storage.ErrSeriesSet(err)
		}
	}
	return &labelSetsSet{sets: all, warnings: fails.warnings()}
}

// chunkQuerier is the storage.ChunkQuerier of a Queryable.
type chunkQuerier struct {
	*reader
}

// Select returns the series that match matchers with their chunks that
// overlap the hinted range, each series once: identical chunks of its
// replicas are returned once, and chunks that overlap without being
// identical are merged and re-encoded, so each sample appears once.
func (q *chunkQuerier) Select(ctx context.Context, _ bool, hints *storage.SelectHints, matchers ...*labels.Matcher) storage.ChunkSeriesSet {
	st, err := q.open(ctx, hints, matchers)
	if err != nil {
		return storage.ErrChunkSeriesSet(err)
	}
	limit, mint, maxt := 0, q.mint, q.maxt
	if hints != nil {
		limit, mint, maxt = hints.Limit, hints.Start, hints.End
	}
	return mergedChunkSeriesSet{m: newReplicaMerge(st, limit, mint, maxt, false)}
}

// labelSetsSet is a storage.SeriesSet of series without samples.
type labelSetsSet struct {
	sets     []labels.Labels
	cur      int
	warnings annotations.Annotations
}

// Next implements storage.SeriesSet.
func (s *labelSetsSet) Next() bool {
	if s.cur >= len(s.sets) {
		return false
	}
	s.cur++
	return true
}

// At implements storage.SeriesSet.
func (s *labelSetsSet) At() storage.Series { return storage.NewListSeries(s.sets[s.cur-1], nil) }

// Err implements storage.SeriesSet.
func (*labelSetsSet) Err() error { return nil }

// Warnings implements storage.SeriesSet.
func (s *labelSetsSet) Warnings() annotations.Annotations { return s.warnings }
