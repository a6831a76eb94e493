package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/teststorage"
	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/distributor"
	censuspb "github.com/census-metrics/census/proto"
	"github.com/census-metrics/census/querier"
	"github.com/census-metrics/census/ring"
)

// queryCluster is three ingesters (RF 3) and queriers as processes, with
// data pushed from the test through a distributor of its own, and the
// same data in a TSDB behind Prometheus' API for reference.
type queryCluster struct {
	ingesters []*process
	reference http.Handler
	now       int64 // The newest sample, unix milliseconds.
}

// queryClusterRole is how every process of a queryCluster runs.
func queryClusterRole(id string, join *process, flags ...string) roleConfig {
	return roleConfig{id: id, join: join, rf: 3, heartbeatTimeout: 5 * time.Second, flags: flags}
}

// startQueryCluster starts three ingesters and pushes 20 series of 40
// samples (every 15s up to now) and one series of 2,000 samples, 16
// chunks of 120 samples or more.
func startQueryCluster(t *testing.T) *queryCluster {
	t.Helper()
	qc := &queryCluster{}
	for i := range 3 {
		var join *process
		if i > 0 {
			join = qc.ingesters[0]
		}
		qc.ingesters = append(qc.ingesters, startRole(t, "ingester", queryClusterRole(fmt.Sprintf("ingester-%d", i), join)))
	}
	for _, p := range qc.ingesters {
		p.waitReady(30 * time.Second)
	}

	// The test's own distributor, a member of the ring.
	watcher := startRingMember(t, testRingConfig("pusher", 3, qc.ingesters[0].gossip), "")
	require.Eventually(t, func() bool { return len(watcher.ReadInstances()) == 3 }, 30*time.Second, 50*time.Millisecond)
	clients := censuspb.NewClientPool()
	t.Cleanup(func() { _ = clients.Close() })
	dist, err := distributor.New(distributor.Config{PushTimeout: 30 * time.Second}, watcher, clients, nil, nil)
	require.NoError(t, err)
	ref := teststorage.New(t)

	qc.now = time.Now().Add(-time.Minute).Truncate(15 * time.Second).UnixMilli()
	for _, app := range []storage.AppenderV2{dist.AppenderV2(context.Background()), ref.AppenderV2(context.Background())} {
		// The big series first, so that every sample is in order.
		big := labels.FromStrings(labels.MetricName, "big_series", "job", "big")
		for k := range 2000 {
			ts := qc.now - int64(1999-k)*15_000
			_, err := app.Append(0, big, 0, ts, float64(k), nil, nil, storage.AppendV2Options{})
			require.NoError(t, err)
		}
		for i := range 20 {
			ls := labels.FromStrings(labels.MetricName, "requests_total", "instance", fmt.Sprintf("host-%02d", i), "job", []string{"api", "db"}[i%2])
			for k := range 40 {
				ts := qc.now - int64(39-k)*15_000
				_, err := app.Append(0, ls, 0, ts, float64(k*(i+1)), nil, nil, storage.AppendV2Options{})
				require.NoError(t, err)
			}
		}
		require.NoError(t, app.Commit())
	}
	qc.reference, err = querier.NewAPI(querier.Config{Timeout: time.Minute, MaxSamples: 50_000_000, LookbackDelta: 5 * time.Minute}, ref, querier.BuildInfo{}, nil, nil)
	require.NoError(t, err)
	return qc
}

// startQuerier starts a querier process that joins the cluster.
func (qc *queryCluster) startQuerier(t *testing.T, name string, flags ...string) *process {
	t.Helper()
	p := startRole(t, "querier", queryClusterRole(name, qc.ingesters[0], flags...))
	p.waitReady(30 * time.Second)
	// Ready means joined; wait until the querier's ring also has every
	// ingester ACTIVE and healthy, so that every read asks all three.
	require.Eventually(t, func() bool {
		instances, err := ringStatus(p)
		if err != nil {
			return false
		}
		active := 0
		for _, inst := range instances {
			if inst.State == ring.ACTIVE && inst.Healthy {
				active++
			}
		}
		return active == len(qc.ingesters)
	}, 30*time.Second, 50*time.Millisecond, "%s sees every ingester", name)
	return p
}

// clusterRequest is one API request of the tests.
type clusterRequest struct {
	path   string
	params url.Values
}

func (qc *queryCluster) requests() []clusterRequest {
	sec := func(ms int64) string { return strconv.FormatFloat(float64(ms)/1000, 'f', -1, 64) }
	start, end := sec(qc.now-9*60_000), sec(qc.now)
	return []clusterRequest{
		{path: "/api/v1/query", params: url.Values{"query": {`sum by (job) (rate(requests_total[2m]))`}, "time": {end}}},
		{path: "/api/v1/query_range", params: url.Values{"query": {`requests_total{job="api"}`}, "start": {start}, "end": {end}, "step": {"30"}}},
		{path: "/api/v1/series", params: url.Values{"match[]": {`requests_total`}, "start": {start}, "end": {end}}},
		{path: "/api/v1/labels", params: url.Values{"match[]": {`{job=~"api|db"}`}, "start": {start}, "end": {end}}},
		{path: "/api/v1/label/instance/values", params: url.Values{"match[]": {`requests_total{job="db"}`}, "start": {start}, "end": {end}}},
	}
}

// referenceData returns the data Prometheus' API answers over the same
// samples.
func (qc *queryCluster) referenceData(t *testing.T, r clusterRequest) string {
	t.Helper()
	rec := httptest.NewRecorder()
	qc.reference.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, r.path+"?"+r.params.Encode(), nil))
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	var resp apiResponse
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &resp))
	return string(resp.Data)
}

// TestCluster_QueryIngesterFailures kills ingesters of an RF 3 cluster one
// after the other: with one down every answer is complete and identical to
// Prometheus'; with two down every read fails naming both, unless it asks
// for a partial response.
func TestCluster_QueryIngesterFailures(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	qc := startQueryCluster(t)
	q := qc.startQuerier(t, "querier")

	// All up: Prometheus' answers, without warnings.
	for _, r := range qc.requests() {
		resp, err := q.api(r.path, r.params)
		require.NoError(t, err, r.path)
		require.JSONEq(t, qc.referenceData(t, r), string(resp.Data), r.path)
		require.Empty(t, resp.Warnings, r.path)
	}

	// One killed: the same answers, each with a warning naming it.
	qc.ingesters[1].kill()
	for _, r := range qc.requests() {
		resp, err := q.api(r.path, r.params)
		require.NoError(t, err, r.path)
		require.JSONEq(t, qc.referenceData(t, r), string(resp.Data), r.path)
		require.Len(t, resp.Warnings, 1, r.path)
		require.Contains(t, resp.Warnings[0], "ingester ingester-1 ", r.path)
	}

	// Two killed: an error naming both, as Prometheus reports a storage
	// failure (500 internal; label reads 422 execution).
	qc.ingesters[2].kill()
	for _, r := range qc.requests() {
		resp, err := q.api(r.path, r.params)
		require.Equal(t, "error", resp.Status, "%s: %v", r.path, err)
		if strings.HasPrefix(r.path, "/api/v1/label") {
			require.Equal(t, http.StatusUnprocessableEntity, httpCode(err), "%s: %v", r.path, err)
			require.Equal(t, "execution", resp.ErrorType, r.path)
		} else {
			require.Equal(t, http.StatusInternalServerError, httpCode(err), "%s: %v", r.path, err)
			require.Equal(t, "internal", resp.ErrorType, r.path)
		}
		require.Contains(t, resp.Error, "2 of 3 ingesters failed", r.path)
		require.Contains(t, resp.Error, "ingester ingester-1 ", r.path)
		require.Contains(t, resp.Error, "ingester ingester-2 ", r.path)

		// A partial response: what ingester-0 holds (everything, with RF 3
		// of 3) and a warning per failed ingester.
		params := url.Values{"partial_response": {"true"}}
		for k, v := range r.params {
			params[k] = v
		}
		resp, err = q.api(r.path, params)
		require.NoError(t, err, r.path)
		require.JSONEq(t, qc.referenceData(t, r), string(resp.Data), r.path)
		require.Len(t, resp.Warnings, 2, r.path)
		for _, w := range resp.Warnings {
			require.Contains(t, w, "partial response", r.path)
		}
	}
}

// TestCluster_QueryLimits checks that each per-query limit of a querier
// fails a query over it with Prometheus' error JSON naming the limit, and
// that a hung ingester makes a query time out as Prometheus' do.
func TestCluster_QueryLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	qc := startQueryCluster(t)
	q := qc.startQuerier(t, "querier",
		"--query.max-series=5", "--query.max-chunks=30", "--query.max-samples=1000", "--query.timeout=3s",
		// No hedging: the time case waits for a hung ingester until the timeout.
		"--query.hedge-delay=0")
	// The series limit alone: with the chunk limit too, the chunks of the
	// ingesters' parallel streams may pass 30 before the merge has counted
	// six series, and which limit answers would depend on timing.
	qSeries := qc.startQuerier(t, "querier-series", "--query.max-series=5")
	end := strconv.FormatFloat(float64(qc.now)/1000, 'f', -1, 64)
	start2h := strconv.FormatFloat(float64(qc.now-2*3600_000)/1000, 'f', -1, 64)

	for _, tc := range []struct {
		name      string
		querier   *process // Nil: q.
		path      string
		params    url.Values
		wantCode  int
		wantType  string
		wantError string
	}{
		{
			name: "within the limits", path: "/api/v1/query",
			params:   url.Values{"query": {`requests_total{instance=~"host-0[0-4]"}`}, "time": {end}},
			wantCode: http.StatusOK,
		},
		{
			name: "series", querier: qSeries, path: "/api/v1/query",
			params:   url.Values{"query": {`sum(requests_total)`}, "time": {end}},
			wantCode: http.StatusUnprocessableEntity, wantType: "execution", wantError: "limit set by --query.max-series=5",
		},
		{
			name: "chunks", path: "/api/v1/query",
			params:   url.Values{"query": {`count_over_time(big_series[8h])`}, "time": {end}},
			wantCode: http.StatusUnprocessableEntity, wantType: "execution", wantError: "limit set by --query.max-chunks=30",
		},
		{
			// Two hours of one series are a few chunks, but at a 5s step
			// 1,441 points.
			name: "samples", path: "/api/v1/query_range",
			params:   url.Values{"query": {`big_series`}, "start": {start2h}, "end": {end}, "step": {"5"}},
			wantCode: http.StatusUnprocessableEntity, wantType: "execution", wantError: "query processing would load too many samples into memory",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := q
			if tc.querier != nil {
				p = tc.querier
			}
			resp, err := p.api(tc.path, tc.params)
			if tc.wantCode == http.StatusOK {
				require.NoError(t, err)
				require.Equal(t, "success", resp.Status)
				return
			}
			require.Equal(t, tc.wantCode, httpCode(err), "%v", err)
			require.Equal(t, "error", resp.Status)
			require.Equal(t, tc.wantType, resp.ErrorType)
			require.Contains(t, resp.Error, tc.wantError)
		})
	}

	t.Run("time", func(t *testing.T) {
		// A hung ingester: its connection stays open but nothing answers,
		// so the query waits until --query.timeout.
		require.NoError(t, qc.ingesters[2].cmd.Process.Signal(syscall.SIGSTOP))
		t.Cleanup(func() { _ = qc.ingesters[2].cmd.Process.Signal(syscall.SIGCONT) })
		began := time.Now()
		// Within the limits: over them, the other ingesters would stop
		// at the series limit the querier hands them, and the query
		// would fail with it at once.
		resp, err := q.api("/api/v1/query", url.Values{"query": {`requests_total{instance=~"host-0[0-4]"}`}, "time": {end}})
		require.Equal(t, http.StatusServiceUnavailable, httpCode(err), "%v", err)
		require.Equal(t, "timeout", resp.ErrorType)
		require.Contains(t, resp.Error, "query timed out")
		require.Less(t, time.Since(began), 30*time.Second)
	})

	// The querier's metrics saw the rejected queries (the series limit
	// answered on qSeries, the chunk limit here).
	for _, code := range []string{"422", "503"} {
		n, err := q.metric("census_querier_request_duration_seconds_count", "code", code, "endpoint", "/api/v1/query", "method", "get")
		require.NoError(t, err)
		require.Equal(t, 1.0, n, code)
	}
}
