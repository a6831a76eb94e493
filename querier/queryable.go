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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/census-metrics/census/ring"

	censuspb "github.com/census-metrics/census/proto"
)

// errClosed is returned by the reads of a closed querier.
var errClosed = errors.New("querier is closed")

// Ring is what the querier needs of the ring.
type Ring interface {
	// ReadInstances returns every healthy instance that may hold data.
	ReadInstances() []ring.InstanceDesc
	// ReplicationFactor is the number of ingesters that hold each series.
	ReplicationFactor() int
}

// Queryable implements storage.SampleAndChunkQueryable over the ingesters of
// the ring. Every read asks every instance ReadInstances returns and merges
// what they answer, so each sample stored on several replicas appears once.
// A read tolerates ReplicationFactor()-1 failed ingesters, adding a warning
// that names them; more fail it with an *IngesterErrors. It is safe for
// concurrent use.
type Queryable struct {
	ring    Ring
	clients *censuspb.ClientPool
	logger  *slog.Logger
	metrics *metrics
}

// NewQueryable returns a Queryable that reaches the ingesters of r through
// clients. A nil logger discards; a nil reg registers nothing.
func NewQueryable(r Ring, clients *censuspb.ClientPool, logger *slog.Logger, reg prometheus.Registerer) *Queryable {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Queryable{ring: r, clients: clients, logger: logger, metrics: newMetrics(reg)}
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
	opened sync.WaitGroup
	all    []*ingesterStream // Indexed like the instances; complete once opened is done.
}

// open starts a QueryStream on every instance and returns without waiting
// for them, so the engine's Selects of one query reach the ingesters
// concurrently; nil means there are no instances. The streams live until
// Close.
func (r *reader) open(ctx context.Context, hints *storage.SelectHints, matchers []*labels.Matcher) (*streams, error) {
	instances := r.q.ring.ReadInstances()
	if len(instances) == 0 {
		return nil, nil
	}
	start, end := r.mint, r.maxt
	if hints != nil {
		start, end = hints.Start, hints.End
	}
	req := &censuspb.QueryStreamRequest{StartMs: start, EndMs: end, Matchers: censuspb.FromMatchers(matchers)}

	r.mtx.Lock()
	defer r.mtx.Unlock()
	if r.closed {
		return nil, errClosed
	}
	streamCtx, cancel := context.WithCancel(ctx)
	r.cancels = append(r.cancels, cancel)

	st := &streams{
		fails: newFailures(ctx, r.q.ring.ReplicationFactor(), len(instances)),
		all:   make([]*ingesterStream, len(instances)),
	}
	st.opened.Add(len(instances))
	r.opening.Add(len(instances))
	for i, inst := range instances {
		go func() {
			defer r.opening.Done()
			defer st.opened.Done()
			st.all[i] = r.q.openStream(streamCtx, inst, req, st.fails)
		}()
	}
	return st, nil
}

// live waits for every stream to open and returns those that did.
func (st *streams) live() []*ingesterStream {
	st.opened.Wait()
	live := make([]*ingesterStream, 0, len(st.all))
	for _, s := range st.all {
		if !s.done {
			live = append(live, s)
		}
	}
	return live
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
	instances := r.q.ring.ReadInstances()
	if len(instances) == 0 {
		return nil, nil, nil
	}
	results, fails := fanOut(ctx, r.q, op, instances, call)
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
	if st == nil {
		return storage.EmptySeriesSet()
	}
	limit, mint, maxt, trim := 0, q.mint, q.maxt, true
	if hints != nil {
		limit, mint, maxt, trim = hints.Limit, hints.Start, hints.End, !hints.DisableTrimming
	}
	return &fanoutSet[storage.Series]{
		fails: st.fails,
		merge: func() seriesSet[storage.Series] {
			live := st.live()
			sets := make([]storage.SeriesSet, len(live))
			for i, s := range live {
				sets[i] = storage.NewSeriesSetFromChunkSeriesSet(s)
			}
			set := storage.NewMergeSeriesSet(sets, limit, storage.ChainedSeriesMerge)
			if trim {
				set = &trimmedSeriesSet{SeriesSet: set, mint: mint, maxt: maxt}
			}
			return set
		},
	}
}

// selectLabelSets answers a Select for label sets only with the ingesters'
// Series call, which sends no chunks.
func (q *querier) selectLabelSets(ctx context.Context, hints *storage.SelectHints, matchers []*labels.Matcher) storage.SeriesSet {
	instances := q.q.ring.ReadInstances()
	if len(instances) == 0 {
		return storage.EmptySeriesSet()
	}
	req := &censuspb.SeriesRequest{StartMs: hints.Start, EndMs: hints.End, Matchers: censuspb.FromMatchers(matchers), Limit: int64(max(hints.Limit, 0))}
	results, fails := fanOut(ctx, q.q, opSeries, instances, func(ctx context.Context, c censuspb.IngesterClient) ([]labels.Labels, error) {
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
	return &labelSetsSet{sets: all, warnings: fails.warnings()}
}

// chunkQuerier is the storage.ChunkQuerier of a Queryable.
type chunkQuerier struct {
	*reader
}

// Select returns the series that match matchers with their chunks that
// overlap the hinted range, each series once: overlapping chunks of its
// replicas are merged and re-encoded, so each sample appears once.
func (q *chunkQuerier) Select(ctx context.Context, _ bool, hints *storage.SelectHints, matchers ...*labels.Matcher) storage.ChunkSeriesSet {
	st, err := q.open(ctx, hints, matchers)
	if err != nil {
		return storage.ErrChunkSeriesSet(err)
	}
	if st == nil {
		return storage.EmptyChunkSeriesSet()
	}
	var limit int
	if hints != nil {
		limit = hints.Limit
	}
	return &fanoutSet[storage.ChunkSeries]{
		fails: st.fails,
		merge: func() seriesSet[storage.ChunkSeries] {
			live := st.live()
			sets := make([]storage.ChunkSeriesSet, len(live))
			for i, s := range live {
				sets[i] = s
			}
			return storage.NewMergeChunkSeriesSet(sets, limit, storage.NewCompactingChunkSeriesMerger(storage.ChainedSeriesMerge))
		},
	}
}

// seriesSet is what storage.SeriesSet and storage.ChunkSeriesSet have in
// common, so that one fanoutSet serves both.
type seriesSet[T any] interface {
	Next() bool
	At() T
	Err() error
	Warnings() annotations.Annotations
}

// fanoutSet is the merged answer of one Select's streams. It waits for the
// streams on first use and stops as soon as more ingesters failed than the
// replicas cover, since from then on series may be missing.
type fanoutSet[T any] struct {
	fails *failures
	merge func() seriesSet[T] // Called once, on first use; may block.
	set   seriesSet[T]
}

func (s *fanoutSet[T]) init() {
	if s.set == nil {
		s.set = s.merge()
	}
}

// Next implements storage.SeriesSet.
func (s *fanoutSet[T]) Next() bool {
	s.init()
	return s.fails.err() == nil && s.set.Next() && s.fails.err() == nil
}

// At implements storage.SeriesSet.
func (s *fanoutSet[T]) At() T { return s.set.At() }

// Err implements storage.SeriesSet.
func (s *fanoutSet[T]) Err() error {
	s.init()
	if err := s.fails.err(); err != nil {
		return err
	}
	return s.set.Err()
}

// Warnings implements storage.SeriesSet.
func (s *fanoutSet[T]) Warnings() annotations.Annotations {
	s.init()
	ws := s.set.Warnings()
	return ws.Merge(s.fails.warnings())
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
