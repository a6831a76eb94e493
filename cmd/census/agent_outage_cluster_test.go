package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// rawSamples returns the timestamps (ms) and values of every sample of
// each e2e_value series in (end-window, end], by series label, as a range
// selector answers them: each stored sample exactly once.
func rawSamples(t *testing.T, q *process, window time.Duration, end int64) map[string][][2]string {
	t.Helper()
	resp, err := q.api("/api/v1/query", url.Values{
		"query": {fmt.Sprintf("e2e_value[%ds]", int(window.Seconds()))},
		"time":  {fmt.Sprintf("%.3f", float64(end)/1000)},
	})
	require.NoError(t, err)
	var d queryData
	require.NoError(t, json.Unmarshal(resp.Data, &d))
	require.Equal(t, "matrix", d.ResultType)
	var mat []matrixSeries
	require.NoError(t, json.Unmarshal(d.Result, &mat))
	out := map[string][][2]string{}
	for _, s := range mat {
		for _, pt := range s.Values {
			ts := int64(pt[0].(float64) * 1000)
			out[s.Metric["series"]] = append(out[s.Metric["series"]], [2]string{strconv.FormatInt(ts, 10), pt[1].(string)})
		}
	}
	return out
}

// TestCluster_AgentLosesNothingWhileEveryIngesterIsDown stops every
// ingester for 60 seconds while the agent scrapes every second, starts
// them again, and checks that every scrape of that minute is queryable,
// with no gap and no duplicate.
func TestCluster_AgentLosesNothingWhileEveryIngesterIsDown(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	const outage = 60 * time.Second
	target, targetURL := startServedTarget(t)

	ag := startRole(t, "agent", roleConfig{id: "agent", rf: 2, heartbeatTimeout: 5 * time.Second, scrapeConfig: writeScrapeConfig(t, targetURL.Host)})
	q := startRole(t, "querier", roleConfig{id: "querier", join: ag, rf: 2, heartbeatTimeout: 5 * time.Second})

	dataDirs := []string{t.TempDir(), t.TempDir()}
	startIngesters := func() []*process {
		ings := make([]*process, len(dataDirs))
		for i, dir := range dataDirs {
			ings[i] = startRole(t, "ingester", roleConfig{id: fmt.Sprintf("ingester-%d", i), join: ag, rf: 2, heartbeatTimeout: 5 * time.Second, storage: dir})
		}
		for _, p := range ings {
			p.waitReady(30 * time.Second)
		}
		return ings
	}
	ingesters := startIngesters()
	ag.waitReady(30 * time.Second)
	q.waitReady(30 * time.Second)

	require.Eventually(t, func() bool {
		got, _, err := queryInstant(q, "e2e_value", "series", time.Now().UnixMilli())
		return err == nil && len(got) == e2eSeries
	}, 30*time.Second, 200*time.Millisecond, "the agent's scrapes are queryable")
	first := target.timestamps()[0]

	// Every ingester stops; the agent keeps scraping for a minute.
	for _, p := range ingesters {
		require.NoError(t, p.stop(30*time.Second))
	}
	downAt := time.Now()
	require.Eventually(t, func() bool { return time.Since(downAt) >= outage }, outage+10*time.Second, time.Second)
	age, err := ag.metric("census_agent_oldest_unsent_sample_age_seconds")
	require.NoError(t, err)
	require.Greater(t, age, 30.0, "the agent holds the samples of the outage")

	ingesters = startIngesters()
	served := requireEveryScrape(t, q, target, first, time.Now().UnixMilli())
	require.Greater(t, served, int(outage/time.Second), "the target was scraped through the outage")
	dropped, err := ag.metric("census_agent_samples_dropped_total")
	require.NoError(t, err)
	require.Equal(t, 0.0, dropped)

	for _, p := range append(ingesters, ag, q) {
		require.NoError(t, p.stop(30*time.Second))
	}
}

// requireEveryScrape waits until the newest scrape target served at or
// before end is queryable, then checks that every scrape it served from
// first to end is stored, each exactly once, and returns how many it
// served.
func requireEveryScrape(t *testing.T, q *process, target *servedTarget, first, end int64) int {
	t.Helper()
	window := time.Duration(end-first)*time.Millisecond + time.Minute
	require.Eventually(t, func() bool {
		got := rawSamples(t, q, window, end)
		return len(got["0"]) > 0 && got["0"][len(got["0"])-1][0] == strconv.FormatInt(lastServedBefore(target, end), 10)
	}, 60*time.Second, 500*time.Millisecond, "the agent's backlog reaches the ingesters")

	got := rawSamples(t, q, window, end)
	var served []int64
	for _, ts := range target.timestamps() {
		if ts >= first && ts <= end {
			served = append(served, ts)
		}
	}
	for i := range e2eSeries {
		var want [][2]string
		for _, ts := range served {
			want = append(want, [2]string{strconv.FormatInt(ts, 10), strconv.FormatFloat(valueAt(i, ts), 'g', -1, 64)})
		}
		require.Equal(t, want, got[strconv.Itoa(i)], "series %d", i)
	}
	return len(served)
}

// lastServedBefore returns the newest timestamp the target served at or
// before ts.
func lastServedBefore(target *servedTarget, ts int64) int64 {
	var last int64
	for _, s := range target.timestamps() {
		if s <= ts {
			last = s
		}
	}
	return last
}
