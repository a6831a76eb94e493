package censuspb

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestQueryLimitStatus(t *testing.T) {
	for _, limit := range []QueryLimit{QueryLimitMaxSeries, QueryLimitMaxChunks} {
		err := QueryLimitStatus(limit, "too much").Err()
		require.Equal(t, codes.ResourceExhausted, status.Code(err))
		require.Equal(t, "too much", status.Convert(err).Message())
		require.Equal(t, limit, QueryLimitOf(err))
		// The detail survives the trip through the wire form of a status.
		require.Equal(t, limit, QueryLimitOf(status.FromProto(status.Convert(err).Proto()).Err()))
		require.Equal(t, limit, QueryLimitOf(fmt.Errorf("wrapped: %w", err)))
	}
	require.Empty(t, QueryLimitOf(status.Error(codes.ResourceExhausted, "memory full")), "another ResourceExhausted is no query limit")
	require.Empty(t, QueryLimitOf(errors.New("plain")))
	require.Empty(t, QueryLimitOf(nil))
}
