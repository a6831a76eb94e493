package censuspb

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// EncodedPushRequest is a PushRequest in its wire form, as built with
// AppendPushRequestSeries.
type EncodedPushRequest []byte

// PushEncoded sends an encoded push request to the ingester behind cc. The
// request bytes are read until PushEncoded returns, and not after.
func PushEncoded(ctx context.Context, cc grpc.ClientConnInterface, req EncodedPushRequest) (*PushResponse, error) {
	out := new(PushResponse)
	if err := cc.Invoke(ctx, Ingester_Push_FullMethodName, req, out, grpc.ForceCodecV2(encodedCodec{})); err != nil {
		return nil, err
	}
	return out, nil
}

// encodedCodec sends an EncodedPushRequest as it is and handles every other
// message, the response included, with gRPC's protobuf codec. Its name is
// the protobuf codec's, so the server decodes the request as usual.
type encodedCodec struct{}

func (encodedCodec) Marshal(v any) (mem.BufferSlice, error) {
	if req, ok := v.(EncodedPushRequest); ok {
		return mem.BufferSlice{mem.SliceBuffer(req)}, nil
	}
	return encoding.GetCodecV2(grpcproto.Name).Marshal(v)
}

func (encodedCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return encoding.GetCodecV2(grpcproto.Name).Unmarshal(data, v)
}

func (encodedCodec) Name() string { return grpcproto.Name }
