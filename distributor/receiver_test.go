package distributor_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gogo/protobuf/proto"
	"github.com/golang/snappy"
	remoteapi "github.com/prometheus/client_golang/exp/api/remote"
	config_util "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/model/timestamp"
	"github.com/prometheus/prometheus/prompb"
	writev2 "github.com/prometheus/prometheus/prompb/io/prometheus/write/v2"
	"github.com/prometheus/prometheus/storage/remote"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/census-metrics/census/distributor"
	censuspb "github.com/census-metrics/census/proto"
)

// receiver serves a Receiver over a distributor on n fake ingesters.
func receiver(t *testing.T, n, rf int, cfg distributor.Config) (*url.URL, []*fakeIngester) {
	t.Helper()
	d, fakes, reg := clusterWithConfig(t, n, rf, cfg)
	mux := http.NewServeMux()
	distributor.NewReceiver(d, nil, reg).Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	require.NoError(t, err)
	return u, fakes
}

// writeClient is Prometheus' own remote-write client for protocol msg.
func writeClient(t *testing.T, base *url.URL, msg remoteapi.WriteMessageType) remote.WriteClient {
	t.Helper()
	c, err := remote.NewWriteClient("test", &remote.ClientConfig{
		URL:              &config_util.URL{URL: base.JoinPath(distributor.RemoteWritePath)},
		Timeout:          model.Duration(10 * time.Second),
		WriteProtoMsg:    msg,
		RetryOnRateLimit: true,
	})
	require.NoError(t, err)
	return c
}

func encode(t *testing.T, m proto.Marshaler) []byte {
	t.Helper()
	b, err := m.Marshal()
	require.NoError(t, err)
	return snappy.Encode(nil, b)
}

// findSeries returns the series with labels ls a fake ingester received.
func findSeries(t *testing.T, f *fakeIngester, ls labels.Labels) *censuspb.TimeSeries {
	t.Helper()
	want := censuspb.FormatLabelPairs(censuspb.FromLabels(nil, ls))
	for _, ts := range f.allSeries() {
		if censuspb.FormatLabelPairs(ts.Labels) == want {
			return ts
		}
	}
	t.Fatalf("series %s not received", ls)
	return nil
}

func testHistogram() *histogram.Histogram {
	return &histogram.Histogram{Count: 5, Sum: 2.5, Schema: 1, ZeroThreshold: 0.001, ZeroCount: 1, PositiveSpans: []histogram.Span{{Offset: 0, Length: 2}}, PositiveBuckets: []int64{2, 0}}
}

func TestReceiver_RemoteWrite1RoundTrip(t *testing.T) {
	u, fakes := receiver(t, 1, 1, limitedConfig())
	now := timestamp.FromTime(time.Now())
	h := testHistogram()
	req := &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{
		{
			Labels:    []prompb.Label{{Name: "__name__", Value: "http_requests_total"}, {Name: "code", Value: "200"}, {Name: "job", Value: "api"}},
			Samples:   []prompb.Sample{{Value: 1, Timestamp: now - 1000}, {Value: 2, Timestamp: now}},
			Exemplars: []prompb.Exemplar{{Labels: []prompb.Label{{Name: "trace_id", Value: "abc"}}, Value: 2, Timestamp: now}},
		},
		{
			Labels:     []prompb.Label{{Name: "__name__", Value: "rpc_duration_seconds"}, {Name: "job", Value: "api"}},
			Histograms: []prompb.Histogram{prompb.FromIntHistogram(now, h)},
		},
	}}
	stats, err := writeClient(t, u, remoteapi.WriteV1MessageType).Store(context.Background(), encode(t, req), 0)
	require.NoError(t, err)
	require.False(t, stats.Confirmed, "remote write 1.0 answers without written counts")

	counter := findSeries(t, fakes[0], labels.FromStrings("__name__", "http_requests_total", "code", "200", "job", "api"))
	require.Len(t, counter.Samples, 2)
	require.Equal(t, 2.0, counter.Samples[1].Value)
	require.Equal(t, now, counter.Samples[1].TimestampMs)
	require.Len(t, counter.Exemplars, 1)
	var b labels.ScratchBuilder
	e, err := censuspb.ToExemplar(&b, counter.Exemplars[0])
	require.NoError(t, err)
	require.Equal(t, labels.FromStrings("trace_id", "abc"), e.Labels)

	hist := findSeries(t, fakes[0], labels.FromStrings("__name__", "rpc_duration_seconds", "job", "api"))
	require.Len(t, hist.Histograms, 1)
	require.Equal(t, h, hist.Histograms[0].ToHistogram())
}

func TestReceiver_RemoteWrite2RoundTrip(t *testing.T) {
	u, fakes := receiver(t, 1, 1, limitedConfig())
	now := timestamp.FromTime(time.Now())
	h := testHistogram()
	fh := h.ToFloat(nil)
	st := writev2.NewSymbolTable()
	counter := labels.FromStrings("__name__", "http_requests_total", "code", "200", "job", "api")
	hist := labels.FromStrings("__name__", "rpc_duration_seconds", "job", "api")
	req := &writev2.Request{Timeseries: []writev2.TimeSeries{
		{
			LabelsRefs: st.SymbolizeLabels(counter, nil),
			Samples:    []writev2.Sample{{Value: 1, Timestamp: now - 1000, StartTimestamp: now - 60000}, {Value: 2, Timestamp: now, StartTimestamp: now - 60000}},
			Exemplars:  []writev2.Exemplar{{LabelsRefs: st.SymbolizeLabels(labels.FromStrings("trace_id", "abc"), nil), Value: 2, Timestamp: now}},
			Metadata:   writev2.Metadata{Type: writev2.Metadata_METRIC_TYPE_COUNTER, HelpRef: st.Symbolize("Requests served."), UnitRef: st.Symbolize("")},
		},
		{
			LabelsRefs: st.SymbolizeLabels(hist, nil),
			Histograms: []writev2.Histogram{writev2.FromIntHistogram(0, now-1000, h), writev2.FromFloatHistogram(0, now, fh)},
			Metadata:   writev2.Metadata{Type: writev2.Metadata_METRIC_TYPE_HISTOGRAM, HelpRef: st.Symbolize("RPC latency."), UnitRef: st.Symbolize("seconds")},
		},
	}}
	req.Symbols = st.Symbols()
	stats, err := writeClient(t, u, remoteapi.WriteV2MessageType).Store(context.Background(), encode(t, req), 0)
	require.NoError(t, err)
	require.True(t, stats.Confirmed)
	require.Equal(t, remote.WriteResponseStats{Samples: 2, Histograms: 2, Exemplars: 1, Confirmed: true}, stats)

	c := findSeries(t, fakes[0], counter)
	require.Len(t, c.Samples, 2)
	require.Equal(t, now-60000, c.Samples[0].StartTimestampMs, "start timestamps travel")
	require.Equal(t, metadata.Metadata{Type: model.MetricTypeCounter, Help: "Requests served."}, c.Metadata.ToMetadata())
	require.Len(t, c.Exemplars, 1)

	hs := findSeries(t, fakes[0], hist)
	require.Len(t, hs.Histograms, 2)
	require.Equal(t, h, hs.Histograms[0].ToHistogram())
	require.Equal(t, fh, hs.Histograms[1].ToFloatHistogram())
	require.Equal(t, metadata.Metadata{Type: model.MetricTypeHistogram, Help: "RPC latency.", Unit: "seconds"}, hs.Metadata.ToMetadata())
}

// otlpRequest builds an OTLP export request with the collector's pdata:
// a cumulative sum, a gauge and an exponential histogram, for a service.
func otlpRequest(now time.Time, attrs map[string]string) pmetricotlp.ExportRequest {
	md := pmetric.NewMetrics()
	rm := md.ResourceMetrics().AppendEmpty()
	rm.Resource().Attributes().PutStr("service.name", "checkout")
	rm.Resource().Attributes().PutStr("service.instance.id", "pod-1")
	ms := rm.ScopeMetrics().AppendEmpty().Metrics()
	ts := pcommon.NewTimestampFromTime(now)

	sum := ms.AppendEmpty()
	sum.SetName("http.server.requests")
	sum.SetUnit("1")
	s := sum.SetEmptySum()
	s.SetIsMonotonic(true)
	s.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	dp := s.DataPoints().AppendEmpty()
	dp.SetTimestamp(ts)
	dp.SetStartTimestamp(pcommon.NewTimestampFromTime(now.Add(-time.Minute)))
	dp.SetIntValue(42)
	for k, v := range attrs {
		dp.Attributes().PutStr(k, v)
	}

	gauge := ms.AppendEmpty()
	gauge.SetName("queue.length")
	gdp := gauge.SetEmptyGauge().DataPoints().AppendEmpty()
	gdp.SetTimestamp(ts)
	gdp.SetDoubleValue(7.5)

	eh := ms.AppendEmpty()
	eh.SetName("rpc.duration")
	eh.SetUnit("s")
	e := eh.SetEmptyExponentialHistogram()
	e.SetAggregationTemporality(pmetric.AggregationTemporalityCumulative)
	edp := e.DataPoints().AppendEmpty()
	edp.SetTimestamp(ts)
	edp.SetCount(3)
	edp.SetSum(1.5)
	edp.SetScale(1)
	edp.Positive().SetOffset(0)
	edp.Positive().BucketCounts().FromRaw([]uint64{1, 2})
	return pmetricotlp.NewExportRequestFromMetrics(md)
}

func postOTLP(t *testing.T, base *url.URL, req pmetricotlp.ExportRequest) (*http.Response, []byte) {
	t.Helper()
	body, err := req.MarshalProto()
	require.NoError(t, err)
	resp, err := http.Post(base.JoinPath(distributor.OTLPMetricsPath).String(), "application/x-protobuf", bytes.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, out
}

func TestReceiver_OTLPRoundTrip(t *testing.T) {
	u, fakes := receiver(t, 1, 1, limitedConfig())
	now := time.Now().Truncate(time.Millisecond)
	resp, body := postOTLP(t, u, otlpRequest(now, map[string]string{"http.route": "/cart"}))
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))

	sum := findSeries(t, fakes[0], labels.FromStrings("__name__", "http_server_requests_total", "http_route", "/cart", "instance", "pod-1", "job", "checkout"))
	require.Len(t, sum.Samples, 1)
	require.Equal(t, 42.0, sum.Samples[0].Value)
	require.Equal(t, now.UnixMilli(), sum.Samples[0].TimestampMs)
	require.Equal(t, now.Add(-time.Minute).UnixMilli(), sum.Samples[0].StartTimestampMs)

	gauge := findSeries(t, fakes[0], labels.FromStrings("__name__", "queue_length", "instance", "pod-1", "job", "checkout"))
	require.Equal(t, 7.5, gauge.Samples[0].Value)

	eh := findSeries(t, fakes[0], labels.FromStrings("__name__", "rpc_duration_seconds", "instance", "pod-1", "job", "checkout"))
	require.Len(t, eh.Histograms, 1)
	got := eh.Histograms[0].ToHistogram()
	require.Equal(t, uint64(3), got.Count)
	require.Equal(t, 1.5, got.Sum)
}

// tooManyLabels is a series over limitedConfig's label limit.
var tooManyLabels = labels.FromStrings("__name__", "wide", "a", "1", "b", "2", "c", "3", "d", "4")

func TestReceiver_PartlyBadRequestStoresTheGoodSeries(t *testing.T) {
	now := timestamp.FromTime(time.Now())
	good := labels.FromStrings("__name__", "good", "job", "api")
	old := labels.FromStrings("__name__", "old", "job", "api")
	t.Run("remote write 1.0", func(t *testing.T) {
		u, fakes := receiver(t, 1, 1, limitedConfig())
		req := &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{
			{Labels: prompb.FromLabels(good, nil), Samples: []prompb.Sample{{Value: 1, Timestamp: now}}},
			{Labels: prompb.FromLabels(tooManyLabels, nil), Samples: []prompb.Sample{{Value: 2, Timestamp: now}}},
			{Labels: prompb.FromLabels(old, nil), Samples: []prompb.Sample{{Value: 3, Timestamp: now - 2*time.Hour.Milliseconds()}}},
			// Prometheus' own 1.0 receiver drops these three with a 204.
			{Labels: []prompb.Label{{Name: "job", Value: "api"}}, Samples: []prompb.Sample{{Value: 4, Timestamp: now}}},
			{Labels: []prompb.Label{{Name: "__name__", Value: "bad\xff"}}, Samples: []prompb.Sample{{Value: 5, Timestamp: now}}},
			{Labels: []prompb.Label{{Name: "__name__", Value: "twice"}, {Name: "a", Value: "1"}, {Name: "a", Value: "2"}}, Samples: []prompb.Sample{{Value: 6, Timestamp: now}}},
			// Prometheus' own 1.0 receiver refuses the whole request for this one.
			{Labels: prompb.FromLabels(labels.FromStrings("__name__", "future"), nil), Samples: []prompb.Sample{{Value: 7, Timestamp: now + 365*24*time.Hour.Milliseconds()}}},
		}}
		_, err := writeClient(t, u, remoteapi.WriteV1MessageType).Store(context.Background(), encode(t, req), 0)
		requireNotRetryable(t, err, "400 Bad Request")
		require.ErrorContains(t, err, `1 max_label_names_per_series, first: series {__name__="wide", a="1", b="2", c="3", d="4"} has 5 labels`)
		require.ErrorContains(t, err, `1 sample_too_old, first: sample at`)
		require.ErrorContains(t, err, `1 missing_metric_name, first: invalid labels: series {job="api"} has no metric name`)
		require.ErrorContains(t, err, `value of label "__name__" is not valid UTF-8`)
		require.ErrorContains(t, err, `1 duplicate_label_names, first: invalid labels: label name "a" appears twice`)
		require.ErrorContains(t, err, `1 sample_too_far_in_future`)
		require.Equal(t, []float64{1}, fakes[0].values(good))
		require.Len(t, fakes[0].allSeries(), 1)
	})
	t.Run("remote write 2.0", func(t *testing.T) {
		u, fakes := receiver(t, 1, 1, limitedConfig())
		st := writev2.NewSymbolTable()
		noName := labels.FromStrings("job", "api")
		req := &writev2.Request{Timeseries: []writev2.TimeSeries{
			{LabelsRefs: st.SymbolizeLabels(good, nil), Samples: []writev2.Sample{{Value: 1, Timestamp: now}}},
			{LabelsRefs: st.SymbolizeLabels(tooManyLabels, nil), Samples: []writev2.Sample{{Value: 2, Timestamp: now}}},
			// Prometheus' handler refuses this one itself.
			{LabelsRefs: st.SymbolizeLabels(noName, nil), Samples: []writev2.Sample{{Value: 3, Timestamp: now}}},
		}}
		req.Symbols = st.Symbols()
		stats, err := writeClient(t, u, remoteapi.WriteV2MessageType).Store(context.Background(), encode(t, req), 0)
		requireNotRetryable(t, err, "400 Bad Request")
		require.ErrorContains(t, err, `invalid metric name or labels, got {job="api"}`)
		require.ErrorContains(t, err, "1 max_label_names_per_series")
		require.Equal(t, 1, stats.Samples, "written counts say what was stored")
		require.Equal(t, []float64{1}, fakes[0].values(good))
		require.Len(t, fakes[0].allSeries(), 1)
	})
	t.Run("OTLP", func(t *testing.T) {
		u, fakes := receiver(t, 1, 1, limitedConfig())
		resp, body := postOTLP(t, u, otlpRequest(time.Now(), map[string]string{"http.route": "/a/very/long/route/of/forty/bytes/long"}))
		// OTLP's answer to a partly stored request: 200 with
		// partial_success naming what was refused.
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		out := pmetricotlp.NewExportResponse()
		require.NoError(t, out.UnmarshalProto(body))
		require.Equal(t, int64(1), out.PartialSuccess().RejectedDataPoints())
		require.Contains(t, out.PartialSuccess().ErrorMessage(), `value of label "http_route" is 38 bytes, longer than --distributor.max-label-value-length=30`)
		require.Len(t, fakes[0].allSeries(), 2, "the gauge and the histogram are stored")
	})
	t.Run("OTLP all refused", func(t *testing.T) {
		cfg := limitedConfig()
		cfg.MaxLabelValueLength = 5 // Every series has job="checkout".
		u, fakes := receiver(t, 1, 1, cfg)
		resp, body := postOTLP(t, u, otlpRequest(time.Now(), nil))
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
		require.Contains(t, string(body), "refused 3 samples: 3 label_value_too_long")
		require.Empty(t, fakes[0].allSeries())
	})
}

// requireNotRetryable checks err is a remote-write error the client will
// not retry, with status.
func requireNotRetryable(t *testing.T, err error, status string) {
	t.Helper()
	require.ErrorContains(t, err, status)
	var rec remote.RecoverableError
	require.False(t, errors.As(err, &rec), "error %v must not be retried", err)
}

func requireRetryable(t *testing.T, err error, status string) {
	t.Helper()
	require.ErrorContains(t, err, status)
	var rec remote.RecoverableError
	require.True(t, errors.As(err, &rec), "error %v must be retried", err)
}

func TestReceiver_ResponseCodesFollowTheIngesters(t *testing.T) {
	now := timestamp.FromTime(time.Now())
	series := labels.FromStrings("__name__", "x", "job", "api")
	refusal := func(code codes.Code, reason string) error {
		st, err := status.New(code, "refused").WithDetails(&censuspb.PushResponse{Rejections: []*censuspb.Rejection{
			{Reason: reason, Samples: 1, FirstError: `sample of series {__name__="x", job="api"} refused`},
		}})
		require.NoError(t, err)
		return st.Err()
	}
	overloaded, err := status.New(codes.Unavailable, "too many pushes in flight").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)})
	require.NoError(t, err)
	for _, tc := range []struct {
		name       string
		err        error
		want       string
		retryable  bool
		retryAfter string // Of a raw remote-write 1.0 push.
	}{
		{name: "every ingester down", err: status.Error(codes.Unavailable, "ingester is stopping"), want: "503 Service Unavailable", retryable: true},
		{name: "ingester full", err: refusal(codes.ResourceExhausted, "max_series"), want: "429 Too Many Requests", retryable: true},
		// Sent again at once, a 503 would add to the load the ingester refused.
		{name: "ingester over its push limits", err: overloaded.Err(), want: "429 Too Many Requests: no quorum", retryable: true, retryAfter: "2"},
		{name: "ingester refuses input", err: refusal(codes.InvalidArgument, "out_of_order"), want: `400 Bad Request: invalid series: ingester ingester-a refused 1 samples: 1 out_of_order, first: sample of series {__name__="x", job="api"} refused`},
		{name: "request over the ingester's size limit", err: status.Error(codes.ResourceExhausted, "grpc: received message larger than max"), want: "503 Service Unavailable", retryable: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, fakes := receiver(t, 1, 1, limitedConfig())
			fakes[0].setErr(tc.err)
			for _, msg := range []remoteapi.WriteMessageType{remoteapi.WriteV1MessageType, remoteapi.WriteV2MessageType} {
				var body []byte
				if msg == remoteapi.WriteV1MessageType {
					body = encode(t, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{{Labels: prompb.FromLabels(series, nil), Samples: []prompb.Sample{{Value: 1, Timestamp: now}}}}})
				} else {
					st := writev2.NewSymbolTable()
					req := &writev2.Request{Timeseries: []writev2.TimeSeries{{LabelsRefs: st.SymbolizeLabels(series, nil), Samples: []writev2.Sample{{Value: 1, Timestamp: now}}}}}
					req.Symbols = st.Symbols()
					body = encode(t, req)
				}
				_, err := writeClient(t, u, msg).Store(context.Background(), body, 0)
				if tc.retryable {
					requireRetryable(t, err, tc.want)
				} else {
					requireNotRetryable(t, err, tc.want)
				}
				if msg == remoteapi.WriteV1MessageType {
					resp, err := http.Post(u.JoinPath(distributor.RemoteWritePath).String(), "application/x-protobuf", bytes.NewReader(body))
					require.NoError(t, err)
					require.NoError(t, resp.Body.Close())
					require.Equal(t, tc.retryAfter, resp.Header.Get("Retry-After"), "rounded up to whole seconds")
				}
			}
		})
	}
}

func TestReceiver_TooLarge(t *testing.T) {
	cfg := limitedConfig()
	cfg.MaxRequestBytes = 4 << 10
	u, fakes := receiver(t, 1, 1, cfg)
	post := func(path string, body io.Reader) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, u.JoinPath(path).String(), body)
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/x-protobuf")
		if path == distributor.RemoteWritePath {
			req.Header.Set("Content-Encoding", "snappy")
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	big := make([]byte, 5<<10)
	// A snappy header claiming 1GiB of decompressed bytes, then nothing:
	// Prometheus' handler would allocate the gigabyte before finding out.
	bomb := binary.AppendUvarint(nil, 1<<30)
	for _, tc := range []struct {
		name, path string
		body       io.Reader
		want       string
	}{
		{name: "remote write over the limit", path: distributor.RemoteWritePath, body: bytes.NewReader(big), want: "push request body of 5120 bytes is larger than --distributor.max-request-bytes=4KiB"},
		{name: "OTLP over the limit", path: distributor.OTLPMetricsPath, body: bytes.NewReader(big), want: "push request body of 5120 bytes is larger than --distributor.max-request-bytes=4KiB"},
		// Without a Content-Length (chunked), the limit stops the read.
		{name: "chunked over the limit", path: distributor.RemoteWritePath, body: io.MultiReader(bytes.NewReader(snappy.Encode(nil, big[:1000])), bytes.NewReader(big)), want: "push request body is larger than --distributor.max-request-bytes=4KiB"},
		{name: "decompresses over the limit", path: distributor.RemoteWritePath, body: bytes.NewReader(bomb), want: "push request body decompresses to 1073741824 bytes, more than --distributor.max-request-bytes=4KiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := post(tc.path, tc.body)
			require.Equal(t, http.StatusRequestEntityTooLarge, code, body)
			require.Equal(t, tc.want, body)
		})
	}
	require.Empty(t, fakes[0].allSeries(), "nothing of a refused request is stored")

	// Under the limit, a push is stored as usual.
	resp, body := postOTLP(t, u, otlpRequest(time.Now(), nil))
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
}

// TestReceiver_InflightLimits: while pushes are held at the ingester, a
// push over the in-flight limits is refused at once with 429 and
// Retry-After, naming the flag; once they end, pushes are taken again.
func TestReceiver_InflightLimits(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit func(*distributor.Config)
		want  string
	}{
		{name: "requests", limit: func(c *distributor.Config) { c.MaxInflightPushRequests = 1 }, want: "--distributor.max-inflight-push-requests"},
		{name: "bytes", limit: func(c *distributor.Config) { c.MaxInflightPushBytes = 1 << 10 }, want: "--distributor.max-inflight-push-bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := limitedConfig()
			tc.limit(&cfg)
			u, fakes := receiver(t, 1, 1, cfg)
			hold, held := make(chan struct{}), make(chan struct{}, 1)
			fakes[0].mtx.Lock()
			fakes[0].hold, fakes[0].held = hold, held
			fakes[0].mtx.Unlock()
			push := func(name string) (int, http.Header, string) {
				// 100 samples of distinct values: a body of about 1.5KiB
				// that snappy cannot shrink much.
				now := time.Now().UnixMilli()
				var samples []prompb.Sample
				for i := range 100 {
					samples = append(samples, prompb.Sample{Timestamp: now - int64(100-i)*1000, Value: float64(i) * 1.234567})
				}
				body := encode(t, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{{
					Labels:  []prompb.Label{{Name: "__name__", Value: name}},
					Samples: samples,
				}}})
				require.Greater(t, len(body), 1<<9, "two bodies pass the 1KiB limit")
				req, err := http.NewRequest(http.MethodPost, u.JoinPath(distributor.RemoteWritePath).String(), bytes.NewReader(body))
				require.NoError(t, err)
				req.Header.Set("Content-Type", "application/x-protobuf")
				req.Header.Set("Content-Encoding", "snappy")
				resp, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				require.NoError(t, err)
				return resp.StatusCode, resp.Header, string(b)
			}
			first := make(chan int, 1)
			go func() {
				code, _, _ := push("held")
				first <- code
			}()
			select {
			case <-held: // The first push is in flight, held by the ingester.
			case code := <-first:
				t.Fatalf("the first push was answered %d instead of held", code)
			case <-time.After(30 * time.Second):
				t.Fatal("the first push did not reach the ingester")
			}
			code, hdr, body := push("refused")
			require.Equal(t, http.StatusTooManyRequests, code, body)
			require.Equal(t, "1", hdr.Get("Retry-After"))
			require.Contains(t, body, tc.want)
			close(hold)
			require.Equal(t, http.StatusNoContent, <-first)
			code, _, body = push("after")
			require.Equal(t, http.StatusNoContent, code, body)
		})
	}
}

func TestReceiver_BadRequests(t *testing.T) {
	u, _ := receiver(t, 1, 1, limitedConfig())
	send := func(method, path, contentType, encoding string, body []byte) (int, http.Header, string) {
		t.Helper()
		req, err := http.NewRequest(method, u.JoinPath(path).String(), bytes.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", contentType)
		if encoding != "" {
			req.Header.Set("Content-Encoding", encoding)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, resp.Header, string(b)
	}
	for _, tc := range []struct {
		name, method, path, contentType, encoding string
		body                                      []byte
		code                                      int
		want                                      string
	}{
		{name: "not snappy", path: distributor.RemoteWritePath, contentType: "application/x-protobuf", encoding: "snappy", body: []byte("not snappy at all"), code: http.StatusBadRequest},
		{name: "not protobuf", path: distributor.RemoteWritePath, contentType: "application/x-protobuf", encoding: "snappy", body: snappy.Encode(nil, []byte{0xff, 0xff, 0xff}), code: http.StatusBadRequest},
		{name: "unknown message", path: distributor.RemoteWritePath, contentType: "application/x-protobuf;proto=io.prometheus.write.v3.Request", encoding: "snappy", body: snappy.Encode(nil, nil), code: http.StatusUnsupportedMediaType},
		{name: "gzip remote write", path: distributor.RemoteWritePath, contentType: "application/x-protobuf", encoding: "gzip", body: nil, code: http.StatusUnsupportedMediaType, want: "gzip encoding (compression) is not accepted"},
		{name: "OTLP not protobuf", path: distributor.OTLPMetricsPath, contentType: "application/x-protobuf", body: []byte{0xff, 0xff, 0xff}, code: http.StatusBadRequest},
		{name: "remote write 1.0 body as 2.0", path: distributor.RemoteWritePath, contentType: "application/x-protobuf;proto=io.prometheus.write.v2.Request", encoding: "snappy",
			body: encode(t, &prompb.WriteRequest{Timeseries: []prompb.TimeSeries{{Labels: []prompb.Label{{Name: "__name__", Value: "x"}}, Samples: []prompb.Sample{{Value: 1, Timestamp: time.Now().UnixMilli()}}}}}),
			code: http.StatusBadRequest, want: "holds no series: is it a remote write 1.0 body sent with the 2.0 content type?"},
		{name: "GET remote write", method: http.MethodGet, path: distributor.RemoteWritePath, code: http.StatusMethodNotAllowed, want: "GET is not allowed: push with POST"},
		{name: "PUT remote write", method: http.MethodPut, path: distributor.RemoteWritePath, contentType: "application/x-protobuf", encoding: "snappy", code: http.StatusMethodNotAllowed, want: "PUT is not allowed"},
		{name: "GET OTLP", method: http.MethodGet, path: distributor.OTLPMetricsPath, code: http.StatusMethodNotAllowed, want: "GET is not allowed: push with POST"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			method := cmp.Or(tc.method, http.MethodPost)
			code, hdr, body := send(method, tc.path, tc.contentType, tc.encoding, tc.body)
			require.Equal(t, tc.code, code, body)
			if code == http.StatusMethodNotAllowed {
				require.Equal(t, http.MethodPost, hdr.Get("Allow"))
			}
			require.True(t, strings.Contains(body, tc.want), "body %q", body)
		})
	}
}
