package ingester_test

import (
	"context"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/tsdbutil"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/census-metrics/census/ingester"
	censuspb "github.com/census-metrics/census/proto"
)

// TestServer_DecodesAsGenerated pushes the same requests through the
// Server's Push, which decodes the wire form with censuspb.PushDecoder, and
// through the generated decoding: the answers and the stored data are the
// same.
func TestServer_DecodesAsGenerated(t *testing.T) {
	encoded := startIngester(t, t.TempDir())
	generated := startIngesterServing(t, testConfig(t.TempDir()), ingester.NewGeneratedServer)
	h := tsdbutil.GenerateTestHistogram(1)
	reqs := []*censuspb.PushRequest{
		{Series: []*censuspb.TimeSeries{
			series(pairs("__name__", "a", "job", "x"), linear(1000, 1000, 3)...),
			// Zero values are left out of the wire form.
			series(pairs("__name__", "zero"), sample{T: 0, V: 0}, sample{T: 1000, V: 0}),
			{Labels: pairs("__name__", "started"), Samples: []*censuspb.Sample{{TimestampMs: 3000, Value: 3, StartTimestampMs: 100}}},
			{
				Labels:     pairs("__name__", "h"),
				Samples:    wireSamples(sample{T: 500, V: 1}),
				Histograms: []*censuspb.Histogram{censuspb.FromHistogram(1000, h), censuspb.FromFloatHistogram(2000, h.ToFloat(nil))},
				Exemplars:  []*censuspb.Exemplar{{Labels: pairs("trace_id", "t"), Value: 1, TimestampMs: 1000}},
				Metadata:   &censuspb.Metadata{Type: "histogram", Help: "H.", Unit: "seconds"},
			},
		}},
		// Rejections: invalid labels (an empty value is left out of the
		// wire form, an empty name too), and time rules.
		{Series: []*censuspb.TimeSeries{
			series(pairs("__name__", "a", "job", "x"), sample{T: 500, V: 1}, sample{T: 4000, V: 4}),
			series(pairs("", "v", "job", "y"), sample{T: 1000, V: 1}),
			series(pairs("__name__", "b", "empty", ""), sample{T: 1000, V: 1}),
			series(pairs("job", "z", "__name__", "unsorted"), sample{T: 1000, V: 1}),
			series(pairs("__name__", "c", "bad", "\xff"), sample{T: 1000, V: 1}),
		}},
	}
	for i, req := range reqs {
		_, errEncoded := encoded.client.Push(context.Background(), req)
		_, errGenerated := generated.client.Push(context.Background(), req)
		require.Equal(t, status.Code(errGenerated), status.Code(errEncoded), "request %d: %v", i, errEncoded)
		require.Equal(t, status.Convert(errGenerated).Message(), status.Convert(errEncoded).Message(), "request %d", i)
		require.Equal(t, len(status.Convert(errGenerated).Details()), len(status.Convert(errEncoded).Details()), "request %d", i)
	}
	all := labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+")
	wantSamples, wantEncodings := queryTyped(t, generated.client, 0, 10_000, all)
	gotSamples, gotEncodings := queryTyped(t, encoded.client, 0, 10_000, all)
	require.Equal(t, wantEncodings, gotEncodings)
	require.Len(t, gotSamples, len(wantSamples))
	for s, want := range wantSamples {
		requireSamples(t, want, gotSamples[s], s)
	}
	for _, ti := range []*testIngester{encoded, generated} {
		md, err := ti.client.MetricsMetadata(context.Background(), &censuspb.MetricsMetadataRequest{})
		require.NoError(t, err)
		require.Len(t, md.GetMetadata(), 1)
		ex, err := ti.client.QueryExemplars(context.Background(), &censuspb.ExemplarsRequest{EndMs: 10_000, MatcherSets: []*censuspb.MatcherSet{{Matchers: censuspb.FromMatchers([]*labels.Matcher{all})}}})
		require.NoError(t, err)
		require.Len(t, ex.GetSeries(), 1)
	}
}

func TestServer_Malformed(t *testing.T) {
	ti := startIngester(t, t.TempDir())
	good, err := proto.Marshal(&censuspb.PushRequest{Series: []*censuspb.TimeSeries{series(pairs("__name__", "m"), sample{T: 1000, V: 1})}})
	require.NoError(t, err)

	// Fields the decoder does not know are skipped, as the generated code
	// skips them: a newer sender may add some.
	series := censuspb.AppendSeriesLabels(nil, labels.FromStrings("__name__", "unknown_fields"))
	series = censuspb.AppendSample(series, 2000, 2)
	series = protowire.AppendTag(series, 9, protowire.VarintType)
	series = protowire.AppendVarint(series, 7)
	req := censuspb.AppendPushRequestSeries(append([]byte(nil), good...), series)
	req = protowire.AppendTag(req, 5, protowire.BytesType)
	req = protowire.AppendString(req, "unknown request field")
	_, err = censuspb.PushEncoded(context.Background(), ti.conn, req)
	require.NoError(t, err)
	require.Len(t, storedSamples(t, ti, "unknown_fields", 10_000), 1)

	for _, tc := range []struct {
		name string
		req  []byte
	}{
		{name: "truncated series", req: good[:len(good)-3]},
		{name: "bad tag", req: []byte{0xff, 0xff, 0xff}},
		{name: "truncated label", req: censuspb.AppendPushRequestSeries(nil, []byte{0x0a, 0x05, 0x0a, 0x01})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := censuspb.PushEncoded(context.Background(), ti.conn, tc.req)
			require.Equal(t, codes.InvalidArgument, status.Code(err), "error: %v", err)
			require.Contains(t, status.Convert(err).Message(), "malformed push request")
		})
	}
}
