package ingester

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"

	censuspb "github.com/census-metrics/census/proto"
)

// Push appends a batch of series (float samples, native histograms,
// exemplars and metadata) in one TSDB transaction, commits it to the WAL and,
// with --storage.wal-fsync, waits until the WAL is on disk: an acknowledged
// push survives a crash.
//
// Input is refused per sample, never per batch: a series with invalid labels
// or over a limit, and a sample the time rules refuse (out of order, too old,
// a different value for a timestamp already stored) are left out while the
// rest of the batch is stored. A sample the ingester already holds with the
// same value is success wherever it lies in its series, so that a sender
// may retry a push (resend.go). Push then fails with InvalidArgument, or with
// ResourceExhausted if only the series limits refused samples, and its status
// details carry a censuspb.PushResponse with one Rejection per reason. On
// full success it returns an empty PushResponse. Exemplars the TSDB refuses
// are counted in census_ingester_discarded_exemplars_total but fail nothing,
// as in Prometheus: their samples are stored.
func (i *Ingester) Push(ctx context.Context, req *censuspb.PushRequest) (*censuspb.PushResponse, error) {
	err := i.pushWith(ctx, func(st *pushState) error {
		for _, ts := range req.GetSeries() {
			if err := st.add(ts); err != nil {
				return err
			}
		}
		return nil
	})
	return i.pushResult(err)
}

// pushResult counts a push by its outcome.
func (i *Ingester) pushResult(err error) (*censuspb.PushResponse, error) {
	i.metrics.pushRequests.WithLabelValues(statusCode(err).String()).Inc()
	if err != nil {
		return nil, err
	}
	return &censuspb.PushResponse{}, nil
}

// pushWith runs one push: each adds the request's series to st, then the
// transaction is committed and, with --storage.wal-fsync, fsynced.
func (i *Ingester) pushWith(ctx context.Context, each func(st *pushState) error) error {
	if e := i.diskFull.Load(); e != nil {
		return e
	}
	if limit := int64(i.cfg.Limits.MaxInflightPushes); limit > 0 {
		n := i.inflightPushes.Add(1)
		defer i.inflightPushes.Add(-1)
		if n > limit {
			i.metrics.throttledPushes.Inc()
			return fmt.Errorf("%w: the ingester works on at most %d pushes at once (--ingester.max-inflight-push-requests)", errTooManyPushes, limit)
		}
	}
	db, err := i.acquire()
	if err != nil {
		return err
	}
	defer i.release()
	// Checked under the read lock: a decommission sets leaving, then takes
	// the write lock, after which no push appends any more.
	if i.leaving.Load() {
		return errLeaving
	}

	st := i.getPushState(ctx, db)
	defer i.putPushState(st)

	if err := i.appendPush(ctx, st, each); err != nil {
		return err
	}
	if i.syncer != nil {
		if err := i.syncer.sync(ctx); err != nil {
			return fmt.Errorf("fsync WAL after committing %d samples: %w", st.appended, i.noSpace(err))
		}
	}

	i.metrics.samplesAppended.Add(float64(st.appended))
	if st.resent > 0 {
		i.metrics.samplesResent.Add(float64(st.resent))
	}
	for r := range censuspb.NumReasons {
		if n := st.rej.samples[r]; n > 0 {
			i.metrics.discardedSamples.WithLabelValues(r.String()).Add(float64(n))
		}
	}
	for r, n := range st.exemplarsDiscarded {
		i.metrics.discardedExemplars.WithLabelValues(r).Add(float64(n))
	}
	if len(st.meta) > 0 {
		i.metadata.update(st.meta, time.Now())
	}
	if err := st.rej.err(); err != nil {
		rej := st.rej // st goes back to the pool.
		return &rej
	}
	return nil
}

// noSpace returns err, or if it is a write that failed for lack of room,
// the diskFullError that refuses pushes from now on, wrapping err: a
// distributor takes the push to other replicas rather than retrying here
// until the next reading of the free space clears it.
func (i *Ingester) noSpace(err error) error {
	if !isNoSpace(err) {
		return err
	}
	i.checkDisk(err)
	if e := i.diskFull.Load(); e != nil {
		return e
	}
	return err
}

// pushState is the scratch space of one Push, pooled because Push is the
// ingester's hot path. It belongs to one push at a time.
type pushState struct {
	db        *tsdb.DB
	app       storage.AppenderV2
	exemplars storage.ExemplarAppenderV2 // app's, if it has one.
	oooWindow int64
	headMaxt  int64 // Read once needed; math.MinInt64 until then.

	exemplarsEnabled bool

	builder labels.ScratchBuilder
	// latest holds, per series appended in this push, its newest sample.
	// The head checks order only against committed samples, so a sample
	// behind one appended earlier in the same transaction passes Append and
	// is then silently dropped by Commit; latest lets us report it instead.
	latest map[storage.SeriesRef]sample

	appended int
	resent   int // Refused samples found stored identically: success.
	rej      pushError
	// refused are the samples the time rules refused, by refusedSeries,
	// looked up once the push is committed (resend.go); refusedByHash finds
	// a series in refusedSeries (nil until a push refuses a sample), and
	// refusedStored and refusedOrder are the lookup's scratch space.
	refused            []refusal
	refusedSeries      []refusedSeries
	refusedByHash      map[uint64]int
	refusedStored      []bool
	refusedOrder       []int
	exemplarBuf        []exemplar.Exemplar
	exemplarsDiscarded map[string]int
	meta               []familyMetadata     // Metadata seen, for i.metadata.
	wire               censuspb.PushDecoder // The series being decoded, for registerService's Push.
}

// appendWait is how long a push waits for an append slot before it is
// refused as overload: long enough to ride out a burst, short enough that a
// sender backs off rather than queueing on a saturated ingester.
const appendWait = time.Second

// appendPush decodes and appends a push's series (each) and commits them,
// holding one of the ingester's append slots: the CPU-bound part of a
// push. At most --ingester.max-concurrent-appends pushes append at once, so
// a flood of pushes queues here, using no CPU, instead of taking every
// core from queries; the fsync after it needs no slot, so concurrent
// pushes still share fsyncs. A push that gets no slot within appendWait is
// refused with Unavailable.
func (i *Ingester) appendPush(ctx context.Context, st *pushState, each func(st *pushState) error) error {
	wait := time.Now().Add(appendWait)
	if i.appendSlots != nil {
		if err := i.waitAppendSlot(ctx, i.appendSlots, wait, "--ingester.max-concurrent-appends"); err != nil {
			return err
		}
		defer func() { <-i.appendSlots }()
	}
	// While queries read, fewer pushes append at once, so that the queries
	// keep the other cores. A push that began before them finishes as it
	// is: an append holds its slot for milliseconds.
	if i.queryAppendSlots != nil && i.queries.Load() > 0 {
		if err := i.waitAppendSlot(ctx, i.queryAppendSlots, wait, "--ingester.max-concurrent-appends-during-queries"); err != nil {
			return err
		}
		defer func() { <-i.queryAppendSlots }()
	}
	if err := each(st); err != nil {
		if rbErr := st.app.Rollback(); rbErr != nil {
			err = errors.Join(err, fmt.Errorf("roll back push: %w", rbErr))
		}
		return err
	}
	// Commit writes the batch to the WAL file before it returns, so once
	// it has, the batch survives a crash of this process; the syncer makes
	// it survive a crash of the machine.
	if err := st.app.Commit(); err != nil {
		return fmt.Errorf("commit push of %d samples: %w", st.appended, i.noSpace(err))
	}
	// Before the fsync, so that the fsync covers every stored sample a
	// refusal turns out to repeat.
	st.resolveRefusals(ctx)
	return nil
}

// waitAppendSlot takes a slot of slots, waiting until deadline at most. A
// free slot costs no timer: most pushes find one. flag names the limit in
// the error.
func (i *Ingester) waitAppendSlot(ctx context.Context, slots chan struct{}, deadline time.Time, flag string) error {
	select {
	case slots <- struct{}{}:
		return nil
	default:
	}
	wait := time.NewTimer(time.Until(deadline))
	defer wait.Stop()
	select {
	case slots <- struct{}{}:
		return nil
	case <-wait.C:
		i.metrics.throttledPushes.Inc()
		return fmt.Errorf("%w: no append slot within %s; the ingester appends at most %d pushes at once (%s)", errTooManyPushes, appendWait, cap(slots), flag)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sample is one float or native histogram sample.
type sample struct {
	st int64 // Start timestamp, 0 if unknown.
	t  int64
	v  float64
	h  *histogram.Histogram
	fh *histogram.FloatHistogram
}

// identical reports whether s repeats o exactly: the TSDB accepts such a
// duplicate and ignores it.
func (s sample) identical(o sample) bool {
	switch {
	case s.t != o.t:
		return false
	case s.h != nil:
		return o.h != nil && s.h.Equals(o.h)
	case s.fh != nil:
		return o.fh != nil && s.fh.Equals(o.fh)
	}
	return o.h == nil && o.fh == nil && math.Float64bits(s.v) == math.Float64bits(o.v)
}

func (i *Ingester) getPushState(ctx context.Context, db *tsdb.DB) *pushState {
	st, ok := i.pushStates.Get().(*pushState)
	if !ok {
		st = &pushState{latest: map[storage.SeriesRef]sample{}, exemplarsDiscarded: map[string]int{}}
	}
	st.db = db
	st.app = db.AppenderV2(ctx)
	st.exemplars, _ = st.app.(storage.ExemplarAppenderV2)
	st.oooWindow = i.cfg.OutOfOrderWindow.Milliseconds()
	st.exemplarsEnabled = i.cfg.MaxExemplars > 0
	st.headMaxt = math.MinInt64
	return st
}

func (i *Ingester) putPushState(st *pushState) {
	st.db, st.app, st.exemplars = nil, nil, nil
	clear(st.latest)
	st.appended, st.resent = 0, 0
	st.rej = pushError{}
	if cap(st.refused) > maxPooledRefusals {
		// A rare push that refused much should not pin its memory.
		st.refused, st.refusedSeries, st.refusedByHash, st.refusedStored, st.refusedOrder = nil, nil, nil, nil, nil
	}
	clear(st.refused)
	st.refused = st.refused[:0]
	clear(st.refusedSeries)
	st.refusedSeries = st.refusedSeries[:0]
	clear(st.refusedByHash)
	clear(st.exemplarBuf)
	st.exemplarBuf = st.exemplarBuf[:0]
	clear(st.exemplarsDiscarded)
	clear(st.meta)
	st.meta = st.meta[:0]
	st.wire.Reset()
	i.pushStates.Put(st)
}

// add appends the series ts of the push. A series with invalid labels is
// refused; an error is for the whole push.
func (st *pushState) add(ts *censuspb.TimeSeries) error {
	ls, err := censuspb.ToLabels(&st.builder, ts.GetLabels())
	if err != nil {
		var le *censuspb.LabelsError
		errors.As(err, &le)
		st.rej.reject(le.Reason, len(ts.GetSamples())+len(ts.GetHistograms()), err)
		return nil
	}
	return st.appendSeries(ls, ts)
}

// appendSeries appends the samples and histograms of one series with valid
// labels ls, merged by timestamp, then its exemplars, and notes its metadata.
// A sample refused by the time rules is counted in st.rej and skipped; so is
// the whole series if a limit refuses it. Any other error fails the push.
func (st *pushState) appendSeries(ls labels.Labels, ts *censuspb.TimeSeries) error {
	floats, hists := ts.GetSamples(), ts.GetHistograms()
	var (
		ref      storage.SeriesRef
		newest   sample // The newest sample of this series in this push, if have.
		have     bool
		accepted int
	)
	for fi, hi := 0, 0; fi < len(floats) || hi < len(hists); {
		var cur sample
		if hi == len(hists) || fi < len(floats) && floats[fi].GetTimestampMs() <= hists[hi].GetTimestampMs() {
			f := floats[fi]
			cur = sample{st: f.GetStartTimestampMs(), t: f.GetTimestampMs(), v: f.GetValue()}
			fi++
		} else {
			h := hists[hi]
			hi++
			cur.st, cur.t = h.GetStartTimestampMs(), h.GetTimestampMs()
			var err error
			if h.IsFloat() {
				cur.fh = h.ToFloatHistogram()
				err = cur.fh.Validate()
			} else {
				cur.h = h.ToHistogram()
				err = cur.h.Validate()
			}
			if err != nil {
				st.rej.reject(censuspb.ReasonInvalidHistogram, 1, fmt.Errorf("series %s, timestamp %d: invalid native histogram: %w", formatSeries(ls), cur.t, err))
				continue
			}
		}
		if have {
			if cur.identical(newest) {
				continue // Already in this push; the TSDB would ignore it.
			}
			if err := st.follows(newest, cur); err != nil {
				st.refuse(ls, cur, err)
				continue
			}
		}
		// The TSDB keeps start timestamps only with options Prometheus has
		// off by default (created-timestamp zero ingestion); passing them
		// costs nothing and keeps them for when those are turned on.
		got, err := st.app.Append(ref, ls, cur.st, cur.t, cur.v, cur.h, cur.fh, storage.AOptions{})
		if err != nil {
			remaining := len(floats) - fi + len(hists) - hi + 1
			var le *limitError
			switch {
			case errors.As(err, &le):
				st.rej.reject(le.reason, remaining, le)
				return nil
			case errors.Is(err, tsdb.ErrInvalidSample):
				// The TSDB drops labels with empty values; a series of only
				// those has no labels left. Nothing of it was appended.
				st.rej.reject(censuspb.ReasonInvalidLabel, remaining, fmt.Errorf("series %s: %w", formatSeries(ls), err))
				return nil
			case isSampleError(err):
				st.refuse(ls, cur, err)
				continue
			}
			return fmt.Errorf("append to series %s: %w", formatSeries(ls), err)
		}
		if ref == 0 {
			ref = got
			// The same series may have come earlier in this push, as
			// another entry of the request: then cur joined its samples
			// in the transaction, and Commit drops it unless it may
			// follow them. Looking that up only now, by ref, costs
			// nothing for the common case of each series once.
			if prev, ok := st.latest[ref]; ok {
				newest, have = prev, true
				if cur.identical(prev) {
					continue // Commit ignores it.
				}
				if err := st.follows(prev, cur); err != nil {
					st.refuse(ls, cur, err)
					continue
				}
			}
		}
		if !have || cur.t > newest.t {
			newest, have = cur, true
		}
		accepted++
	}
	st.appended += accepted
	if have {
		st.latest[ref] = newest
	}

	if exs := ts.GetExemplars(); len(exs) > 0 {
		st.appendExemplars(ref, ls, exs)
	}
	if md := ts.GetMetadata(); md != nil && (accepted > 0 || len(floats)+len(hists) == 0) {
		st.noteMetadata(ls, md)
	}
	return nil
}

// follows returns the error Commit would drop cur for if it followed prev,
// appended earlier in this push to the same series, or nil if it may follow.
func (st *pushState) follows(prev, cur sample) error {
	switch {
	case cur.t > prev.t:
		return nil
	case cur.t == prev.t:
		if cur.h == nil && cur.fh == nil && prev.h == nil && prev.fh == nil {
			return storage.NewDuplicateFloatErr(cur.t, prev.v, cur.v)
		}
		return fmt.Errorf("%w %d: a different value came earlier in this push", storage.ErrDuplicateSampleForTimestamp, cur.t)
	case st.oooWindow == 0:
		return storage.ErrOutOfOrderSample
	}
	// Commit takes a sample behind the series' newest into the out-of-order
	// chunk if it is within the window of the head's newest sample. The
	// head's newest only grows, so reading it after the appender was made
	// refuses at worst a sample Commit would have taken, never the reverse.
	if st.headMaxt == math.MinInt64 {
		st.headMaxt = st.db.Head().MaxTime()
	}
	if st.headMaxt != math.MinInt64 && cur.t < st.headMaxt-st.oooWindow {
		return storage.ErrTooOldSample
	}
	return nil
}

// rejectSample counts one sample refused by a time rule, with an error that
// names the rule, the window and the series.
func (st *pushState) rejectSample(ls labels.Labels, t int64, err error) {
	var (
		r    censuspb.Reason
		rule string
	)
	window := time.Duration(st.oooWindow) * time.Millisecond
	switch {
	case errors.Is(err, storage.ErrOutOfOrderSample):
		r, rule = censuspb.ReasonOutOfOrder, fmt.Sprintf("older than the newest sample of its series, and --storage.out-of-order-window is %s", window)
	case errors.Is(err, storage.ErrTooOldSample):
		r, rule = censuspb.ReasonTooOldForOutOfOrderWindow, fmt.Sprintf("more than --storage.out-of-order-window=%s behind the newest sample of this ingester", window)
	case errors.Is(err, storage.ErrOutOfBounds):
		r, rule = censuspb.ReasonOutOfBounds, "older than the oldest time the TSDB head still takes (the head's start, about an hour behind its newest sample)"
	default:
		r, rule = censuspb.ReasonDuplicateTimestamp, "a series has one value per timestamp"
	}
	st.rej.reject(r, 1, fmt.Errorf("series %s, timestamp %d: %w: %s", formatSeries(ls), t, err, rule))
}

// isSampleError reports whether the TSDB refused one sample for its
// timestamp. Such a sample is skipped and the rest of its push is stored, as
// Prometheus' remote-write handler does; retrying cannot help.
func isSampleError(err error) bool {
	return errors.Is(err, storage.ErrOutOfOrderSample) ||
		errors.Is(err, storage.ErrOutOfBounds) ||
		errors.Is(err, storage.ErrTooOldSample) ||
		errors.Is(err, storage.ErrDuplicateSampleForTimestamp)
}

// appendExemplars appends the exemplars of the series ls (ref, if known) to
// the transaction. Refused exemplars are counted, never fatal.
func (st *pushState) appendExemplars(ref storage.SeriesRef, ls labels.Labels, wire []*censuspb.Exemplar) {
	if st.exemplars == nil || !st.exemplarsEnabled {
		st.exemplarsDiscarded["disabled"] += len(wire)
		return
	}
	buf := st.exemplarBuf[:0]
	for _, w := range wire {
		e, err := censuspb.ToExemplar(&st.builder, w)
		if err != nil {
			st.exemplarsDiscarded["invalid_labels"]++
			continue
		}
		buf = append(buf, e)
	}
	// The TSDB requires them sorted by time.
	if !slices.IsSortedFunc(buf, compareExemplars) {
		slices.SortStableFunc(buf, compareExemplars)
	}
	st.exemplarBuf = buf
	if len(buf) == 0 {
		return
	}
	_, err := st.exemplars.AppendExemplars(ref, ls, buf)
	var partial *storage.AppendPartialError
	switch {
	case err == nil:
	case errors.As(err, &partial):
		for _, e := range partial.ExemplarErrors {
			st.exemplarsDiscarded[exemplarReason(e.Err)]++
		}
	case errors.Is(err, storage.ErrNotFound):
		// Every sample of a new series was refused: no series to attach to.
		st.exemplarsDiscarded["no_series"] += len(buf)
	default:
		st.exemplarsDiscarded["invalid"] += len(buf)
	}
}

func compareExemplars(a, b exemplar.Exemplar) int {
	switch {
	case a.Ts < b.Ts:
		return -1
	case a.Ts > b.Ts:
		return 1
	}
	return 0
}

func exemplarReason(err error) string {
	switch {
	case errors.Is(err, storage.ErrOutOfOrderExemplar):
		return "out_of_order"
	case errors.Is(err, storage.ErrExemplarLabelLength):
		return "labels_too_long"
	}
	return "invalid"
}

// noteMetadata records the metadata of the series ls, once per run of series
// of one family (a classic histogram's buckets come together).
func (st *pushState) noteMetadata(ls labels.Labels, wire *censuspb.Metadata) {
	name := ls.Get(labels.MetricName)
	if name == "" {
		return
	}
	m := wire.ToMetadata()
	family := metricFamily(name, m)
	if n := len(st.meta); n > 0 && st.meta[n-1].family == family && st.meta[n-1].meta == m {
		return
	}
	st.meta = append(st.meta, familyMetadata{family: family, meta: m})
}
