package main

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	remoteapi "github.com/prometheus/client_golang/exp/api/remote"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"
)

// TestCluster_HungIngesterDoesNotHoldPushes stops one of three ingesters
// (RF 3) with SIGSTOP, alive but not answering, under remote write: every
// push is still acknowledged, without waiting for the hung replica (the
// push timeout is two minutes, the client's ten seconds); a query answers
// completely after the hedge delay, without it; and once the ingester
// wakes up it gets what it missed from the pushes still in flight.
func TestCluster_HungIngesterDoesNotHoldPushes(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	first := startRole(t, "ingester", roleConfig{id: "ingester-0", rf: 3})
	ingesters := []*process{first}
	for i := 1; i < 3; i++ {
		ingesters = append(ingesters, startRole(t, "ingester", roleConfig{id: fmt.Sprintf("ingester-%d", i), join: first, rf: 3}))
	}
	dist := startRole(t, "distributor", roleConfig{id: "distributor", join: first, rf: 3, flags: []string{"--distributor.push-timeout=2m"}})
	q := startRole(t, "querier", roleConfig{id: "querier", join: first, rf: 3, flags: []string{"--query.hedge-delay=500ms", "--query.timeout=2m"}})
	for _, p := range append(slices.Clone(ingesters), dist, q) {
		p.waitReady(30 * time.Second)
	}
	require.Eventually(t, func() bool {
		st, err := ringStatus(dist)
		if err != nil {
			return false
		}
		active := 0
		for _, inst := range st {
			if inst.State.String() == "ACTIVE" {
				active++
			}
		}
		return active == 3
	}, 30*time.Second, 100*time.Millisecond, "the distributor sees three ACTIVE ingesters")

	const series = 20
	values := map[string]float64{}
	for i := range series {
		values[fmt.Sprintf("hung_test_%02d", i)] = float64(i)
	}
	ts := time.Now().Add(-time.Minute).UnixMilli()
	push := func() time.Duration {
		t.Helper()
		ts += 1000
		began := time.Now()
		require.NoError(t, remoteWrite(t, dist.http, remoteapi.WriteV1MessageType, ts, values, labels.FromStrings("job", "hung")))
		return time.Since(began)
	}
	median := func(ds []time.Duration) time.Duration {
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	const pushes = 10
	var quiet, hung []time.Duration
	for range pushes {
		quiet = append(quiet, push())
	}

	hungIngester := ingesters[2]
	require.NoError(t, hungIngester.cmd.Process.Signal(syscall.SIGSTOP))
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = hungIngester.cmd.Process.Signal(syscall.SIGCONT)
		}
	})
	for range pushes {
		hung = append(hung, push())
	}
	t.Logf("push latency, median of %d pushes of %d series: %s with every ingester answering, %s with one hung", pushes, series, median(quiet), median(hung))

	// A query answers from the two replicas that answer, all of it, and
	// names the one it did not wait for.
	began := time.Now()
	resp, err := q.api("/api/v1/query", url.Values{"query": {`count({job="hung"})`}, "time": {strconv.FormatInt(ts/1000, 10)}})
	require.NoError(t, err)
	t.Logf("query latency with one ingester hung: %s (--query.hedge-delay=500ms)", time.Since(began))
	require.JSONEq(t, fmt.Sprintf(`{"resultType":"vector","result":[{"metric":{},"value":[%d,"%d"]}]}`, ts/1000, series), string(resp.Data))
	require.Len(t, resp.Warnings, 1)
	require.Contains(t, resp.Warnings[0], "ingester-2")
	require.NoError(t, hungIngester.cmd.Process.Signal(syscall.SIGCONT))
	resumed = true

	// Every sample reached every replica: the hung one's pushes went on
	// after the answers and it took them when it woke up.
	require.Eventually(t, func() bool {
		n, err := dist.metric("census_distributor_ingester_samples_total", "ingester", "ingester-2", "result", "sent")
		return err == nil && n == 2*pushes*series
	}, 60*time.Second, 100*time.Millisecond, "ingester-2 acknowledged every sample")
	dropped, err := dist.metric("census_distributor_ingester_samples_total", "ingester", "ingester-2", "result", "dropped")
	if err == nil {
		require.Zero(t, dropped)
	}
}
