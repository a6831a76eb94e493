package ingester

import (
	"context"
	"net"

	"google.golang.org/grpc"

	censuspb "github.com/census-metrics/census/proto"
)

// CompactHead runs the TSDB's compaction now instead of on its minute
// timer: the head becomes a block once it spans 1.5 block ranges.
func (i *Ingester) CompactHead(ctx context.Context) error {
	return i.openDB.Load().Compact(ctx)
}

// PushEncoded is registerService's Push without gRPC, for benchmarks to
// tell the ingester's cost from the transport's.
func (i *Ingester) PushEncoded(ctx context.Context, req []byte) error {
	_, err := i.pushEncoded(ctx, req)
	return err
}

// ToStatus is the error mapping of a Server's interceptors, for tests that
// call the ingester's methods directly.
func ToStatus(err error) error { return toStatus(err) }

// NewGeneratedServer is NewServer with the generated code's Push, which
// decodes the request with proto.Unmarshal, for tests to compare it with
// registerService's decoder.
func NewGeneratedServer(i *Ingester, ln net.Listener) *Server {
	return newServer(i, ln, func(s *grpc.Server) { censuspb.RegisterIngesterServer(s, i) })
}

// SetStatDisk makes i read the free and total bytes of its storage volume
// from stat instead of statfs. Call it before Run.
func SetStatDisk(i *Ingester, stat func(path string) (free, total uint64, err error)) {
	i.statDisk = func(path string) (diskSpace, error) {
		free, total, err := stat(path)
		return diskSpace{free: free, total: total}, err
	}
}

// DiskCheckInterval is how often an ingester reads its volume's free space.
const DiskCheckInterval = diskCheckInterval

// OccupyPushSlots counts n more pushes in flight (negative: fewer), as if
// that many were being worked on.
func (i *Ingester) OccupyPushSlots(n int64) { i.inflightPushes.Add(n) }

// OccupyPushBytes counts n more request bytes in flight (negative: fewer).
func (i *Ingester) OccupyPushBytes(n int64) { i.inflightPushBytes.Add(n) }

// OccupyQueryAppendSlots takes n of the append slots that pushes need
// while queries read, and returns what gives them back.
func (i *Ingester) OccupyQueryAppendSlots(n int) (free func()) {
	for range n {
		i.queryAppendSlots <- struct{}{}
	}
	return func() {
		for range n {
			<-i.queryAppendSlots
		}
	}
}
