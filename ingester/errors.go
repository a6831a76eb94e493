package ingester

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	censuspb "github.com/census-metrics/census/proto"
)

var (
	// errStarting is returned by requests that arrive before the TSDB is
	// open, wrapped with the WAL replay's progress.
	errStarting = errors.New("ingester is starting")
	// errStopping is returned by requests that arrive once the ingester
	// has been told to stop.
	errStopping = errors.New("ingester is stopping")
	// errClosed is returned by requests that arrive after the TSDB closed.
	errClosed = errors.New("ingester is closed")
	// errLeaving is a push to an ingester that is decommissioning: its
	// series have new owners in the ring.
	errLeaving = errors.New("ingester is decommissioning: its series go to their new owners in the ring")
	// errTooManyPushes is a push over the in-flight limit.
	errTooManyPushes = errors.New("too many pushes in flight")
	// errInvalidMatchers wraps a matcher the TSDB cannot use, such as a
	// regular expression that does not compile.
	errInvalidMatchers = errors.New("invalid matchers")
	// errInvalidLimit is returned for a negative limit.
	errInvalidLimit = errors.New("invalid limit")
)

// overloadRetryDelay is how long a push over the push limits asks its
// sender to wait (errTooManyPushes): about as long as a push waits for an
// append slot before it is refused.
const overloadRetryDelay = time.Second

// queryLimitError is a read stopped at a limit its request handed: it
// reaches the querier as ResourceExhausted naming the limit.
type queryLimitError struct {
	limit censuspb.QueryLimit
	msg   string
}

func (e *queryLimitError) Error() string { return "query limit exceeded: " + e.msg }

// capacity reports whether r is the ingester running out of room rather
// than the input being wrong: the same samples may be accepted later, once
// series have gone from the head. Label limits are input errors: the same
// series is refused forever, so a sender must not retry it.
func capacity(r censuspb.Reason) bool {
	return r == censuspb.ReasonMaxSeries || r == censuspb.ReasonMaxSeriesPerMetric
}

// pushError reports what a push left out, per reason. Everything else of the
// push was committed.
type pushError struct {
	samples [censuspb.NumReasons]int64
	series  [censuspb.NumReasons]int // Rejections, to tell a reason with 0 samples from none.
	first   [censuspb.NumReasons]error
}

// reject counts n samples refused for r and keeps the first error of r.
func (e *pushError) reject(r censuspb.Reason, n int, err error) {
	e.samples[r] += int64(n)
	e.series[r]++
	if e.first[r] == nil {
		e.first[r] = err
	}
}

// err returns e if anything was refused, else nil.
func (e *pushError) err() error {
	for r := range censuspb.NumReasons {
		if e.series[r] > 0 {
			return e
		}
	}
	return nil
}

func (e *pushError) Error() string {
	var (
		parts []string
		total int64
	)
	for r := range censuspb.NumReasons {
		if e.series[r] == 0 {
			continue
		}
		total += e.samples[r]
		parts = append(parts, fmt.Sprintf("%d %s, first: %v", e.samples[r], r, e.first[r]))
	}
	return fmt.Sprintf("rejected %d samples: %s", total, strings.Join(parts, "; "))
}

func (e *pushError) Unwrap() []error {
	var errs []error
	for _, err := range e.first {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// code is InvalidArgument if any input was wrong, and ResourceExhausted if
// only capacity limits refused samples.
func (e *pushError) code() codes.Code {
	for r := range censuspb.NumReasons {
		if e.series[r] > 0 && !capacity(r) {
			return codes.InvalidArgument
		}
	}
	return codes.ResourceExhausted
}

// response lists the rejections for the status details.
func (e *pushError) response() *censuspb.PushResponse {
	resp := &censuspb.PushResponse{}
	for r := range censuspb.NumReasons {
		if e.series[r] == 0 {
			continue
		}
		resp.Rejections = append(resp.Rejections, &censuspb.Rejection{
			Reason:     r.String(),
			Samples:    e.samples[r],
			FirstError: truncate(e.first[r].Error()),
		})
	}
	return resp
}

// toStatus converts an error of a request into the gRPC status its client
// sees. It is the one place where ingester errors meet codes: input at fault
// is InvalidArgument (never retried), a full ingester or a query over its
// limits is ResourceExhausted, an ingester not serving or with a full disk
// is Unavailable (try another replica), and nothing leaves as Unknown. A push that refused
// samples carries a censuspb.PushResponse in the status details, one
// Rejection per reason.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	var pe *pushError
	if errors.As(err, &pe) {
		st, detailsErr := status.New(pe.code(), err.Error()).WithDetails(pe.response())
		if detailsErr != nil {
			// Only a message that cannot be marshalled fails here.
			return status.Error(codes.Internal, fmt.Sprintf("%v (and attaching its details failed: %v)", err, detailsErr))
		}
		return st.Err()
	}
	var qe *queryLimitError
	if errors.As(err, &qe) {
		return censuspb.QueryLimitStatus(qe.limit, err.Error()).Err()
	}
	if errors.Is(err, errTooManyPushes) {
		// Unavailable sends the distributor to the other replicas; the
		// RetryInfo tells it this one is overloaded, not down, so that it
		// answers a push left short of its quorum 429 with Retry-After:
		// the sender backs off instead of sending again at once.
		st, detailsErr := status.New(codes.Unavailable, err.Error()).WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(overloadRetryDelay)})
		if detailsErr == nil {
			return st.Err()
		}
	}
	return status.Error(statusCode(err), err.Error())
}

func statusCode(err error) codes.Code {
	var (
		pe *pushError
		qe *queryLimitError
		de *diskFullError
	)
	switch {
	case err == nil:
		return codes.OK
	case errors.As(err, &de):
		// Before the wrapped write error, whatever it is: the ingester
		// cannot take writes, another replica can.
		return codes.Unavailable
	case errors.As(err, &pe):
		return pe.code()
	case errors.Is(err, censuspb.ErrInvalidLabels),
		errors.Is(err, censuspb.ErrMalformedPush),
		errors.Is(err, errInvalidMatchers),
		errors.Is(err, errInvalidLimit):
		return codes.InvalidArgument
	case errors.As(err, &qe):
		return codes.ResourceExhausted
	case errors.Is(err, errStarting), errors.Is(err, errStopping), errors.Is(err, errClosed), errors.Is(err, errLeaving), errors.Is(err, errTooManyPushes):
		return codes.Unavailable
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	}
	// A gRPC stream error (client gone mid-stream) already carries its code.
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return s.Code()
	}
	return codes.Internal
}
