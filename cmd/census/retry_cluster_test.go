package main

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/golang/snappy"
	remoteapi "github.com/prometheus/client_golang/exp/api/remote"
	config_util "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/prompb"
	"github.com/prometheus/prometheus/storage/remote"
	"github.com/stretchr/testify/require"
)

// TestCluster_RetryAfterNoQuorum kills 2 of 3 ingesters (replication factor
// 3) and sends a remote-write batch with Prometheus' own client: it gets a
// 503, which the client retries, though the surviving ingester stored it.
// Once the two are back, the identical resend is a 2xx, the survivor taking
// the samples it already holds without complaint, and every sample is
// queryable once.
func TestCluster_RetryAfterNoQuorum(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	// The heartbeat timeout outlasts the outage: the distributor keeps
	// sending to the dead replicas, so the survivor gets every push.
	ingesters, startIngester := restartableIngesters(t, 3, 5*time.Minute)
	for i := range ingesters {
		ingesters[i] = startIngester(i)
	}
	dist := startRole(t, "distributor", roleConfig{id: "distributor", join: ingesters[0], rf: 3, heartbeatTimeout: 5 * time.Minute})
	q := startRole(t, "querier", roleConfig{id: "querier", join: ingesters[0], rf: 3, heartbeatTimeout: 5 * time.Minute})
	for _, p := range append(ingesters[:], dist, q) {
		p.waitReady(30 * time.Second)
	}
	// Every member sees the three ingesters before the first push.
	for _, p := range []*process{dist, q} {
		require.Eventually(t, func() bool {
			st, err := ringStatus(p)
			return err == nil && len(st) == 3
		}, 30*time.Second, 100*time.Millisecond, "%s sees 3 ingesters", p.name)
	}

	// One batch: several series with several samples each, as a remote-write
	// queue sends them. A resend repeats samples behind each series' newest.
	const (
		series  = 20
		samples = 5
	)
	start := time.Now().Add(-time.Minute).Truncate(time.Second).UnixMilli()
	value := func(k, n int) float64 { return float64(k*1000 + n) }
	req := &prompb.WriteRequest{}
	for k := range series {
		ts := prompb.TimeSeries{Labels: []prompb.Label{
			{Name: "__name__", Value: "retried"},
			{Name: "job", Value: "retry"},
			{Name: "series", Value: strconv.Itoa(k)},
		}}
		for n := range samples {
			ts.Samples = append(ts.Samples, prompb.Sample{Timestamp: start + int64(n)*1000, Value: value(k, n)})
		}
		req.Timeseries = append(req.Timeseries, ts)
	}
	raw, err := req.Marshal()
	require.NoError(t, err)
	body := snappy.Encode(nil, raw)

	c, err := remote.NewWriteClient("test", &remote.ClientConfig{
		URL:           &config_util.URL{URL: &url.URL{Scheme: "http", Host: dist.http, Path: "/api/v1/push"}},
		Timeout:       model.Duration(10 * time.Second),
		WriteProtoMsg: remoteapi.WriteV1MessageType,
	})
	require.NoError(t, err)

	ingesters[1].kill()
	ingesters[2].kill()
	_, err = c.Store(context.Background(), body, 0)
	var rec remote.RecoverableError
	require.ErrorAs(t, err, &rec, "no quorum is retried: %v", err)
	require.ErrorContains(t, err, "503")
	stored, err := ingesters[0].metric("census_ingester_samples_appended_total")
	require.NoError(t, err)
	require.Equal(t, float64(series*samples), stored, "the survivor stored the batch")

	for _, i := range []int{1, 2} {
		ingesters[i] = startIngester(i)
	}
	for _, i := range []int{1, 2} {
		ingesters[i].waitReady(30 * time.Second)
	}

	// Retry as Prometheus' queue manager does: a recoverable error again
	// after a backoff, anything else never.
	deadline := time.Now().Add(60 * time.Second)
	for attempt := 1; ; attempt++ {
		_, err = c.Store(context.Background(), body, attempt)
		if err == nil {
			break
		}
		require.ErrorAs(t, err, &rec, "attempt %d is not retried, so the sender drops the batch: %v", attempt, err)
		require.True(t, time.Now().Before(deadline), "no attempt succeeded within 60s; the last: %v", err)
		time.Sleep(500 * time.Millisecond)
	}

	for i, ing := range ingesters {
		discarded := 0.0
		for _, reason := range []string{"out_of_order", "duplicate_timestamp", "out_of_bounds"} {
			n, err := ing.metric("census_ingester_discarded_samples_total", "reason", reason)
			require.NoError(t, err)
			discarded += n
		}
		require.Zero(t, discarded, "ingester-%d discarded none of the resent samples", i)
	}
	resent, err := ingesters[0].metric("census_ingester_resent_samples_total")
	require.NoError(t, err)
	require.GreaterOrEqual(t, resent, float64(series*(samples-1)), "the survivor found the resent samples stored")

	end := start + int64(samples-1)*1000
	got := querierSamples(t, q, "retried", start, end)
	require.Len(t, got, series)
	for k := range series {
		want := map[int64]float64{}
		for n := range samples {
			want[start+int64(n)*1000] = value(k, n)
		}
		require.Equal(t, want, got[strconv.Itoa(k)], "series %d", k)
	}
	counts, _ := instantValues(t, q, fmt.Sprintf(`count_over_time(retried[%ds])`, (end-start)/1000+2), "series", end+500)
	require.Len(t, counts, series)
	for k, n := range counts {
		require.Equal(t, float64(samples), n, "series %s: each sample once", k)
	}

	for _, p := range append(ingesters[:], dist, q) {
		require.NoError(t, p.stop(60*time.Second))
	}
}
