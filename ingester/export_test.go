package ingester

import "context"

// CompactHead runs the TSDB's compaction now instead of on its minute
// timer: the head becomes a block once it spans 1.5 block ranges.
func (i *Ingester) CompactHead(ctx context.Context) error {
	return i.openDB.Load().Compact(ctx)
}

// PushEncoded is RegisterServer's Push without gRPC, for benchmarks to
// tell the ingester's cost from the transport's.
func (i *Ingester) PushEncoded(ctx context.Context, req []byte) error {
	_, err := i.pushEncoded(ctx, req)
	return err
}
