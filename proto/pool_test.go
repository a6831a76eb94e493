package censuspb

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
)

func TestClientPool_OneConnectionPerAddress(t *testing.T) {
	pool := NewClientPool()
	t.Cleanup(func() { require.NoError(t, pool.Close()) })

	// Concurrent first uses of one address share one connection.
	conns := make([]grpc.ClientConnInterface, 8)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() {
			c, err := pool.Conn("127.0.0.1:1")
			require.NoError(t, err)
			conns[i] = c
		})
	}
	wg.Wait()
	for _, c := range conns {
		require.Same(t, conns[0], c)
	}
	other, err := pool.Conn("127.0.0.1:2")
	require.NoError(t, err)
	require.NotSame(t, conns[0], other)

	a, err := pool.Get("127.0.0.1:1")
	require.NoError(t, err)
	b, err := pool.Get("127.0.0.1:1")
	require.NoError(t, err)
	require.Same(t, a, b, "the client is made once per connection")
}

func TestClientPool_Retain(t *testing.T) {
	pool := NewClientPool()
	t.Cleanup(func() { require.NoError(t, pool.Close()) })
	conn := func(addr string) *grpc.ClientConn {
		c, err := pool.Conn(addr)
		require.NoError(t, err)
		return c.(*grpc.ClientConn)
	}
	kept, gone := conn("127.0.0.1:1"), conn("127.0.0.1:2")
	members := map[string]bool{"127.0.0.1:1": true}
	keep := func(addr string) bool { return members[addr] }

	// An address that left gets one more interval: a caller that read
	// the ring just before may still be using it.
	require.Equal(t, 0, pool.Retain(keep))
	require.Same(t, gone, conn("127.0.0.1:2"))
	require.Equal(t, 1, pool.Retain(keep))
	require.Equal(t, connectivity.Shutdown, gone.GetState(), "the connection of the address that left is closed")
	require.NotSame(t, gone, conn("127.0.0.1:2"), "a later use connects again")
	require.Same(t, kept, conn("127.0.0.1:1"))
	require.NotEqual(t, connectivity.Shutdown, kept.GetState())

	// An address back in the ring before its second chance is kept.
	require.Equal(t, 0, pool.Retain(keep))
	members["127.0.0.1:2"] = true
	require.Equal(t, 0, pool.Retain(keep))
	require.Equal(t, 0, pool.Retain(keep))
	require.NotEqual(t, connectivity.Shutdown, conn("127.0.0.1:2").GetState())
}

// BenchmarkClientPool_Get is the lookup every push and fan-out makes, from
// as many goroutines as there are cores.
func BenchmarkClientPool_Get(b *testing.B) {
	pool := NewClientPool()
	b.Cleanup(func() { _ = pool.Close() })
	addrs := []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}
	for _, a := range addrs {
		_, err := pool.Get(a)
		require.NoError(b, err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := pool.Get(addrs[i%len(addrs)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// TestClientPool_ReconnectsAtOnce: a use of a connection that failed makes
// it reconnect now, not after its backoff (here a minute): an ingester that
// restarts gets traffic as soon as it serves.
func TestClientPool_ReconnectsAtOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())

	pool := NewClientPool(grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: time.Minute, Multiplier: 1, MaxDelay: time.Minute},
		MinConnectTimeout: time.Second,
	}))
	t.Cleanup(func() { require.NoError(t, pool.Close()) })
	c, err := pool.Conn(addr)
	require.NoError(t, err)
	conn := c.(*grpc.ClientConn)
	conn.Connect()
	require.Eventually(t, func() bool { return conn.GetState() == connectivity.TransientFailure }, 10*time.Second, 5*time.Millisecond)

	// The ingester is back on its address.
	ln, err = net.Listen("tcp", addr)
	require.NoError(t, err)
	srv := grpc.NewServer()
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	require.Eventually(t, func() bool {
		_, err := pool.Conn(addr)
		require.NoError(t, err)
		return conn.GetState() == connectivity.Ready
	}, 10*time.Second, 10*time.Millisecond, "the connection is ready long before its minute of backoff")
}
