package querier

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/census-metrics/census/ring"

	censuspb "github.com/census-metrics/census/proto"
)

// IngesterError is the failure of one ingester during one read. Errors the
// querier returns and the warnings it adds wrap it, so callers can find
// which ingesters failed with errors.As.
type IngesterError struct {
	Instance ring.InstanceDesc
	Err      error
}

// Error names the ingester by ID and address.
func (e *IngesterError) Error() string {
	return fmt.Sprintf("ingester %s (%s): %v", e.Instance.ID, e.Instance.Addr, e.Err)
}

// Unwrap returns the ingester's error.
func (e *IngesterError) Unwrap() error { return e.Err }

// IngesterErrors is the failure of a read: more ingesters failed than the
// replication factor covers.
type IngesterErrors struct {
	Failed            []*IngesterError
	Asked             int
	ReplicationFactor int
}

// Error names every failed ingester.
func (e *IngesterErrors) Error() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%d of %d ingesters failed, more than replication factor %d tolerates: ", len(e.Failed), e.Asked, e.ReplicationFactor)
	for i, f := range e.Failed {
		if i > 0 {
			sb.WriteString("; ")
		}
		sb.WriteString(f.Error())
	}
	return sb.String()
}

// As makes the error a promql.ErrStorage too, so the HTTP API answers 500,
// a server failure worth retrying, instead of 422, a query that cannot run.
func (e *IngesterErrors) As(target any) bool {
	if t, ok := target.(*promql.ErrStorage); ok {
		*t = promql.ErrStorage{Err: e}
		return true
	}
	return false
}

// Unwrap returns the failures of the single ingesters.
func (e *IngesterErrors) Unwrap() []error {
	errs := make([]error, len(e.Failed))
	for i, f := range e.Failed {
		errs[i] = f
	}
	return errs
}

// failures collects the ingesters that failed during one read and decides
// whether their replicas still make the answer complete: every series has
// ReplicationFactor copies on distinct ingesters, so up to RF-1 failed
// ingesters lose no series. Zone awareness could tolerate more (a whole
// zone); that is for later.
type failures struct {
	ctx   context.Context // The caller's: once it is done, failures are its fault.
	rf    int
	asked int

	mtx    sync.Mutex // Guards failed: the ingesters of a fan-out fail concurrently.
	failed []*IngesterError
}

func newFailures(ctx context.Context, rf, asked int) *failures {
	return &failures{ctx: ctx, rf: max(rf, 1), asked: asked}
}

func (f *failures) add(inst ring.InstanceDesc, err error) {
	f.mtx.Lock()
	defer f.mtx.Unlock()
	f.failed = append(f.failed, &IngesterError{Instance: inst, Err: err})
}

// err returns the error of the read, nil while the failures are tolerated.
func (f *failures) err() error {
	f.mtx.Lock()
	defer f.mtx.Unlock()
	n := len(f.failed)
	switch {
	case n == 0:
		return nil
	case f.ctx.Err() != nil:
		// The ingesters failed because the query was canceled or timed
		// out; say so, so the API answers "canceled" or "timeout".
		return fmt.Errorf("query ingesters: %w", context.Cause(f.ctx))
	case n < f.rf && n < f.asked:
		return nil
	}
	return &IngesterErrors{Failed: slices.Clone(f.failed), Asked: f.asked, ReplicationFactor: f.rf}
}

// warnings names each tolerated failure, so a user learns that the answer
// came from fewer replicas than usual.
func (f *failures) warnings() annotations.Annotations {
	if f.err() != nil {
		return nil
	}
	f.mtx.Lock()
	defer f.mtx.Unlock()
	var ws annotations.Annotations
	for _, e := range f.failed {
		ws.Add(fmt.Errorf("answered from replicas: %w", e))
	}
	return ws
}

// fanOut calls fn once per instance, concurrently, and returns the results
// indexed like instances along with the failures. A failed call leaves the
// zero T in its place.
func fanOut[T any](ctx context.Context, q *Queryable, op string, instances []ring.InstanceDesc, fn func(context.Context, censuspb.IngesterClient) (T, error)) ([]T, *failures) {
	results := make([]T, len(instances))
	fails := newFailures(ctx, q.ring.ReplicationFactor(), len(instances))
	var wg sync.WaitGroup
	for i, inst := range instances {
		wg.Go(func() {
			begin := time.Now()
			c, err := q.clients.Get(inst.Addr)
			var res T
			if err == nil {
				res, err = fn(ctx, c)
			}
			q.metrics.requestDuration.WithLabelValues(op).Observe(time.Since(begin).Seconds())
			if err != nil {
				if ctx.Err() == nil {
					q.metrics.requestErrors.WithLabelValues(op).Inc()
				}
				q.logger.Debug("Ingester request failed", "operation", op, "ingester", inst.ID, "addr", inst.Addr, "err", err)
				fails.add(inst, err)
				return
			}
			results[i] = res
		})
	}
	wg.Wait()
	return results, fails
}
