package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/golang/snappy"
	remoteapi "github.com/prometheus/client_golang/exp/api/remote"
	config_util "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/prompb"
	writev2 "github.com/prometheus/prometheus/prompb/io/prometheus/write/v2"
	"github.com/prometheus/prometheus/storage/remote"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"
)

// remoteWrite sends series with one sample each at ts through Prometheus'
// own remote-write client, in protocol msg, to the distributor at addr.
func remoteWrite(t *testing.T, addr string, msg remoteapi.WriteMessageType, ts int64, series map[string]float64, extra labels.Labels) error {
	t.Helper()
	c, err := remote.NewWriteClient("test", &remote.ClientConfig{
		URL:           &config_util.URL{URL: &url.URL{Scheme: "http", Host: addr, Path: "/api/v1/push"}},
		Timeout:       model.Duration(10 * time.Second),
		WriteProtoMsg: msg,
	})
	require.NoError(t, err)
	var raw []byte
	if msg == remoteapi.WriteV1MessageType {
		req := &prompb.WriteRequest{}
		for name, v := range series {
			ls := labels.NewBuilder(extra).Set("__name__", name).Labels()
			req.Timeseries = append(req.Timeseries, prompb.TimeSeries{Labels: prompb.FromLabels(ls, nil), Samples: []prompb.Sample{{Value: v, Timestamp: ts}}})
		}
		raw, err = req.Marshal()
	} else {
		st := writev2.NewSymbolTable()
		req := &writev2.Request{}
		for name, v := range series {
			ls := labels.NewBuilder(extra).Set("__name__", name).Labels()
			req.Timeseries = append(req.Timeseries, writev2.TimeSeries{LabelsRefs: st.SymbolizeLabels(ls, nil), Samples: []writev2.Sample{{Value: v, Timestamp: ts}}})
		}
		req.Symbols = st.Symbols()
		raw, err = req.Marshal()
	}
	require.NoError(t, err)
	_, err = c.Store(context.Background(), snappy.Encode(nil, raw), 0)
	return err
}

// TestCluster_DistributorReceivesPushes runs an ingester, a distributor and
// a querier, pushes remote write 1.0, 2.0 and OTLP to the distributor and
// queries what was pushed; a partly bad push stores its good series and
// answers 400 naming the bad one.
func TestCluster_DistributorReceivesPushes(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	ing := startRole(t, "ingester", roleConfig{id: "ingester", rf: 1})
	dist := startRole(t, "distributor", roleConfig{id: "distributor", join: ing, rf: 1, flags: []string{"--distributor.max-label-names-per-series=5"}})
	q := startRole(t, "querier", roleConfig{id: "querier", join: ing, rf: 1})
	for _, p := range []*process{ing, dist, q} {
		p.waitReady(30 * time.Second)
	}

	now := time.Now().Truncate(time.Second)
	job := labels.FromStrings("job", "pushed")
	require.NoError(t, remoteWrite(t, dist.http, remoteapi.WriteV1MessageType, now.UnixMilli(), map[string]float64{"rw1_value": 1.5}, job))
	require.NoError(t, remoteWrite(t, dist.http, remoteapi.WriteV2MessageType, now.UnixMilli(), map[string]float64{"rw2_value": 2.5}, job))

	md := pmetric.NewMetrics()
	rm := md.ResourceMetrics().AppendEmpty()
	rm.Resource().Attributes().PutStr("service.name", "otel-app")
	g := rm.ScopeMetrics().AppendEmpty().Metrics().AppendEmpty()
	g.SetName("otlp.value")
	dp := g.SetEmptyGauge().DataPoints().AppendEmpty()
	dp.SetTimestamp(pcommon.NewTimestampFromTime(now))
	dp.SetDoubleValue(3.5)
	body, err := pmetricotlp.NewExportRequestFromMetrics(md).MarshalProto()
	require.NoError(t, err)
	req, err := http.NewRequest(http.MethodPost, "/otlp/v1/metrics", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-protobuf")
	_, err = dist.send(req)
	require.NoError(t, err)

	for expr, want := range map[string]float64{
		`rw1_value{job="pushed"}`:    1.5,
		`rw2_value{job="pushed"}`:    2.5,
		`otlp_value{job="otel-app"}`: 3.5,
	} {
		got, _ := instantValues(t, q, expr, "__name__", now.UnixMilli())
		require.Len(t, got, 1, expr)
		for _, v := range got {
			require.Equal(t, want, v, expr)
		}
	}

	// Partly bad: the wide series breaks the label limit of 5.
	wide := labels.FromStrings("a", "1", "b", "2", "c", "3", "d", "4", "job", "pushed")
	err = remoteWrite(t, dist.http, remoteapi.WriteV1MessageType, now.UnixMilli(), map[string]float64{"wide_value": 9}, wide)
	require.ErrorContains(t, err, "400 Bad Request")
	require.ErrorContains(t, err, `1 max_label_names_per_series, first: series {__name__="wide_value", a="1", b="2", c="3", d="4", job="pushed"} has 6 labels`)
	var rec remote.RecoverableError
	require.False(t, errors.As(err, &rec), "a 400 is not retried")
	got, _ := instantValues(t, q, "wide_value", "__name__", now.UnixMilli())
	require.Empty(t, got)

	// The distributor counts what it refused; nothing is retried.
	discarded, err := dist.metric("census_distributor_discarded_samples_total", "reason", "max_label_names_per_series")
	require.NoError(t, err)
	require.Equal(t, 1.0, discarded)

	// Every ingester down: 503, which Prometheus' client retries.
	ing.kill()
	err = remoteWrite(t, dist.http, remoteapi.WriteV2MessageType, now.UnixMilli(), map[string]float64{"lost_value": 1}, job)
	require.Error(t, err)
	require.True(t, errors.As(err, &rec), "%v must be retried", err)

	for _, p := range []*process{dist, q} {
		require.NoError(t, p.stop(30*time.Second))
	}
}

// TestCluster_AllInOneReceivesRemoteWrite checks `census all` takes remote
// write at the same address as its queries.
func TestCluster_AllInOneReceivesRemoteWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	p := startRole(t, "all", roleConfig{})
	p.waitReady(30 * time.Second)
	ts := time.Now().Truncate(time.Second).UnixMilli()
	require.NoError(t, remoteWrite(t, p.http, remoteapi.WriteV2MessageType, ts, map[string]float64{"pushed_into_all": 42}, labels.FromStrings("job", "push")))
	got, _ := instantValues(t, p, "pushed_into_all", "job", ts)
	require.Equal(t, map[string]float64{"push": 42}, got)
	// Each component counts its own refusals, on its own counter.
	for _, m := range []struct{ name, reason string }{
		{"census_ingester_discarded_samples_total", "out_of_order"},
		{"census_distributor_discarded_samples_total", "max_label_names_per_series"},
	} {
		discarded, err := p.metric(m.name, "reason", m.reason)
		require.NoError(t, err)
		require.Equal(t, 0.0, discarded, m.name)
	}
	require.NoError(t, p.stop(30*time.Second))
}
