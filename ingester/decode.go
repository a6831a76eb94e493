package ingester

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	censuspb "github.com/census-metrics/census/proto"
)

// RegisterServer registers i on s as the censuspb.Ingester service, with a
// Push that decodes its request itself. Decoding a PushRequest with the
// generated code allocates three objects per label and dominates the cost
// of a push; this Push reads the labels and samples of each series in place
// from the request's bytes into reused messages, so a push allocates about
// one object per series: its labels. Requests and answers are the same as
// with censuspb.RegisterIngesterServer, and s needs no special codec.
func RegisterServer(s grpc.ServiceRegistrar, i *Ingester) {
	desc := censuspb.Ingester_ServiceDesc
	desc.Methods = slices.Clone(desc.Methods)
	for k := range desc.Methods {
		if desc.Methods[k].MethodName == "Push" {
			desc.Methods[k].Handler = pushEncodedHandler
		}
	}
	s.RegisterService(&desc, i)
}

// pushEncodedHandler is the gRPC handler of RegisterServer's Push: gRPC's
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
	err := i.pushWith(ctx, func(st *pushState) error { return st.decodeRequest(req) })
	return i.pushResult(err)
}

// errMalformed wraps a push request that is not a valid PushRequest.
var errMalformed = errors.New("malformed push request")

// Field numbers of census.proto's push messages, pinned against the
// generated code by TestDecodeMatchesGenerated.
const (
	fieldPushRequestSeries   protowire.Number = 1
	fieldTimeSeriesLabels    protowire.Number = 1
	fieldTimeSeriesSamples   protowire.Number = 2
	fieldTimeSeriesHistogram protowire.Number = 3
	fieldTimeSeriesExemplar  protowire.Number = 4
	fieldTimeSeriesMetadata  protowire.Number = 5
	fieldLabelPairName       protowire.Number = 1
	fieldLabelPairValue      protowire.Number = 2
	fieldSampleTimestamp     protowire.Number = 1
	fieldSampleValue         protowire.Number = 2
	fieldSampleStart         protowire.Number = 3
)

// wireSeries is the reused space one decoded series lives in: the label
// pairs and samples beyond the length of ts.Labels and ts.Samples are kept
// for the next series.
type wireSeries struct {
	ts censuspb.TimeSeries
}

// pair returns a label pair appended to w.ts.Labels, reused if one is kept.
func (w *wireSeries) pair() *censuspb.LabelPair {
	n := len(w.ts.Labels)
	if n < cap(w.ts.Labels) {
		if p := w.ts.Labels[:n+1][n]; p != nil {
			w.ts.Labels = w.ts.Labels[:n+1]
			return p
		}
	}
	p := &censuspb.LabelPair{}
	w.ts.Labels = append(w.ts.Labels, p)
	return p
}

// sample returns a sample appended to w.ts.Samples, reused if one is kept.
func (w *wireSeries) sample() *censuspb.Sample {
	n := len(w.ts.Samples)
	if n < cap(w.ts.Samples) {
		if s := w.ts.Samples[:n+1][n]; s != nil {
			w.ts.Samples = w.ts.Samples[:n+1]
			return s
		}
	}
	s := &censuspb.Sample{}
	w.ts.Samples = append(w.ts.Samples, s)
	return s
}

// reset forgets the decoded series, keeping its messages for reuse but
// none of the request's bytes.
func (w *wireSeries) reset() {
	for _, p := range w.ts.Labels {
		p.Name, p.Value = nil, nil
	}
	w.ts.Labels, w.ts.Samples = w.ts.Labels[:0], w.ts.Samples[:0]
	w.ts.Histograms, w.ts.Exemplars, w.ts.Metadata = nil, nil, nil
}

// decodeRequest appends every series of the wire-form PushRequest b. The
// label names and values of the series view b: they are copied by
// censuspb.ToLabels, and nothing else keeps them.
func (st *pushState) decodeRequest(b []byte) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: %w", errMalformed, protowire.ParseError(n))
		}
		b = b[n:]
		if num != fieldPushRequestSeries || typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return fmt.Errorf("%w: %w", errMalformed, protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return fmt.Errorf("%w: series: %w", errMalformed, protowire.ParseError(n))
		}
		b = b[n:]
		ts, err := st.wire.decode(v)
		if err != nil {
			return err
		}
		if err := st.add(ts); err != nil {
			return err
		}
	}
	return nil
}

// decode reads one TimeSeries from b into w, and returns it. It is valid
// until the next decode.
func (w *wireSeries) decode(b []byte) (*censuspb.TimeSeries, error) {
	w.reset()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, fmt.Errorf("%w: series field: %w", errMalformed, protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.BytesType || num < fieldTimeSeriesLabels || num > fieldTimeSeriesMetadata {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return nil, fmt.Errorf("%w: series field %d: %w", errMalformed, num, protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return nil, fmt.Errorf("%w: series field %d: %w", errMalformed, num, protowire.ParseError(n))
		}
		b = b[n:]
		var err error
		switch num {
		case fieldTimeSeriesLabels:
			err = decodeLabelPair(w.pair(), v)
		case fieldTimeSeriesSamples:
			err = decodeSample(w.sample(), v)
		case fieldTimeSeriesHistogram:
			// Histograms, exemplars and metadata are rare next to
			// labels and samples, and the head keeps histograms: they
			// get messages of their own.
			h := &censuspb.Histogram{}
			err = proto.Unmarshal(v, h)
			w.ts.Histograms = append(w.ts.Histograms, h)
		case fieldTimeSeriesExemplar:
			e := &censuspb.Exemplar{}
			err = proto.Unmarshal(v, e)
			w.ts.Exemplars = append(w.ts.Exemplars, e)
		case fieldTimeSeriesMetadata:
			w.ts.Metadata = &censuspb.Metadata{}
			err = proto.Unmarshal(v, w.ts.Metadata)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: series field %d: %w", errMalformed, num, err)
		}
	}
	return &w.ts, nil
}

func decodeLabelPair(p *censuspb.LabelPair, b []byte) error {
	p.Name, p.Value = nil, nil
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == fieldLabelPairName || num == fieldLabelPairValue) {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			if num == fieldLabelPairName {
				p.Name = v
			} else {
				p.Value = v
			}
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
	}
	return nil
}

func decodeSample(s *censuspb.Sample, b []byte) error {
	s.TimestampMs, s.Value, s.StartTimestampMs = 0, 0, 0
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case num == fieldSampleTimestamp && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			s.TimestampMs = int64(v)
		case num == fieldSampleStart && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			s.StartTimestampMs = int64(v)
		case num == fieldSampleValue && typ == protowire.Fixed64Type:
			v, n := protowire.ConsumeFixed64(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			s.Value = math.Float64frombits(v)
		default:
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return nil
}
