package querier

import (
	"context"
	"errors"
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
// replicas cover (see failures).
type IngesterErrors struct {
	Failed            []*IngesterError
	Asked             int
	ReplicationFactor int
}

// Error names every failed ingester.
func (e *IngesterErrors) Error() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%d of %d ingesters failed, more than replication factor %d tolerates (add partial_response=true for what the others have): ", len(e.Failed), e.Asked, e.ReplicationFactor)
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

// errUnhealthy is the failure of an ingester the ring still lists but that
// stopped heartbeating: it is not asked, and its replicas count as missing.
var errUnhealthy = errors.New("unhealthy in the ring: no recent heartbeat, not asked")

// errHedged is the failure of an ingester that had not answered a read by
// the hedge delay after the others held a read quorum of every series: it
// is not waited for, and its replicas count as missing.
var errHedged = errors.New("no answer within the hedge delay after the other replicas answered; not waited for")

// DefaultHedgeDelay is --query.hedge-delay's default: far above the first
// answer of a healthy ingester (milliseconds), far below the seconds a
// hung one would cost every query until the ring or the connection's
// keepalive gives it up.
const DefaultHedgeDelay = 2 * time.Second

// failures collects the ingesters that failed during one read and decides
// whether the replicas on the others still make the answer complete.
//
// A push is acknowledged once a quorum of RF/2+1 replicas stored it, so an
// acknowledged sample may be missing on RF/2 replicas of its series. A read
// is therefore complete only when it reached RF-RF/2 replicas of every
// series: it tolerates RF/2 failed ingesters (one of three, two of five).
// When every ingester has a zone and there are at least RF zones, the ring
// puts the replicas of a series in distinct zones, so failures confined to
// RF/2 zones are tolerated however many ingesters those zones hold: a whole
// zone may be down. A request for a partial response tolerates any failure
// and is told what is missing in warnings.
type failures struct {
	ctx     context.Context // The caller's: once it is done, failures are its fault.
	rf      int
	all     []ring.InstanceDesc // Every instance that may hold data, asked or not.
	partial bool

	mtx    sync.Mutex // Guards the fields below: the ingesters of a fan-out fail concurrently.
	failed []*IngesterError
	limit  *LimitError // An ingester stopped at a limit of the query.
}

// newFailures returns the failures of a read of asked; unhealthy instances
// were not asked and count as failed from the start. Without either, the
// read fails with ErrNoIngesters, and the request of ctx notes it.
func newFailures(ctx context.Context, rf int, asked, unhealthy []ring.InstanceDesc) *failures {
	f := &failures{ctx: ctx, rf: max(rf, 1), all: slices.Concat(asked, unhealthy), partial: partialResponse(ctx)}
	if req := requestFrom(ctx); req != nil && len(f.all) == 0 {
		req.noIngesters.Store(true)
	}
	for _, inst := range unhealthy {
		f.failed = append(f.failed, &IngesterError{Instance: inst, Err: errUnhealthy})
	}
	return f
}

// add records the failure of inst. An ingester that stopped at a limit of
// the query failed nothing: the query fails with that limit, however many
// replicas the others have.
func (f *failures) add(inst ring.InstanceDesc, err error) {
	limit := requestFrom(f.ctx).ingesterLimit(err)
	f.mtx.Lock()
	defer f.mtx.Unlock()
	if limit != nil {
		f.limit = limit
		return
	}
	f.failed = append(f.failed, &IngesterError{Instance: inst, Err: err})
}

// err returns the error of the read, nil while the failures are tolerated.
func (f *failures) err() error {
	f.mtx.Lock()
	defer f.mtx.Unlock()
	switch {
	case len(f.all) == 0:
		// Nothing to ask: an empty answer would claim there is no data.
		// Not even a partial response has anything to show.
		return ErrNoIngesters
	case f.limit != nil:
		return f.limit
	case len(f.failed) == 0:
		return nil
	case f.timedOut():
		// The ingesters failed because the query timed out or was
		// canceled; say so in the engine's terms, so the API answers as
		// Prometheus does: 503 "timeout" or 499 "canceled".
		return promql.ErrQueryTimeout("fetching series from the ingesters")
	case f.ctx.Err() != nil:
		return promql.ErrQueryCanceled("fetching series from the ingesters")
	case f.partial, f.toleratedLocked():
		return nil
	}
	return &IngesterErrors{Failed: slices.Clone(f.failed), Asked: len(f.all), ReplicationFactor: f.rf}
}

// timedOut reports whether the read's deadline has passed. It looks at the
// clock rather than at ctx.Err: gRPC fails a stream at the deadline on a
// timer of its own, which may fire before the context's.
func (f *failures) timedOut() bool {
	deadline, ok := f.ctx.Deadline()
	return errors.Is(f.ctx.Err(), context.DeadlineExceeded) || (ok && !time.Now().Before(deadline))
}

// toleratesAlso reports whether the replicas on the ingesters that did not
// fail would still hold every series if the ingesters of more failed too.
func (f *failures) toleratesAlso(more []ring.InstanceDesc) bool {
	f.mtx.Lock()
	defer f.mtx.Unlock()
	n := len(f.failed)
	defer func() { f.failed = f.failed[:n] }()
	for _, inst := range more {
		f.failed = append(f.failed, &IngesterError{Instance: inst, Err: errHedged})
	}
	return f.toleratedLocked()
}

// toleratedLocked reports whether the replicas on the ingesters that did
// not fail hold every series.
func (f *failures) toleratedLocked() bool {
	n := len(f.failed)
	if n >= len(f.all) {
		return false
	}
	if n <= f.rf/2 {
		return true
	}
	zones := map[string]struct{}{}
	for _, inst := range f.all {
		if inst.Zone == "" {
			return false
		}
		zones[inst.Zone] = struct{}{}
	}
	if len(zones) < f.rf {
		return false
	}
	clear(zones)
	for _, e := range f.failed {
		zones[e.Instance.Zone] = struct{}{}
	}
	return len(zones) <= f.rf/2
}

// warnings names each failure of an answer that is returned anyway: from
// the other replicas when they cover it, or as a partial response when the
// request asked for one.
func (f *failures) warnings() annotations.Annotations {
	if f.err() != nil {
		return nil
	}
	f.mtx.Lock()
	defer f.mtx.Unlock()
	if len(f.failed) == 0 {
		return nil
	}
	prefix := "answered from replicas"
	if !f.toleratedLocked() {
		prefix = "partial response, series may be missing"
	}
	var ws annotations.Annotations
	for _, e := range f.failed {
		ws.Add(fmt.Errorf("%s: %w", prefix, e))
	}
	return ws
}

// instances returns the instances a read asks, and those it cannot ask
// because the ring reports them unhealthy.
func (q *Queryable) instances() (asked, unhealthy []ring.InstanceDesc) {
	asked = q.ring.ReadInstances()
	for _, inst := range q.ring.Instances() {
		// A LEFT instance is a tombstone: it holds nothing. Any other
		// state may hold data a read needs.
		if inst.State == ring.LEFT {
			continue
		}
		if slices.ContainsFunc(asked, func(a ring.InstanceDesc) bool { return a.ID == inst.ID }) {
			continue
		}
		unhealthy = append(unhealthy, inst)
	}
	return asked, unhealthy
}

// fanOut calls fn once per instance the read asks, concurrently, and
// returns the results, a zero T for each failed call, along with the
// failures. When the ring has no instance to ask, the failures' err is
// ErrNoIngesters.
func fanOut[T any](ctx context.Context, q *Queryable, op string, fn func(context.Context, censuspb.IngesterClient) (T, error)) ([]T, *failures) {
	instances, unhealthy := q.instances()
	results := make([]T, len(instances))
	fails := newFailures(ctx, q.ring.ReplicationFactor(), instances, unhealthy)
	done := make(chan int, len(instances))
	cancels := make([]context.CancelCauseFunc, len(instances))
	for i, inst := range instances {
		var callCtx context.Context
		callCtx, cancels[i] = context.WithCancelCause(ctx)
		go func() {
			defer func() { done <- i }()
			begin := time.Now()
			c, err := q.clients.Get(inst.Addr)
			var res T
			if err == nil {
				res, err = fn(callCtx, c)
			}
			q.metrics.requestDuration.WithLabelValues(op).Observe(time.Since(begin).Seconds())
			if err != nil {
				if cause := context.Cause(callCtx); errors.Is(cause, errHedged) {
					err = cause
				}
				if ctx.Err() == nil {
					q.metrics.requestErrors.WithLabelValues(op).Inc()
				}
				q.logger.Debug("Ingester request failed", "operation", op, "ingester", inst.ID, "addr", inst.Addr, "err", err)
				fails.add(inst, err)
				return
			}
			results[i] = res
		}()
	}
	for range hedge(done, instances, cancels, fails, q.HedgeDelay) {
		<-done
	}
	for _, cancel := range cancels {
		cancel(nil)
	}
	return results, fails
}

// hedge waits for the calls to instances, which report their index on done
// as they end: for all of them, or, once the ended ones leave fails
// tolerating the rest (a read quorum of every series answered), for delay
// more; 0 waits for all. Then it ends the calls still pending with
// errHedged, and returns how many are, whose ends are still to come on done.
func hedge(done <-chan int, instances []ring.InstanceDesc, cancels []context.CancelCauseFunc, fails *failures, delay time.Duration) int {
	pending := make(map[int]bool, len(instances))
	for i := range instances {
		pending[i] = true
	}
	var hedged <-chan time.Time
	for len(pending) > 0 {
		select {
		case i := <-done:
			delete(pending, i)
			if hedged == nil && delay > 0 && len(pending) > 0 && fails.toleratesAlso(pendingOf(instances, pending)) {
				t := time.NewTimer(delay)
				defer t.Stop()
				hedged = t.C
			}
		case <-hedged:
			for i := range pending {
				cancels[i](errHedged)
			}
			return len(pending)
		}
	}
	return 0
}

// pendingOf returns the instances at the indexes in pending.
func pendingOf(instances []ring.InstanceDesc, pending map[int]bool) []ring.InstanceDesc {
	out := make([]ring.InstanceDesc, 0, len(pending))
	for i := range pending {
		out = append(out, instances[i])
	}
	return out
}
