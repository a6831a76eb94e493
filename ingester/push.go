package ingester

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"

	censuspb "github.com/census-metrics/census/proto"
)

// Push appends a batch of series in one TSDB transaction and commits it, so
// the batch is written to the WAL before Push returns. A series with invalid labels,
// or a sample the TSDB refuses (out of order, out of bounds, duplicate), is
// left out while the rest of the batch is stored; Push then fails with
// InvalidArgument naming the first of them and how many were left out.
func (i *Ingester) Push(ctx context.Context, req *censuspb.PushRequest) (*censuspb.PushResponse, error) {
	err := i.push(ctx, req)
	code := statusCode(err)
	i.metrics.pushRequests.WithLabelValues(code.String()).Inc()
	if err != nil {
		return nil, toStatus(err)
	}
	return &censuspb.PushResponse{}, nil
}

func (i *Ingester) push(ctx context.Context, req *censuspb.PushRequest) error {
	if err := i.acquire(); err != nil {
		return err
	}
	defer i.closeMtx.RUnlock()

	st := i.getPushState()
	defer i.putPushState(st)

	app := i.db.AppenderV2(ctx)
	var (
		rejected pushError
		appended int
	)
	for _, ts := range req.GetSeries() {
		ls, err := censuspb.ToLabels(&st.builder, ts.GetLabels())
		if err != nil {
			rejected.rejectSeries(err)
			continue
		}
		n, err := st.appendSeries(app, ls, ts.GetSamples(), &rejected)
		appended += n
		if err != nil {
			if rbErr := app.Rollback(); rbErr != nil {
				err = errors.Join(err, fmt.Errorf("roll back push: %w", rbErr))
			}
			return err
		}
	}
	// Commit writes the batch to the WAL file before it returns, so once
	// Push acknowledges, the batch survives a crash of this process. It
	// does not fsync: a machine crash can still lose the newest pushes.
	if err := app.Commit(); err != nil {
		return fmt.Errorf("commit push of %d samples: %w", appended, err)
	}
	i.metrics.samplesAppended.Add(float64(appended))
	return rejected.err()
}

// pushState is the scratch space of one Push, pooled because Push is the
// ingester's hot path. It belongs to one push at a time.
type pushState struct {
	builder labels.ScratchBuilder
	// latest holds, per series appended in this push, its newest sample.
	// The head checks order only against committed samples, so a sample
	// behind one appended earlier in the same transaction passes Append and
	// is then silently dropped by Commit; latest lets us reject it instead.
	latest map[storage.SeriesRef]sample
}

type sample struct {
	t int64
	v float64
}

func (i *Ingester) getPushState() *pushState {
	if st, ok := i.pushStates.Get().(*pushState); ok {
		return st
	}
	return &pushState{latest: map[storage.SeriesRef]sample{}}
}

func (i *Ingester) putPushState(st *pushState) {
	clear(st.latest)
	i.pushStates.Put(st)
}

// appendSeries appends the samples of one series with valid labels ls to app
// and returns how many it appended. A sample the TSDB refuses, or one that
// would not be in order after this push's earlier samples of the series, is
// counted in rejected and skipped; so is the whole series if the TSDB refuses
// its labels. Any other error fails the push.
func (st *pushState) appendSeries(app storage.AppenderV2, ls labels.Labels, samples []*censuspb.Sample, rejected *pushError) (int, error) {
	var (
		ref      storage.SeriesRef
		newest   sample // The newest sample of this series appended in this push, if any.
		appended bool
		n        int
	)
	for _, s := range samples {
		t, v := s.GetTimestampMs(), s.GetValue()
		if appended {
			if identical(newest, t, v) {
				continue // Already in this push; the TSDB would ignore it.
			}
			if err := inOrder(newest, t, v); err != nil {
				rejected.rejectSample(fmt.Errorf("series %s, timestamp %d: %w", ls, t, err))
				continue
			}
		}
		got, err := app.Append(ref, ls, 0, t, v, nil, nil, storage.AOptions{})
		switch {
		case err == nil:
		case isSampleError(err):
			rejected.rejectSample(fmt.Errorf("series %s, timestamp %d: %w", ls, t, err))
			continue
		case errors.Is(err, tsdb.ErrInvalidSample):
			// The TSDB drops labels with empty values; a series of only
			// those has no labels left. Nothing of it was appended.
			rejected.rejectSeries(fmt.Errorf("series %s: %w", ls, err))
			return n, nil
		default:
			return n, fmt.Errorf("append to series %s: %w", ls, err)
		}
		if ref == 0 {
			ref = got
			// The same series may have come earlier in this push, as
			// another entry of the request.
			if prev, ok := st.latest[ref]; ok {
				// This sample is in the transaction already: if it does
				// not follow prev, Commit drops it, so count it here.
				newest, appended = prev, true
				if identical(prev, t, v) {
					continue
				}
				if err := inOrder(prev, t, v); err != nil {
					rejected.rejectSample(fmt.Errorf("series %s, timestamp %d: %w", ls, t, err))
					continue
				}
			}
		}
		newest, appended = sample{t: t, v: v}, true
		n++
	}
	if appended {
		st.latest[ref] = newest
	}
	return n, nil
}

// identical reports whether (t, v) repeats prev exactly: the TSDB accepts
// such a duplicate and ignores it.
func identical(prev sample, t int64, v float64) bool {
	return t == prev.t && math.Float64bits(v) == math.Float64bits(prev.v)
}

// inOrder returns the error the head's Commit would drop a sample (t, v) for
// if it followed prev in one series, or nil if it may follow. It is the
// in-order rule; it must change once an out-of-order window is configurable.
func inOrder(prev sample, t int64, v float64) error {
	switch {
	case t < prev.t:
		return storage.ErrOutOfOrderSample
	case t == prev.t && math.Float64bits(v) != math.Float64bits(prev.v):
		return storage.NewDuplicateFloatErr(t, prev.v, v)
	}
	return nil
}
