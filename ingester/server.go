package ingester

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"

	censuspb "github.com/census-metrics/census/proto"
)

// DrainTimeout is how long a stopping Server lets in-flight calls finish
// before it cuts off the rest (a client that stopped reading its stream).
const DrainTimeout = 10 * time.Second

// Server serves an Ingester over gRPC: the censuspb.Ingester service with
// its own push decoding (registerService), messages up to the push limit, and
// every error of a call mapped to its gRPC code once, by interceptors, as
// toStatus says.
type Server struct {
	grpc *grpc.Server
	ln   net.Listener
}

// NewServer returns a Server of i on ln. opts come after its own options
// (so they may override the message sizes), and their interceptors run
// outside its error mapping.
func NewServer(i *Ingester, ln net.Listener, opts ...grpc.ServerOption) *Server {
	return newServer(i, ln, func(s *grpc.Server) { registerService(s, i) }, opts...)
}

func newServer(i *Ingester, ln net.Listener, register func(*grpc.Server), opts ...grpc.ServerOption) *Server {
	all := []grpc.ServerOption{
		// Pushes are the only big messages an ingester receives.
		grpc.MaxRecvMsgSize(int(i.cfg.Limits.MaxRequestBytes)),
		grpc.MaxSendMsgSize(censuspb.MaxMessageSize),
		// Census clients ping idle connections to find a hung peer.
		grpc.KeepaliveEnforcementPolicy(censuspb.KeepaliveEnforcement),
	}
	// Interceptors chain in the order given, the first outermost: the
	// caller's see the gRPC status the client gets.
	all = append(all, opts...)
	all = append(all, grpc.ChainUnaryInterceptor(unaryStatus), grpc.ChainStreamInterceptor(streamStatus))
	s := grpc.NewServer(all...)
	register(s)
	return &Server{grpc: s, ln: ln}
}

// Run serves until ctx ends, then drains: calls in flight finish, new ones
// fail with Unavailable, and after DrainTimeout the stragglers are cut
// off. It returns once the server has stopped.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve gRPC: %w", err)
	case <-ctx.Done():
	}
	drained := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(DrainTimeout):
		s.grpc.Stop()
		<-drained
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve gRPC: %w", err)
	}
	return nil
}

// AdvertiseAddr is the address other components dial for the listener a:
// a itself when bound to one IP, else this host's first non-loopback IPv4
// address, else loopback.
func AdvertiseAddr(a net.Addr) string {
	tcp := a.(*net.TCPAddr)
	if !tcp.IP.IsUnspecified() {
		return tcp.String()
	}
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, addr := range addrs {
			if ipn, ok := addr.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
				return net.JoinHostPort(ipn.IP.String(), fmt.Sprint(tcp.Port))
			}
		}
	}
	return net.JoinHostPort("127.0.0.1", fmt.Sprint(tcp.Port))
}

func unaryStatus(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

func streamStatus(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return toStatus(handler(srv, ss))
}
