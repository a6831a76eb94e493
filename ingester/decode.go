package ingester

import (
	"context"
	"fmt"
	"slices"

	"google.golang.org/grpc"

	censuspb "github.com/census-metrics/census/proto"
)

// registerService registers i on s as the censuspb.Ingester service, with a
// Push that takes its request undecoded and reads it with a
// censuspb.PushDecoder, so a push allocates about one object per series:
// its labels. Requests and answers are the same as
// with censuspb.RegisterIngesterServer, and s needs no special codec.
func registerService(s grpc.ServiceRegistrar, i *Ingester) {
	desc := censuspb.Ingester_ServiceDesc
	desc.Methods = slices.Clone(desc.Methods)
	for k := range desc.Methods {
		if desc.Methods[k].MethodName == "Push" {
			desc.Methods[k].Handler = pushEncodedHandler
		}
	}
	s.RegisterService(&desc, i)
}

// pushEncodedHandler is the gRPC handler of registerService's Push: gRPC's
// codec hands it the request undecoded, in an encodedRequest.
func pushEncodedHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	i := srv.(*Ingester)
	in, _ := i.encodedRequests.Get().(*encodedRequest)
	if in == nil {
		in = &encodedRequest{}
	}
	defer i.putEncodedRequest(in)
	if err := dec(in); err != nil {
		return nil, err
	}
	push := func(ctx context.Context, req any) (any, error) {
		return i.pushEncoded(ctx, req.(*encodedRequest).b)
	}
	if interceptor == nil {
		return push(ctx, in)
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: censuspb.Ingester_Push_FullMethodName}
	return interceptor(ctx, in, info, push)
}

// maxPooledRequest bounds the buffers kept for the next push: a rare huge
// push should not pin its memory.
const maxPooledRequest = 4 << 20

func (i *Ingester) putEncodedRequest(r *encodedRequest) {
	if cap(r.b) <= maxPooledRequest {
		r.b = r.b[:0]
		i.encodedRequests.Put(r)
	}
}

// encodedRequest is a PushRequest in its wire form. It is a protobuf message
// of the legacy (APIv1) kind with an Unmarshal method, which the protobuf
// runtime, and so gRPC's codec, calls with the message's bytes instead of
// decoding them: Unmarshal keeps a copy, in a buffer reused across pushes.
type encodedRequest struct {
	b []byte
}

// Reset forgets the request.
func (r *encodedRequest) Reset() { r.b = r.b[:0] }

// String describes the request for logs.
func (r *encodedRequest) String() string {
	return fmt.Sprintf("census.v1.PushRequest (%d bytes, encoded)", len(r.b))
}

// ProtoMessage marks encodedRequest as a protobuf message.
func (*encodedRequest) ProtoMessage() {}

// Unmarshal keeps a copy of b: gRPC reuses b once Unmarshal returns.
func (r *encodedRequest) Unmarshal(b []byte) error {
	r.b = append(r.b[:0], b...)
	return nil
}

// pushEncoded is Push for a request in its wire form.
func (i *Ingester) pushEncoded(ctx context.Context, req []byte) (*censuspb.PushResponse, error) {
	if limit := int64(i.cfg.Limits.MaxInflightPushBytes); limit > 0 {
		size := int64(len(req))
		n := i.inflightPushBytes.Add(size)
		defer i.inflightPushBytes.Add(-size)
		// A push larger than the limit is taken when it is alone, so
		// that the limit never refuses a push for good.
		if n > limit && n != size {
			i.metrics.throttledPushes.Inc()
			return i.pushResult(fmt.Errorf("%w: the ingester works on at most %s of pushes at once (--ingester.max-inflight-push-bytes)", errTooManyPushes, i.cfg.Limits.MaxInflightPushBytes))
		}
	}
	err := i.pushWith(ctx, func(st *pushState) error { return st.wire.Decode(req, st.add) })
	return i.pushResult(err)
}
