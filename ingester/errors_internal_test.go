package ingester

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	censuspb "github.com/census-metrics/census/proto"
)

func TestToStatus(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("series {a=\"1\"}, timestamp 5: %w", err) }
	rejected := func(r censuspb.Reason) error {
		var e pushError
		e.reject(r, 2, wrap(errors.New("refused")))
		return &e
	}
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{name: "invalid labels", err: wrap(censuspb.ErrInvalidLabels), want: codes.InvalidArgument},
		{name: "push with a time rule rejection", err: rejected(censuspb.ReasonOutOfOrder), want: codes.InvalidArgument},
		{name: "push with a label limit rejection", err: rejected(censuspb.ReasonLabelValueTooLong), want: codes.InvalidArgument},
		{name: "push with a series limit rejection", err: rejected(censuspb.ReasonMaxSeries), want: codes.ResourceExhausted},
		{name: "invalid matchers", err: fmt.Errorf("%w: bad regexp", errInvalidMatchers), want: codes.InvalidArgument},
		{name: "invalid limit", err: fmt.Errorf("%w: -1", errInvalidLimit), want: codes.InvalidArgument},
		{name: "query limit", err: fmt.Errorf("stream: %w", &queryLimitError{censuspb.QueryLimitMaxSeries, "too many series"}), want: codes.ResourceExhausted},
		{name: "starting", err: fmt.Errorf("%w: replaying WAL: segment 1 of 3", errStarting), want: codes.Unavailable},
		{name: "stopping", err: errStopping, want: codes.Unavailable},
		{name: "closed", err: errClosed, want: codes.Unavailable},
		{name: "caller gone", err: fmt.Errorf("select: %w", context.Canceled), want: codes.Canceled},
		{name: "deadline", err: fmt.Errorf("select: %w", context.DeadlineExceeded), want: codes.DeadlineExceeded},
		{name: "stream error keeps its code", err: fmt.Errorf("send frame: %w", status.Error(codes.Unavailable, "transport closing")), want: codes.Unavailable},
		{name: "disk below its reserve", err: &diskFullError{path: "/data", free: 1 << 20, reserve: 64 << 20}, want: codes.Unavailable},
		{name: "write failed for lack of room", err: fmt.Errorf("commit push of 3 samples: %w", &diskFullError{path: "/data", cause: fmt.Errorf("write to WAL: %w", syscall.ENOSPC)}), want: codes.Unavailable},
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

	e.reject(censuspb.ReasonMaxSeries, 3, errors.New("first over the limit"))
	e.reject(censuspb.ReasonMaxSeries, 2, errors.New("second over the limit"))
	require.Equal(t, codes.ResourceExhausted, e.code(), "only a capacity limit")
	e.reject(censuspb.ReasonOutOfOrder, 1, fmt.Errorf("timestamp 5: %w", storage.ErrOutOfOrderSample))
	e.reject(censuspb.ReasonInvalidLabel, 0, errors.New("no samples, bad labels"))
	err := e.err()
	require.EqualError(t, err, "rejected 6 samples: 0 invalid_label, first: no samples, bad labels; "+
		"1 out_of_order, first: timestamp 5: out of order sample; 5 max_series, first: first over the limit")
	require.ErrorIs(t, err, storage.ErrOutOfOrderSample)
	require.Equal(t, codes.InvalidArgument, e.code(), "bad input wins over limits")

	// The details carry one rejection per reason.
	st := status.Convert(toStatus(err))
	require.Len(t, st.Details(), 1)
	got, ok := st.Details()[0].(*censuspb.PushResponse)
	require.True(t, ok, "details are %T", st.Details()[0])
	want := &censuspb.PushResponse{Rejections: []*censuspb.Rejection{
		{Reason: "invalid_label", Samples: 0, FirstError: "no samples, bad labels"},
		{Reason: "out_of_order", Samples: 1, FirstError: "timestamp 5: out of order sample"},
		{Reason: "max_series", Samples: 5, FirstError: "first over the limit"},
	}}
	require.True(t, proto.Equal(want, got), "got %v", got)
}

func TestDiskFullError(t *testing.T) {
	e := &diskFullError{path: "/data", free: 3 << 20, reserve: 64 << 20}
	require.EqualError(t, e, "disk full: writes refused while /data has 3145728 bytes (3.0MiB) free, below --storage.min-free-bytes=67108864 bytes (64.0MiB); queries are served")
	e.readOnly = true
	require.ErrorContains(t, e, "; the TSDB was opened read-only at start and reopens for writes once there is room")
	e.cause = fmt.Errorf("write to WAL: %w", syscall.ENOSPC)
	require.ErrorIs(t, e, syscall.ENOSPC)
	require.True(t, isNoSpace(fmt.Errorf("commit: %w", e)))
	require.False(t, isNoSpace(errors.New("no space left on device")), "only the errno, not its text")
}

func TestReserveFor(t *testing.T) {
	f := func(set ByteSize, total, want uint64) {
		t.Helper()
		require.Equal(t, want, reserveFor(set, total))
	}
	f(4<<20, 20<<20, 4<<20) // Set: as given, whatever the volume.
	f(0, 20<<20, 64<<20)    // Small volume: the floor.
	f(0, 100<<30, 1<<30)    // 1%.
	f(0, 10<<40, 4<<30)     // The ceiling.
	f(1, 10<<40, 1)         // Practically off.
}
