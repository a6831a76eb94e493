package censuspb

import (
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// MaxMessageSize bounds one gRPC message either way: large enough for a
// push batch or a stream frame of chunks, small enough that one message
// cannot exhaust a process.
const MaxMessageSize = 64 << 20

// ClientPool keeps one gRPC connection per ingester address, shared by every
// caller. Connections are made lazily and reconnect by themselves, so a pool
// entry stays valid across ingester restarts.
type ClientPool struct {
	opts []grpc.DialOption

	mtx   sync.Mutex // Guards conns.
	conns map[string]*grpc.ClientConn
}

// NewClientPool returns a pool whose connections use opts after Census'
// defaults (plaintext, MaxMessageSize).
func NewClientPool(opts ...grpc.DialOption) *ClientPool {
	defaults := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(MaxMessageSize),
			grpc.MaxCallSendMsgSize(MaxMessageSize),
		),
	}
	return &ClientPool{opts: append(defaults, opts...), conns: map[string]*grpc.ClientConn{}}
}

// Get returns the client for the ingester at addr, creating its connection
// on first use.
func (p *ClientPool) Get(addr string) (IngesterClient, error) {
	c, err := p.Conn(addr)
	if err != nil {
		return nil, err
	}
	return NewIngesterClient(c), nil
}

// Conn returns the connection to the ingester at addr, creating it on
// first use, for calls the generated client does not make (PushEncoded).
func (p *ClientPool) Conn(addr string) (grpc.ClientConnInterface, error) {
	p.mtx.Lock()
	defer p.mtx.Unlock()
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, p.opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to ingester %s: %w", addr, err)
	}
	p.conns[addr] = c
	return c, nil
}

// Close closes every connection; the pool must not be used afterwards.
func (p *ClientPool) Close() error {
	p.mtx.Lock()
	defer p.mtx.Unlock()
	var errs []error
	for addr, c := range p.conns {
		if err := c.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close connection to %s: %w", addr, err))
		}
		delete(p.conns, addr)
	}
	return errors.Join(errs...)
}
