package ingester

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	censuspb "github.com/census-metrics/census/proto"
)

func TestToStatus(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("series {a=\"1\"}, timestamp 5: %w", err) }
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{name: "invalid labels", err: wrap(censuspb.ErrInvalidLabels), want: codes.InvalidArgument},
		{name: "empty label set", err: wrap(tsdb.ErrInvalidSample), want: codes.InvalidArgument},
		{name: "out of order", err: wrap(storage.ErrOutOfOrderSample), want: codes.InvalidArgument},
		{name: "out of bounds", err: wrap(storage.ErrOutOfBounds), want: codes.InvalidArgument},
		{name: "too old", err: wrap(storage.ErrTooOldSample), want: codes.InvalidArgument},
		{name: "duplicate", err: wrap(storage.NewDuplicateFloatErr(5, 1, 2)), want: codes.InvalidArgument},
		{name: "push with rejections", err: &pushError{rejectedSamples: 1, firstSampleErr: wrap(storage.ErrOutOfOrderSample)}, want: codes.InvalidArgument},
		{name: "invalid matchers", err: fmt.Errorf("%w: bad regexp", errInvalidMatchers), want: codes.InvalidArgument},
		{name: "invalid limit", err: fmt.Errorf("%w: -1", errInvalidLimit), want: codes.InvalidArgument},
		{name: "closed", err: errClosed, want: codes.Unavailable},
		{name: "caller gone", err: fmt.Errorf("select: %w", context.Canceled), want: codes.Canceled},
		{name: "deadline", err: fmt.Errorf("select: %w", context.DeadlineExceeded), want: codes.DeadlineExceeded},
		{name: "stream error keeps its code", err: fmt.Errorf("send frame: %w", status.Error(codes.Unavailable, "transport closing")), want: codes.Unavailable},
		{name: "anything else", err: errors.New("write to WAL: disk full"), want: codes.Internal},
		{name: "unknown status becomes internal", err: status.Error(codes.Unknown, "?"), want: codes.Internal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(toStatus(tc.err))
			require.Equal(t, tc.want, st.Code())
			require.Equal(t, tc.err.Error(), st.Message())
		})
	}
	require.NoError(t, toStatus(nil))
}

func TestPushError(t *testing.T) {
	var e pushError
	require.NoError(t, e.err())

	e.rejectSeries(errors.New("first series"))
	e.rejectSeries(errors.New("second series"))
	e.rejectSample(storage.ErrOutOfBounds)
	err := e.err()
	require.EqualError(t, err, "rejected 2 series, first: first series; rejected 1 samples, first: out of bounds")
	require.ErrorIs(t, err, storage.ErrOutOfBounds)
}
