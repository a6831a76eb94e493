package censuspb

import (
	"errors"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestWireFieldNumbers pins the field numbers the encoder and the push
// decoder share to census.proto's.
func TestWireFieldNumbers(t *testing.T) {
	number := func(m proto.Message, field string) protowire.Number {
		f := m.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(field))
		require.NotNil(t, f, "field %s", field)
		return f.Number()
	}
	require.Equal(t, number(&PushRequest{}, "series"), fieldPushRequestSeries)
	require.Equal(t, number(&TimeSeries{}, "labels"), fieldTimeSeriesLabels)
	require.Equal(t, number(&TimeSeries{}, "samples"), fieldTimeSeriesSamples)
	require.Equal(t, number(&TimeSeries{}, "histograms"), fieldTimeSeriesHistogram)
	require.Equal(t, number(&TimeSeries{}, "exemplars"), fieldTimeSeriesExemplar)
	require.Equal(t, number(&TimeSeries{}, "metadata"), fieldTimeSeriesMetadata)
	require.Equal(t, number(&LabelPair{}, "name"), fieldLabelPairName)
	require.Equal(t, number(&LabelPair{}, "value"), fieldLabelPairValue)
	require.Equal(t, number(&Sample{}, "timestamp_ms"), fieldSampleTimestamp)
	require.Equal(t, number(&Sample{}, "value"), fieldSampleValue)
	require.Equal(t, number(&Sample{}, "start_timestamp_ms"), fieldSampleStartTime)
}

func TestPushDecoder_SkipsUnknownFields(t *testing.T) {
	// A newer sender may add fields: the decoder skips them, as the
	// generated code does.
	series := AppendSeriesLabels(nil, labels.FromStrings("__name__", "m", "job", "x"))
	series = AppendSample(series, 2000, 2)
	series = protowire.AppendTag(series, 9, protowire.VarintType)
	series = protowire.AppendVarint(series, 7)
	req := AppendPushRequestSeries(nil, series)
	req = protowire.AppendTag(req, 5, protowire.BytesType)
	req = protowire.AppendString(req, "unknown request field")

	var want PushRequest
	require.NoError(t, proto.Unmarshal(req, &want))
	want.Series[0].ProtoReflect().SetUnknown(nil) // The decoder keeps none.
	var dec PushDecoder
	n := 0
	require.NoError(t, dec.Decode(req, func(ts *TimeSeries) error {
		n++
		require.True(t, proto.Equal(want.Series[0], ts), "decoded %v, want %v", ts, want.Series[0])
		return nil
	}))
	require.Equal(t, 1, n)
}

func TestPushDecoder_Malformed(t *testing.T) {
	good := AppendPushRequestSeries(nil, AppendSample(AppendSeriesLabels(nil, labels.FromStrings("__name__", "m")), 1000, 1))
	for _, tc := range []struct {
		name string
		req  []byte
	}{
		{name: "truncated series", req: good[:len(good)-3]},
		{name: "bad tag", req: []byte{0xff, 0xff, 0xff}},
		{name: "truncated label", req: AppendPushRequestSeries(nil, []byte{0x0a, 0x05, 0x0a, 0x01})},
		{name: "truncated sample", req: AppendPushRequestSeries(nil, []byte{0x12, 0x03, 0x11, 0x00})},
		{name: "bad histogram", req: AppendPushRequestSeries(nil, []byte{0x1a, 0x02, 0xff, 0xff})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var dec PushDecoder
			err := dec.Decode(tc.req, func(*TimeSeries) error { return nil })
			require.ErrorIs(t, err, ErrMalformedPush)
			// The generated code refuses it too.
			require.Error(t, proto.Unmarshal(tc.req, &PushRequest{}))
		})
	}

	// An error of the callback stops the decoding and is returned as is.
	stop := errors.New("stop")
	calls := 0
	var dec PushDecoder
	err := dec.Decode(append(append([]byte(nil), good...), good...), func(*TimeSeries) error { calls++; return stop })
	require.ErrorIs(t, err, stop)
	require.Equal(t, 1, calls)
}
