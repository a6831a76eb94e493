package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang/snappy"
	config_util "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/prompb"
	"github.com/prometheus/prometheus/storage/remote"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"

	"github.com/census-metrics/census/agent/kubetest"
	"github.com/census-metrics/census/ring"
)

// The ingester StatefulSet of deploy/kubernetes/census.yaml, in the
// namespace the test applies it to.
const (
	scaleNamespace   = "default"
	scaleStatefulSet = "census-ingester"
)

// TestKubeScale_IngestersLoseNothing runs the ingester StatefulSet of the
// plain manifests on a real API server with the real StatefulSet
// controller, a fake kubelet running each pod as an ingester process, and
// a distributor, a querier and an agent as processes of the test in the
// same gossip ring. Under a steady remote-write load, and an agent scraping
// a synthetic target every second, it scales the StatefulSet with
// kubectl through 3, 5, 2, 6 and 3 replicas, waiting at each step for the
// pods and the ring to match. No acknowledged sample may be lost, and no
// answer of the querier, compared every second with what was
// acknowledged, may differ from it; every scrape the agent made must be
// stored exactly once.
func TestKubeScale_IngestersLoseNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	kube := kubetest.Start(t)
	kube.StartControllerManager(t, "statefulset-controller")
	ctx := context.Background()

	// The distributor is the gossip seed: every other member joins it.
	dist := startRole(t, "distributor", roleConfig{id: "distributor"})
	q := startRole(t, "querier", roleConfig{id: "querier", join: dist})
	kubelet := startFakeKubelet(t, kube.Client, fakeKubeletConfig{
		namespace: scaleNamespace,
		nodes:     []string{"node-a", "node-b", "node-c"},
		join:      []string{dist.gossip, q.gossip},
		// The ingesters ask the API server whether their pod was scaled
		// away, as the pod's service account, which the test has not.
		flags:    []string{"--ring.heartbeat-period=200ms", "--ingester.kubeconfig=" + kube.Kubeconfig},
		maxGrace: 60 * time.Second,
	})
	applyIngesterManifests(t, kube, filepath.Join("..", "..", "deploy", "kubernetes", "census.yaml"))
	members := []*process{dist, q}
	waitIngesters(t, kube.Client, members, 3)
	for _, p := range members {
		p.waitReady(30 * time.Second)
	}

	// An agent scrapes a synthetic target every second as well, and
	// pushes to the ingesters as it finds them in the ring.
	target, targetURL := startServedTarget(t)
	ag := startRole(t, "agent", roleConfig{id: "agent", join: dist, scrapeConfig: writeScrapeConfig(t, targetURL.Host)})
	ag.waitReady(30 * time.Second)

	load := startScaleLoad(t, dist, q)
	load.waitAcked(t, 20)
	for _, n := range []int{5, 2, 6, 3} {
		began := time.Now()
		_, err := kube.Kubectl(ctx, "scale", "statefulset", scaleStatefulSet, "-n", scaleNamespace, "--replicas="+strconv.Itoa(n))
		require.NoError(t, err)
		waitIngesters(t, kube.Client, members, n)
		t.Logf("scaled to %d ingesters in %s", n, time.Since(began).Round(time.Millisecond))
		// Pushes and checks go on between the steps as well.
		load.waitAcked(t, 20)
	}
	load.stop()

	acked, pushed, pushErrs, checks, mismatches := load.result()
	t.Logf("%d pushes acknowledged, %d failed; %d query checks", len(acked), pushErrs, checks)
	require.Empty(t, load.compare(time.Now().UnixMilli(), acked, pushed), "the final answer of the querier")
	require.Empty(t, mismatches, "answers of the querier that differed from what was acknowledged, of %d", checks)
	scrapes := requireEveryScrape(t, q, target, target.timestamps()[0], time.Now().UnixMilli())
	t.Logf("every one of the agent's %d scrapes is stored once", scrapes)
	dropped, err := ag.metric("census_agent_samples_dropped_total")
	require.NoError(t, err)
	require.Zero(t, dropped, "samples the agent dropped")

	// Every ingester of a deleted pod stopped by itself within its grace
	// period: 5->2 and 6->3 delete three pods each.
	stopped := kubelet.stopped()
	require.Len(t, stopped, 6)
	for _, s := range stopped {
		t.Logf("%s stopped in %s", s.pod, s.took.Round(time.Millisecond))
		require.False(t, s.killed, "%s was killed at the end of its grace period", s.pod)
		require.Zero(t, s.exitCode, "%s exit code", s.pod)
	}
}

// applyIngesterManifests applies, with kubectl, what the ingester
// StatefulSet needs of the manifests at path: the StatefulSet, the
// Services, the configuration and the RBAC objects. The other workloads
// run as processes of the test, not as pods.
func applyIngesterManifests(t *testing.T, kube *kubetest.Server, path string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	kinds := []string{"Service", "ServiceAccount", "ConfigMap", "Secret", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
	var kept [][]byte
	foundStatefulSet := false
	r := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	for {
		doc, err := r.Read()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		js, err := k8syaml.ToJSON(doc)
		require.NoError(t, err)
		var obj metav1.PartialObjectMetadata
		require.NoError(t, json.Unmarshal(js, &obj))
		switch {
		case obj.Kind == "StatefulSet" && obj.Name == scaleStatefulSet:
			foundStatefulSet = true
		case !slices.Contains(kinds, obj.Kind):
			continue
		}
		kept = append(kept, doc)
	}
	require.True(t, foundStatefulSet, "no StatefulSet %s in %s", scaleStatefulSet, path)
	file := filepath.Join(t.TempDir(), "ingester.yaml")
	require.NoError(t, os.WriteFile(file, bytes.Join(kept, []byte("\n---\n")), 0o600))
	out, err := kube.Kubectl(context.Background(), "apply", "-n", scaleNamespace, "-f", file)
	require.NoError(t, err)
	t.Logf("kubectl apply:\n%s", out)
}

// waitIngesters waits until the StatefulSet has n ready pods, ordinals 0
// to n-1 and no other, and the ring of every member lists exactly them as
// ACTIVE and healthy, with no instance joining or leaving.
func waitIngesters(t *testing.T, client kubernetes.Interface, members []*process, n int) {
	t.Helper()
	const timeout = 90 * time.Second
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprintf("%s-%d", scaleStatefulSet, i)
	}
	slices.Sort(want)
	deadline := time.Now().Add(timeout)
	for {
		why := ingestersDiffer(client, members, want)
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d ingesters not in place within %s: %s", n, timeout, why)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ingestersDiffer says how the StatefulSet's pods or the members' rings
// differ from the ingesters want (sorted names), or returns "".
func ingestersDiffer(client kubernetes.Interface, members []*process, want []string) string {
	ctx := context.Background()
	sts, err := client.AppsV1().StatefulSets(scaleNamespace).Get(ctx, scaleStatefulSet, metav1.GetOptions{})
	if err != nil {
		return err.Error()
	}
	if st := sts.Status; st.ObservedGeneration < sts.Generation || st.Replicas != int32(len(want)) || st.ReadyReplicas != int32(len(want)) {
		return fmt.Sprintf("StatefulSet generation %d, status %+v", sts.Generation, st)
	}
	pods, err := client.CoreV1().Pods(scaleNamespace).List(ctx, metav1.ListOptions{LabelSelector: metav1.FormatLabelSelector(sts.Spec.Selector)})
	if err != nil {
		return err.Error()
	}
	var names []string
	for _, p := range pods.Items {
		ready := slices.ContainsFunc(p.Status.Conditions, func(c corev1.PodCondition) bool {
			return c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue
		})
		if p.DeletionTimestamp != nil || !ready {
			return fmt.Sprintf("pod %s is terminating or not ready", p.Name)
		}
		names = append(names, p.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, want) {
		return fmt.Sprintf("pods %v, want %v", names, want)
	}
	for _, m := range members {
		rs, err := ringStatus(m)
		if err != nil {
			return err.Error()
		}
		var active []string
		for id, inst := range rs {
			switch {
			case inst.State == ring.ACTIVE && inst.Healthy:
				active = append(active, id)
			case inst.State != ring.LEFT:
				return fmt.Sprintf("the ring of %s lists %s %s (healthy %t)", m.name, id, inst.State, inst.Healthy)
			}
		}
		slices.Sort(active)
		if !slices.Equal(active, want) {
			return fmt.Sprintf("the ring of %s lists %v ACTIVE, want %v", m.name, active, want)
		}
	}
	return ""
}

// scaleSeries is how many series the scale test's load writes.
const scaleSeries = 16

// scaleValue is the value of series k at push n: each series is a counter
// that every push increases, and every sample is checkable on its own.
func scaleValue(k, n int) float64 { return float64((k + 1) * n) }

// scaleLoad pushes scaleSeries series at a new timestamp every 100ms
// through the distributor with Prometheus' remote-write client, and
// compares the querier's answer every second with the pushes that were
// acknowledged.
type scaleLoad struct {
	q      *process
	client remote.WriteClient
	start  int64 // Unix milliseconds before the first push.

	mtx        sync.Mutex    // Guards the fields below.
	pushed     map[int64]int // Timestamp -> push number, of every push sent.
	acked      map[int64]bool
	pushErrs   int
	checks     int
	mismatches []string // How answers of the querier differed.

	stopc chan struct{}
	wg    sync.WaitGroup // The pusher and the checker.
}

func startScaleLoad(t *testing.T, dist, q *process) *scaleLoad {
	t.Helper()
	client, err := remote.NewWriteClient("scale-test", &remote.ClientConfig{
		URL:     &config_util.URL{URL: &url.URL{Scheme: "http", Host: dist.http, Path: "/api/v1/push"}},
		Timeout: model.Duration(5 * time.Second),
	})
	require.NoError(t, err)
	l := &scaleLoad{q: q, client: client, start: time.Now().UnixMilli(), pushed: map[int64]int{}, acked: map[int64]bool{}, stopc: make(chan struct{})}
	l.wg.Go(l.push)
	l.wg.Go(l.check)
	t.Cleanup(l.stop)
	return l
}

// push sends one request with every series every 100ms, one at a time,
// each at a timestamp after the last.
func (l *scaleLoad) push() {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last int64
	for n := 1; ; n++ {
		select {
		case <-l.stopc:
			return
		case <-tick.C:
		}
		ts := max(time.Now().UnixMilli(), last+1)
		last = ts
		req := &prompb.WriteRequest{}
		for k := range scaleSeries {
			req.Timeseries = append(req.Timeseries, prompb.TimeSeries{
				Labels:  []prompb.Label{{Name: "__name__", Value: "scale_test_total"}, {Name: "series", Value: strconv.Itoa(k)}},
				Samples: []prompb.Sample{{Value: scaleValue(k, n), Timestamp: ts}},
			})
		}
		raw, err := req.Marshal()
		if err != nil {
			panic("BUG: marshal a write request: " + err.Error())
		}
		l.mtx.Lock()
		l.pushed[ts] = n
		l.mtx.Unlock()
		_, err = l.client.Store(context.Background(), snappy.Encode(nil, raw), 0)
		l.mtx.Lock()
		if err == nil {
			l.acked[ts] = true
		} else {
			l.pushErrs++
		}
		l.mtx.Unlock()
	}
}

// check compares the querier's answer with the acknowledged pushes every
// second.
func (l *scaleLoad) check() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-l.stopc:
			return
		case <-tick.C:
		}
		// Acknowledged before the query was sent: the answer must hold it.
		acked, _, _, _, _ := l.result()
		at := time.Now().UnixMilli()
		got, err := l.query(at)
		// Sent before the answer came: the answer may hold it.
		_, pushed, _, _, _ := l.result()
		diff := ""
		if err != nil {
			diff = err.Error()
		} else {
			diff = l.diff(got, at, acked, pushed)
		}
		l.mtx.Lock()
		l.checks++
		if diff != "" {
			l.mismatches = append(l.mismatches, fmt.Sprintf("at %s: %s", time.UnixMilli(at).Format("15:04:05.000"), diff))
		}
		l.mtx.Unlock()
	}
}

// query reads every sample of the load from the querier as it answers at
// time at: series -> timestamp -> value.
func (l *scaleLoad) query(at int64) (map[string]map[int64]float64, error) {
	window := (at-l.start)/1000 + 2
	resp, err := l.q.api("/api/v1/query", url.Values{
		"query": {fmt.Sprintf("scale_test_total[%ds]", window)},
		"time":  {fmt.Sprintf("%.3f", float64(at)/1000)},
	})
	if err != nil {
		return nil, err
	}
	if len(resp.Warnings) > 0 {
		return nil, fmt.Errorf("the querier warns %q", resp.Warnings)
	}
	var d queryData
	if err := json.Unmarshal(resp.Data, &d); err != nil {
		return nil, err
	}
	var mat []matrixSeries
	if err := json.Unmarshal(d.Result, &mat); err != nil {
		return nil, err
	}
	out := map[string]map[int64]float64{}
	for _, s := range mat {
		samples := map[int64]float64{}
		for _, pt := range s.Values {
			ts, ok := pt[0].(float64)
			vs, ok2 := pt[1].(string)
			if !ok || !ok2 {
				return nil, fmt.Errorf("series %v: sample %v is not [time, \"value\"]", s.Metric, pt)
			}
			v, err := strconv.ParseFloat(vs, 64)
			if err != nil {
				return nil, err
			}
			samples[int64(math.Round(ts*1000))] = v
		}
		out[s.Metric["series"]] = samples
	}
	return out, nil
}

// diff says how got, the querier's answer at time at, differs from the
// reference: every acked push at or before at with its values, and
// nothing but pushed ones; "" if it does not.
func (l *scaleLoad) diff(got map[string]map[int64]float64, at int64, acked map[int64]bool, pushed map[int64]int) string {
	var out []string
	for k := range scaleSeries {
		samples := got[strconv.Itoa(k)]
		var missing, wrong []int64
		for ts := range acked {
			if _, ok := samples[ts]; ts <= at && !ok {
				missing = append(missing, ts)
			}
		}
		for ts, v := range samples {
			if n, ok := pushed[ts]; !ok || v != scaleValue(k, n) {
				wrong = append(wrong, ts)
			}
		}
		if len(missing) > 0 || len(wrong) > 0 {
			slices.Sort(missing)
			slices.Sort(wrong)
			out = append(out, fmt.Sprintf("series %d lacks %d of %d acknowledged samples %v and has %d wrong %v",
				k, len(missing), len(acked), firstFew(missing), len(wrong), firstFew(wrong)))
		}
	}
	return strings.Join(out, "; ")
}

// compare is diff of a query at time at, or the error of the query.
func (l *scaleLoad) compare(at int64, acked map[int64]bool, pushed map[int64]int) string {
	got, err := l.query(at)
	if err != nil {
		return err.Error()
	}
	return l.diff(got, at, acked, pushed)
}

// firstFew returns the first timestamps of tss, enough to look them up in
// the logs.
func firstFew(tss []int64) []int64 {
	return tss[:min(len(tss), 5)]
}

// result returns copies of what the load recorded so far.
func (l *scaleLoad) result() (acked map[int64]bool, pushed map[int64]int, pushErrs, checks int, mismatches []string) {
	l.mtx.Lock()
	defer l.mtx.Unlock()
	acked = make(map[int64]bool, len(l.acked))
	for ts := range l.acked {
		acked[ts] = true
	}
	pushed = make(map[int64]int, len(l.pushed))
	for ts, n := range l.pushed {
		pushed[ts] = n
	}
	return acked, pushed, l.pushErrs, l.checks, slices.Clone(l.mismatches)
}

// waitAcked waits until n more pushes than now are acknowledged.
func (l *scaleLoad) waitAcked(t *testing.T, n int) {
	t.Helper()
	before := l.ackedCount()
	require.Eventually(t, func() bool {
		return l.ackedCount() >= before+n
	}, 30*time.Second, 50*time.Millisecond, "%d more pushes acknowledged", n)
}

// ackedCount returns how many pushes were acknowledged so far.
func (l *scaleLoad) ackedCount() int {
	l.mtx.Lock()
	defer l.mtx.Unlock()
	return len(l.acked)
}

// stop ends the pushes and the checks; a second call does nothing.
func (l *scaleLoad) stop() {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	l.wg.Wait()
}
