package distributor

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	censuspb "github.com/census-metrics/census/proto"
)

// ErrNoQuorum is wrapped by commit errors where some series reached fewer
// than a quorum of their replicas: those samples are not acknowledged and
// the sender should retry them.
var ErrNoQuorum = errors.New("no quorum")

// ErrInvalidSeries is wrapped by errors for input that can never be stored
// (invalid labels, sample types not supported yet); retrying cannot help.
var ErrInvalidSeries = errors.New("invalid series")

// ErrLimited is wrapped by commit errors where an ingester refused part of
// the input because a limit was reached; the rest was stored.
var ErrLimited = errors.New("limit reached")

// noQuorumError reports which ingesters failed and how many series they
// left without a quorum.
func noQuorumError(seriesWithoutQuorum, quorum int, failed map[string]error) error {
	ids := make([]string, 0, len(failed))
	for id := range failed {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var sb strings.Builder
	for i, id := range ids {
		if i > 0 {
			sb.WriteString("; ")
		}
		fmt.Fprintf(&sb, "%s: %v", id, failed[id])
	}
	return fmt.Errorf("%w: %d series stored on fewer than %d replicas; failed ingesters: %s", ErrNoQuorum, seriesWithoutQuorum, quorum, sb.String())
}

// overloadedError is a commit short of its quorum where an ingester refused
// its push for load: over its limits, it answered with a RetryInfo asking
// to be retried later. The sender should send again, but not at once.
type overloadedError struct {
	err        error // Wraps ErrNoQuorum.
	retryAfter time.Duration
}

func (e *overloadedError) Error() string { return e.err.Error() }
func (e *overloadedError) Unwrap() error { return e.err }

// ingesterRetryDelay returns how long an ingester that answered err asked to
// be left alone, in a RetryInfo of its status: an ingester over its push
// limits asks for it. It is 0 for any other answer.
func ingesterRetryDelay(err error) time.Duration {
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return 0
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return max(ri.GetRetryDelay().AsDuration(), time.Nanosecond)
		}
	}
	return 0
}

// retryAfter returns how long a sender should wait before it sends again a
// push that failed with err, as the Retry-After of its 429; 0 if it may
// send again at once.
func retryAfter(err error) time.Duration {
	var oe *overloadedError
	if errors.As(err, &oe) {
		return oe.retryAfter
	}
	return 0
}

// rejections counts what a transaction refused at Append, per reason,
// keeping the first error of each reason.
type rejections struct {
	samples            [censuspb.NumReasons]int
	first              [censuspb.NumReasons]error
	floats, histograms int
	exemplars          int // Exemplars dropped with their samples.
}

func (r *rejections) add(rs censuspb.Reason, err error, isHistogram bool, exemplars int) {
	r.samples[rs]++
	if r.first[rs] == nil {
		r.first[rs] = err
	}
	if isHistogram {
		r.histograms++
	} else {
		r.floats++
	}
	r.exemplars += exemplars
}

// err returns nil when nothing was refused, else a *RejectedError.
func (r *rejections) err() error {
	if r.floats+r.histograms == 0 {
		return nil
	}
	return &RejectedError{samples: r.samples, first: r.first}
}

// RejectedError reports the samples a transaction refused because they
// broke a validation rule, per reason, with the first error of each. It
// wraps ErrInvalidSeries: sending them again cannot help.
type RejectedError struct {
	samples [censuspb.NumReasons]int
	first   [censuspb.NumReasons]error
}

// Samples returns how many samples were refused.
func (e *RejectedError) Samples() int {
	n := 0
	for _, s := range e.samples {
		n += s
	}
	return n
}

func (e *RejectedError) Error() string {
	var parts []string
	for r := range censuspb.NumReasons {
		if e.samples[r] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s, first: %v", e.samples[r], r, e.first[r]))
		}
	}
	return fmt.Sprintf("%v: refused %d samples: %s", ErrInvalidSeries, e.Samples(), strings.Join(parts, "; "))
}

// Unwrap returns ErrInvalidSeries and the first error of each reason.
func (e *RejectedError) Unwrap() []error {
	errs := []error{ErrInvalidSeries}
	for _, err := range e.first {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// refusalError is an ingester's refusal of part of a push: InvalidArgument
// for input it will never store, ResourceExhausted when it is full. Its
// status details carry a censuspb.PushResponse, one Rejection per reason.
type refusalError struct {
	ingester   string
	status     *status.Status
	rejections []*censuspb.Rejection
}

func newRefusalError(ingester string, st *status.Status) *refusalError {
	e := &refusalError{ingester: ingester, status: st}
	for _, d := range st.Details() {
		if resp, ok := d.(*censuspb.PushResponse); ok {
			e.rejections = append(e.rejections, resp.Rejections...)
		}
	}
	return e
}

func (e *refusalError) samples() int64 {
	var n int64
	for _, r := range e.rejections {
		n += r.Samples
	}
	return n
}

func (e *refusalError) Error() string {
	if len(e.rejections) == 0 {
		return fmt.Sprintf("ingester %s refused the push: %s", e.ingester, e.status.Message())
	}
	parts := make([]string, 0, len(e.rejections))
	for _, r := range e.rejections {
		parts = append(parts, fmt.Sprintf("%d %s, first: %s", r.Samples, r.Reason, r.FirstError))
	}
	return fmt.Sprintf("ingester %s refused %d samples: %s", e.ingester, e.samples(), strings.Join(parts, "; "))
}

// GRPCStatus lets status.FromError and status.Code see the ingester's
// status through the wrapping.
func (e *refusalError) GRPCStatus() *status.Status { return e.status }

// capacity reports whether the ingester refused samples only for lack of
// room: its ResourceExhausted with a PushResponse. A ResourceExhausted
// without one is gRPC's own, such as a request over the ingester's size
// limit, which sending again cannot fix.
func (e *refusalError) capacity() bool {
	return e.status.Code() == codes.ResourceExhausted && len(e.rejections) > 0
}

// httpStatus is the one place where push errors meet HTTP status codes, as
// the remote-write specification wants them: 2xx stored, 4xx never to be
// retried (the data is wrong), 429 and 5xx to be retried. A sample short
// of its quorum is retryable, and wins over refusals in the same push: the
// sender must send again, and the refused samples are refused again.
func httpStatus(err error) int {
	if err == nil {
		return http.StatusOK
	}
	var (
		re *refusalError
		oe *overloadedError
	)
	switch {
	case errors.As(err, &oe):
		// Before ErrNoQuorum, which it wraps: a 503 is sent again at
		// once, adding to the load that made the ingesters refuse it.
		return http.StatusTooManyRequests
	case errors.Is(err, ErrNoQuorum),
		errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable
	case errors.As(err, &re) && re.status.Code() == codes.ResourceExhausted && !re.capacity():
		return http.StatusInternalServerError
	case errors.Is(err, ErrLimited):
		return http.StatusTooManyRequests
	case errors.Is(err, ErrInvalidSeries):
		return http.StatusBadRequest
	}
	switch status.Code(err) {
	case codes.InvalidArgument:
		return http.StatusBadRequest
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// retryable reports whether a sender should send a push again after err:
// 429 and 5xx.
func retryable(err error) bool {
	code := httpStatus(err)
	return code == http.StatusTooManyRequests || code >= 500
}
