package ingester

import (
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	censuspb "github.com/census-metrics/census/proto"
)

// TestDecodeFieldNumbers pins the decoder's field numbers to census.proto's.
func TestDecodeFieldNumbers(t *testing.T) {
	number := func(m proto.Message, field string) protowire.Number {
		f := m.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(field))
		require.NotNil(t, f, "field %s", field)
		return f.Number()
	}
	require.Equal(t, number(&censuspb.PushRequest{}, "series"), fieldPushRequestSeries)
	require.Equal(t, number(&censuspb.TimeSeries{}, "labels"), fieldTimeSeriesLabels)
	require.Equal(t, number(&censuspb.TimeSeries{}, "samples"), fieldTimeSeriesSamples)
	require.Equal(t, number(&censuspb.TimeSeries{}, "histograms"), fieldTimeSeriesHistogram)
	require.Equal(t, number(&censuspb.TimeSeries{}, "exemplars"), fieldTimeSeriesExemplar)
	require.Equal(t, number(&censuspb.TimeSeries{}, "metadata"), fieldTimeSeriesMetadata)
	require.Equal(t, number(&censuspb.LabelPair{}, "name"), fieldLabelPairName)
	require.Equal(t, number(&censuspb.LabelPair{}, "value"), fieldLabelPairValue)
	require.Equal(t, number(&censuspb.Sample{}, "timestamp_ms"), fieldSampleTimestamp)
	require.Equal(t, number(&censuspb.Sample{}, "value"), fieldSampleValue)
	require.Equal(t, number(&censuspb.Sample{}, "start_timestamp_ms"), fieldSampleStart)
}
