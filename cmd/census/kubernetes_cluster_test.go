package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// startKubeAPIServer starts a real kube-apiserver and etcd with envtest
// from KUBEBUILDER_ASSETS (make test builds them with
// scripts/kube-test-assets.sh) and returns a kubeconfig file for it and a
// client.
func startKubeAPIServer(t *testing.T) (string, kubernetes.Interface) {
	t.Helper()
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("KUBEBUILDER_ASSETS is not set: `make test` sets it from scripts/kube-test-assets.sh")
		}
		t.Skip("KUBEBUILDER_ASSETS is not set; run: KUBEBUILDER_ASSETS=$(scripts/kube-test-assets.sh) go test ./cmd/census")
	}
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	restCfg, err := env.Start()
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, env.Stop()) })
	user, err := env.AddUser(envtest.User{Name: "census-agent", Groups: []string{"system:masters"}}, nil)
	require.NoError(t, err)
	kc, err := user.KubeConfig()
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), "kubeconfig")
	require.NoError(t, os.WriteFile(file, kc, 0o600))
	client, err := kubernetes.NewForConfig(restCfg)
	require.NoError(t, err)
	return file, client
}

// TestCluster_KubernetesAgentsPartitionTheTargets runs two agent processes
// without --config.file, on two nodes of a real API server, and checks
// that each annotated pod is scraped by the agent of its node only, and
// that every pod's series are queryable.
func TestCluster_KubernetesAgentsPartitionTheTargets(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	kubeconfig, client := startKubeAPIServer(t)
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

	common := []string{
		"--http.listen-address=127.0.0.1:0",
		"--memberlist.bind-address=127.0.0.1:0",
		"--ring.heartbeat-period=200ms",
		"--ring.replication-factor=1",
	}
	ing := startProcess(t, "ingester", append(append([]string{"ingester"}, common...),
		"--instance.id=ingester", "--grpc.listen-address=127.0.0.1:0", "--storage.path="+filepath.Join(t.TempDir(), "data"))...)
	agents := map[string]*process{}
	for _, node := range []string{"node-a", "node-b"} {
		agents[node] = startProcess(t, "agent-"+node, append(append([]string{"agent"}, common...),
			"--instance.id=agent-"+node, "--memberlist.join="+ing.gossip,
			"--agent.kubeconfig="+kubeconfig, "--agent.node-name="+node, "--agent.scrape-interval=1s",
			"--agent.wal-path="+t.TempDir())...)
	}
	q := startProcess(t, "querier", append(append([]string{"querier"}, common...), "--instance.id=querier", "--memberlist.join="+ing.gossip)...)
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
			m := fetch(t, "http://"+agents[node].http+"/metrics")
			return scrapePoolTargets(m, "kubernetes-pods") == want
		}, 10*time.Second, 100*time.Millisecond, "targets of the agent of %s", node)
	}

	for _, p := range []*process{agents["node-a"], agents["node-b"], q, ing} {
		require.NoError(t, p.stop(30*time.Second))
	}
}

// scrapePoolTargets reads Prometheus' count of a scrape pool's targets
// from an exposition, or -1.
func scrapePoolTargets(exposition, job string) float64 {
	for _, line := range strings.Split(exposition, "\n") {
		var v float64
		if n, _ := fmt.Sscanf(line, `prometheus_target_scrape_pool_targets{scrape_job="`+job+`"} %g`, &v); n == 1 {
			return v
		}
	}
	return -1
}
