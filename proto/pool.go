package censuspb

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// MaxMessageSize bounds one gRPC message either way: large enough for a
// push batch or a stream frame of chunks, small enough that one message
// cannot exhaust a process.
const MaxMessageSize = 64 << 20

// Keepalive: a client pings an idle connection every KeepaliveTime and
// closes it when the ping has no answer within KeepaliveTimeout, so calls
// to a hung ingester (stopped, or on a dead node whose kernel still holds
// the TCP connection) fail over to other replicas within seconds instead
// of waiting for their deadline. Servers must allow pings this often
// (KeepaliveEnforcement), or they would close the connection for pinging
// too much.
const (
	KeepaliveTime    = 10 * time.Second
	KeepaliveTimeout = 5 * time.Second
)

// KeepaliveEnforcement is the policy a Census gRPC server needs for the
// pings of Census clients.
var KeepaliveEnforcement = keepalive.EnforcementPolicy{MinTime: KeepaliveTime / 2, PermitWithoutStream: true}

// ClientPool keeps one gRPC connection per ingester address, shared by every
// caller. Connections are made lazily and reconnect by themselves, so a pool
// entry stays valid across ingester restarts; Retain closes those of
// addresses that left. Every push and fan-out looks its connections up
// here, so a lookup takes only a read lock.
type ClientPool struct {
	opts []grpc.DialOption

	mtx   sync.RWMutex // Guards conns, and entries' stale.
	conns map[string]*poolEntry
}

type poolEntry struct {
	conn   *grpc.ClientConn
	client IngesterClient
	// stale is set by a Retain that did not keep the address; the next
	// one closes the connection if it does not keep it either.
	stale bool
	// lastReset is when a use last cut the connection's reconnect backoff
	// short (unix nanoseconds).
	lastReset atomic.Int64
}

// backoffResetInterval bounds how often uses of a failed connection make it
// reconnect at once.
const backoffResetInterval = time.Second

// NewClientPool returns a pool whose connections use opts after Census'
// defaults (plaintext, MaxMessageSize, keepalive).
func NewClientPool(opts ...grpc.DialOption) *ClientPool {
	defaults := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(MaxMessageSize),
			grpc.MaxCallSendMsgSize(MaxMessageSize),
		),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout, PermitWithoutStream: true}),
	}
	return &ClientPool{opts: append(defaults, opts...), conns: map[string]*poolEntry{}}
}

// Get returns the client for the ingester at addr, creating its connection
// on first use.
func (p *ClientPool) Get(addr string) (IngesterClient, error) {
	e, err := p.entry(addr)
	if err != nil {
		return nil, err
	}
	return e.client, nil
}

// Conn returns the connection to the ingester at addr, creating it on
// first use, for calls the generated client does not make (PushEncoded).
func (p *ClientPool) Conn(addr string) (grpc.ClientConnInterface, error) {
	e, err := p.entry(addr)
	if err != nil {
		return nil, err
	}
	return e.conn, nil
}

func (p *ClientPool) entry(addr string) (*poolEntry, error) {
	p.mtx.RLock()
	e, ok := p.conns[addr]
	p.mtx.RUnlock()
	if ok {
		e.resetBackoff()
		return e, nil
	}
	p.mtx.Lock()
	defer p.mtx.Unlock()
	// Another caller may have connected while we waited for the lock.
	if e, ok := p.conns[addr]; ok {
		return e, nil
	}
	c, err := grpc.NewClient(addr, p.opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to ingester %s: %w", addr, err)
	}
	e = &poolEntry{conn: c, client: NewIngesterClient(c)}
	p.conns[addr] = e
	return e, nil
}

// resetBackoff makes a connection that failed reconnect now rather than
// after its backoff, at most once per backoffResetInterval. Callers use an
// address because the ring lists its ingester as healthy: one that was
// restarted is ready long before gRPC's backoff (up to two minutes) would
// try it again, and would get no traffic meanwhile.
func (e *poolEntry) resetBackoff() {
	if e.conn.GetState() != connectivity.TransientFailure {
		return
	}
	now := time.Now().UnixNano()
	last := e.lastReset.Load()
	if now-last < int64(backoffResetInterval) || !e.lastReset.CompareAndSwap(last, now) {
		return
	}
	e.conn.ResetConnectBackoff()
}

// Retain closes the connections of the addresses keep refuses twice in a
// row, and returns how many it closed. The second chance lets a caller
// that read the ring just before an instance left finish its call.
func (p *ClientPool) Retain(keep func(addr string) bool) int {
	p.mtx.Lock()
	defer p.mtx.Unlock()
	closed := 0
	for addr, e := range p.conns {
		switch {
		case keep(addr):
			e.stale = false
		case !e.stale:
			e.stale = true
		default:
			// Close fails only for a connection closed already.
			_ = e.conn.Close()
			delete(p.conns, addr)
			closed++
		}
	}
	return closed
}

// RetainEvery calls Retain(keep) every interval until ctx ends.
func (p *ClientPool) RetainEvery(ctx context.Context, interval time.Duration, keep func(addr string) bool) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			p.Retain(keep)
		}
	}
}

// Close closes every connection; the pool must not be used afterwards.
func (p *ClientPool) Close() error {
	p.mtx.Lock()
	defer p.mtx.Unlock()
	var errs []error
	for addr, e := range p.conns {
		if err := e.conn.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close connection to %s: %w", addr, err))
		}
		delete(p.conns, addr)
	}
	return errors.Join(errs...)
}
