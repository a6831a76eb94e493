package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/census-metrics/census/agent/kubetest"
)

// TestCluster_KubernetesAgentsPartitionTheTargets runs two agent processes
// without --config.file, on two nodes of a real API server, and checks
// that each annotated pod is scraped by the agent of its node only, and
// that every pod's series are queryable.
func TestCluster_KubernetesAgentsPartitionTheTargets(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	kube := kubetest.Start(t)
	client := kube.Client
	ctx := context.Background()
	for _, n := range []string{"node-a", "node-b"} {
		_, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{})
		require.NoError(t, err)
	}
	_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{})
	require.NoError(t, err)
	pods := map[string]string{"shop-a1": "node-a", "shop-a2": "node-a", "shop-b1": "node-b"}
	for name, node := range pods {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			fmt.Fprintf(w, "shop_orders_total{pod_name=%q} 7\n", name)
		}))
		srv.Listener.Close()
		srv.Listener = ln
		srv.Start()
		t.Cleanup(srv.Close)
		port := ln.Addr().(*net.TCPAddr).Port
		pod, err := client.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", Labels: map[string]string{"app.kubernetes.io/name": "shop"},
				Annotations: map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": strconv.Itoa(port)}},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "shop", Image: "example.com/shop:1",
				Ports: []corev1.ContainerPort{{ContainerPort: int32(port)}}}}},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		// No kubelet: the pod runs because the test says so.
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1", PodIPs: []corev1.PodIP{{IP: "127.0.0.1"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
		_, err = client.CoreV1().Pods("shop").UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		require.NoError(t, err)
	}

	ing := startRole(t, "ingester", roleConfig{id: "ingester", rf: 1})
	agents := map[string]*process{}
	for _, node := range []string{"node-a", "node-b"} {
		agents[node] = startRole(t, "agent", roleConfig{id: "agent-" + node, join: ing, rf: 1, flags: []string{
			"--agent.kubeconfig=" + kube.Kubeconfig, "--agent.node-name=" + node, "--agent.scrape-interval=1s",
		}})
	}
	q := startRole(t, "querier", roleConfig{id: "querier", join: ing, rf: 1})
	for _, p := range []*process{ing, agents["node-a"], agents["node-b"], q} {
		p.waitReady(30 * time.Second)
	}

	// Every pod is queryable, with kube-prometheus' labels.
	require.Eventually(t, func() bool {
		got, _, err := queryInstant(q, `shop_orders_total{job="shop", namespace="shop", container="shop"}`, "pod", time.Now().UnixMilli())
		return err == nil && len(got) == 3 && got["shop-a1"] == 7 && got["shop-a2"] == 7 && got["shop-b1"] == 7
	}, 60*time.Second, 250*time.Millisecond)
	nodes, _ := instantValues(t, q, `count by (node) (up{job="shop"})`, "node", time.Now().UnixMilli())
	require.Equal(t, map[string]float64{"node-a": 2, "node-b": 1}, nodes)

	// Each agent scrapes the pods of its node, and only those.
	for node, want := range map[string]float64{"node-a": 2, "node-b": 1} {
		require.Eventually(t, func() bool {
			got, err := agents[node].metric("prometheus_target_scrape_pool_targets", "scrape_job", "kubernetes-pods")
			return err == nil && got == want
		}, 10*time.Second, 100*time.Millisecond, "targets of the agent of %s", node)
	}

	for _, p := range []*process{agents["node-a"], agents["node-b"], q, ing} {
		require.NoError(t, p.stop(30*time.Second))
	}
}
