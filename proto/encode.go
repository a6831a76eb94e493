package censuspb

import (
	"math"

	"github.com/prometheus/prometheus/model/labels"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Hand-written encoding of the push path's messages. A sender encodes each
// series once, into bytes it reuses, and then builds the request of every
// replica from those bytes: marshalling TimeSeries messages instead costs
// an allocation per label and one full marshal per replica. The field
// numbers below are census.proto's; TestEncode pins them against the
// generated code.
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
	fieldSampleStartTime     protowire.Number = 3
)

// AppendSeriesLabels appends ls to b as the labels of an encoded TimeSeries.
func AppendSeriesLabels(b []byte, ls labels.Labels) []byte {
	ls.Range(func(l labels.Label) {
		size := 0
		if l.Name != "" {
			size += protowire.SizeTag(fieldLabelPairName) + protowire.SizeBytes(len(l.Name))
		}
		if l.Value != "" {
			size += protowire.SizeTag(fieldLabelPairValue) + protowire.SizeBytes(len(l.Value))
		}
		b = protowire.AppendTag(b, fieldTimeSeriesLabels, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(size))
		if l.Name != "" {
			b = protowire.AppendTag(b, fieldLabelPairName, protowire.BytesType)
			b = protowire.AppendString(b, l.Name)
		}
		if l.Value != "" {
			b = protowire.AppendTag(b, fieldLabelPairValue, protowire.BytesType)
			b = protowire.AppendString(b, l.Value)
		}
	})
	return b
}

// AppendSample appends one float sample to b as a sample of an encoded
// TimeSeries.
func AppendSample(b []byte, t int64, v float64) []byte {
	return AppendSampleWithStart(b, 0, t, v)
}

// AppendSampleWithStart appends one float sample with its start timestamp
// st (0 if unknown) to b as a sample of an encoded TimeSeries.
func AppendSampleWithStart(b []byte, st, t int64, v float64) []byte {
	bits := math.Float64bits(v)
	size := 0
	if t != 0 {
		size += protowire.SizeTag(fieldSampleTimestamp) + protowire.SizeVarint(uint64(t))
	}
	if bits != 0 {
		size += protowire.SizeTag(fieldSampleValue) + protowire.SizeFixed64()
	}
	if st != 0 {
		size += protowire.SizeTag(fieldSampleStartTime) + protowire.SizeVarint(uint64(st))
	}
	b = protowire.AppendTag(b, fieldTimeSeriesSamples, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(size))
	if t != 0 {
		b = protowire.AppendTag(b, fieldSampleTimestamp, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(t))
	}
	if bits != 0 {
		b = protowire.AppendTag(b, fieldSampleValue, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, bits)
	}
	if st != 0 {
		b = protowire.AppendTag(b, fieldSampleStartTime, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(st))
	}
	return b
}

// AppendHistogram appends h to b as a histogram of an encoded TimeSeries.
func AppendHistogram(b []byte, h *Histogram) ([]byte, error) {
	return appendMessage(b, fieldTimeSeriesHistogram, h)
}

// AppendExemplar appends e to b as an exemplar of an encoded TimeSeries.
func AppendExemplar(b []byte, e *Exemplar) ([]byte, error) {
	return appendMessage(b, fieldTimeSeriesExemplar, e)
}

// AppendMetadata appends m to b as the metadata of an encoded TimeSeries.
func AppendMetadata(b []byte, m *Metadata) ([]byte, error) {
	return appendMessage(b, fieldTimeSeriesMetadata, m)
}

func appendMessage(b []byte, field protowire.Number, m proto.Message) ([]byte, error) {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(proto.Size(m)))
	return proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(b, m)
}

// AppendPushRequestSeries appends an encoded TimeSeries to req, an encoded
// PushRequest.
func AppendPushRequestSeries(req, series []byte) []byte {
	req = protowire.AppendTag(req, fieldPushRequestSeries, protowire.BytesType)
	return protowire.AppendBytes(req, series)
}

// SizePushRequestSeries is what AppendPushRequestSeries adds for a series of
// n encoded bytes.
func SizePushRequestSeries(n int) int {
	return protowire.SizeTag(fieldPushRequestSeries) + protowire.SizeBytes(n)
}
