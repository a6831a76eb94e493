package ingester_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/census-metrics/census/ingester"
	censuspb "github.com/census-metrics/census/proto"
)

// TestServer_RunDrains stops a Server while a call is in flight: Run waits
// for it, the call succeeds, and the interceptors a caller adds run outside
// the error mapping.
func TestServer_RunDrains(t *testing.T) {
	ti := startIngester(t, t.TempDir())
	entered, release := make(chan struct{}), make(chan struct{})
	var holding atomic.Bool
	seen := make(chan error, 1)
	hold := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if holding.Load() {
			close(entered)
			<-release
		}
		resp, err := handler(ctx, req)
		if err != nil {
			seen <- err
		}
		return resp, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := ingester.NewServer(ti.ing, ln, grpc.ChainUnaryInterceptor(hold))
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(ctx) }()

	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := censuspb.NewIngesterClient(conn)

	// The caller's interceptor sees the gRPC status the client gets.
	_, err = client.TSDBStats(context.Background(), &censuspb.TSDBStatsRequest{Limit: -1})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "error: %v", err)
	require.Equal(t, codes.InvalidArgument, status.Code(<-seen))

	holding.Store(true)
	called := make(chan error, 1)
	go func() {
		_, err := client.TSDBStats(context.Background(), &censuspb.TSDBStatsRequest{})
		called <- err
	}()
	<-entered
	cancel()
	select {
	case err := <-ran:
		t.Fatalf("Run returned with a call in flight: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	require.NoError(t, <-called)
	require.NoError(t, <-ran)
}
