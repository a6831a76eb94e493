package ingester

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	censuspb "github.com/census-metrics/census/proto"
)

var (
	// errClosed is returned by requests that arrive after Close.
	errClosed = errors.New("ingester is closed")
	// errInvalidMatchers wraps a matcher the TSDB cannot use, such as a
	// regular expression that does not compile.
	errInvalidMatchers = errors.New("invalid matchers")
	// errInvalidLimit is returned for a negative limit.
	errInvalidLimit = errors.New("invalid limit")
)

// pushError reports what a push left out: the series with invalid labels and
// the samples the TSDB refused. Everything else of the push was committed.
type pushError struct {
	rejectedSeries  int
	firstSeriesErr  error // Names the first rejected series.
	rejectedSamples int
	firstSampleErr  error // Names the first rejected sample's series and timestamp.
}

func (e *pushError) Error() string {
	var parts []string
	if e.rejectedSeries > 0 {
		parts = append(parts, fmt.Sprintf("rejected %d series, first: %v", e.rejectedSeries, e.firstSeriesErr))
	}
	if e.rejectedSamples > 0 {
		parts = append(parts, fmt.Sprintf("rejected %d samples, first: %v", e.rejectedSamples, e.firstSampleErr))
	}
	return strings.Join(parts, "; ")
}

func (e *pushError) Unwrap() []error {
	var errs []error
	if e.firstSeriesErr != nil {
		errs = append(errs, e.firstSeriesErr)
	}
	if e.firstSampleErr != nil {
		errs = append(errs, e.firstSampleErr)
	}
	return errs
}

// rejectSeries counts a series left out of a push and keeps the first reason.
func (e *pushError) rejectSeries(err error) {
	e.rejectedSeries++
	if e.firstSeriesErr == nil {
		e.firstSeriesErr = err
	}
}

// rejectSample counts a sample left out of a push and keeps the first reason.
func (e *pushError) rejectSample(err error) {
	e.rejectedSamples++
	if e.firstSampleErr == nil {
		e.firstSampleErr = err
	}
}

// err returns e if anything was rejected, else nil.
func (e *pushError) err() error {
	if e.rejectedSeries == 0 && e.rejectedSamples == 0 {
		return nil
	}
	return e
}

// isSampleError reports whether the TSDB refused one sample for its
// timestamp or value. Such a sample is skipped and the rest of its push is
// stored, as Prometheus' remote-write handler does; retrying cannot help.
func isSampleError(err error) bool {
	return errors.Is(err, storage.ErrOutOfOrderSample) ||
		errors.Is(err, storage.ErrOutOfBounds) ||
		errors.Is(err, storage.ErrTooOldSample) ||
		errors.Is(err, storage.ErrDuplicateSampleForTimestamp)
}

// toStatus converts an error of a request into the gRPC status its client
// sees. It is the one place where ingester errors meet codes: input at fault
// is InvalidArgument (never retried), a closed ingester is Unavailable (try
// another replica), and nothing leaves as Unknown.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	return status.Error(statusCode(err), err.Error())
}

func statusCode(err error) codes.Code {
	var pe *pushError
	switch {
	case err == nil:
		return codes.OK
	case errors.As(err, &pe),
		errors.Is(err, censuspb.ErrInvalidLabels),
		errors.Is(err, tsdb.ErrInvalidSample),
		errors.Is(err, errInvalidMatchers),
		errors.Is(err, errInvalidLimit),
		isSampleError(err):
		return codes.InvalidArgument
	case errors.Is(err, errClosed):
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
