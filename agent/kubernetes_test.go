package agent_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/util/teststorage"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/utils/ptr"

	"github.com/census-metrics/census/agent"
	"github.com/census-metrics/census/agent/kubetest"
)

// operatorCRD is a CustomResourceDefinition of the Prometheus Operator's
// kind, with a schema that takes any spec: the tests need the API server
// to store and watch the objects, not to validate them.
func operatorCRD(kind, plural string) *apiextensionsv1.CustomResourceDefinition {
	return &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: plural + ".monitoring.coreos.com"},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: "monitoring.coreos.com",
			Names: apiextensionsv1.CustomResourceDefinitionNames{Kind: kind, ListKind: kind + "List", Plural: plural, Singular: strings.ToLower(kind)},
			Scope: apiextensionsv1.NamespaceScoped,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{
				Name: "v1", Served: true, Storage: true,
				Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
					Type:                   "object",
					XPreserveUnknownFields: ptr.To(true),
				}},
			}},
		},
	}
}

// apiServer is a real kube-apiserver with etcd that serves the
// Prometheus Operator's monitor kinds.
type apiServer struct {
	*kubetest.Server
	dynamic dynamic.Interface
}

func startAPIServer(t *testing.T) *apiServer {
	t.Helper()
	s := &apiServer{Server: kubetest.Start(t, operatorCRD("ServiceMonitor", "servicemonitors"), operatorCRD("PodMonitor", "podmonitors"))}
	var err error
	s.dynamic, err = dynamic.NewForConfig(s.Config)
	require.NoError(t, err)
	return s
}

func (s *apiServer) createNode(t *testing.T, name string) {
	t.Helper()
	_, err := s.Client.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	require.NoError(t, err)
}

// createPod creates a running pod on node whose IP is loopback and whose
// container declares port, named "metrics"; there is no kubelet, so its
// status is patched by hand.
func (s *apiServer) createPod(t *testing.T, name, node string, port int, podLabels, annotations map[string]string) {
	t.Helper()
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: podLabels, Annotations: annotations},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{{
				Name: "app", Image: "example.com/app:1",
				Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: int32(port)}},
			}},
		},
	}
	created, err := s.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
	require.NoError(t, err)
	created.Status = corev1.PodStatus{
		Phase:      corev1.PodRunning,
		PodIP:      "127.0.0.1",
		PodIPs:     []corev1.PodIP{{IP: "127.0.0.1"}},
		HostIP:     "127.0.0.1",
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
	_, err = s.Client.CoreV1().Pods("default").UpdateStatus(ctx, created, metav1.UpdateOptions{})
	require.NoError(t, err)
}

var (
	podMonitors     = schema.GroupVersionResource{Group: "monitoring.coreos.com", Version: "v1", Resource: "podmonitors"}
	serviceMonitors = schema.GroupVersionResource{Group: "monitoring.coreos.com", Version: "v1", Resource: "servicemonitors"}
)

// applyMonitor creates or replaces a monitor from its YAML-like object.
func (s *apiServer) applyMonitor(t *testing.T, gvr schema.GroupVersionResource, kind, name string, spec map[string]any) {
	t.Helper()
	ctx := context.Background()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "monitoring.coreos.com/v1",
		"kind":       kind,
		"metadata":   map[string]any{"name": name, "namespace": "default"},
		"spec":       spec,
	}}
	res := s.dynamic.Resource(gvr).Namespace("default")
	existing, err := res.Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		obj.SetResourceVersion(existing.GetResourceVersion())
		_, err = res.Update(ctx, obj, metav1.UpdateOptions{})
	} else {
		_, err = res.Create(ctx, obj, metav1.CreateOptions{})
	}
	require.NoError(t, err)
}

func (s *apiServer) deleteMonitor(t *testing.T, gvr schema.GroupVersionResource, name string) {
	t.Helper()
	require.NoError(t, s.dynamic.Resource(gvr).Namespace("default").Delete(context.Background(), name, metav1.DeleteOptions{}))
}

// metricsServer serves one gauge naming the pod it stands for, on a free
// loopback port.
func metricsServer(t *testing.T, pod string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "served_by{pod_name=%q,path=%q} 1\n", pod, r.URL.Path)
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return ln.Addr().(*net.TCPAddr).Port
}

// runKubeAgent runs an agent on node with the built-in Kubernetes
// configuration, scraping every second, into its own TSDB.
func runKubeAgent(t *testing.T, api *apiServer, node string) (*agent.Agent, *teststorage.TestStorage) {
	t.Helper()
	cfg, err := agent.ParseScrapeConfig(agent.DefaultKubernetesConfig(api.Kubeconfig, node, time.Second), nil)
	require.NoError(t, err)
	db := teststorage.New(t)
	a, err := agent.New(agent.Config{WALPath: t.TempDir(), WALRetention: 2 * time.Hour, ScrapeInterval: time.Second, NodeName: node, Kubeconfig: api.Kubeconfig}, cfg, db, nil, prometheus.NewPedanticRegistry())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Error("agent did not stop within 20s")
		}
	})
	return a, db
}

// scrapedPods returns the sorted pod labels of an agent's targets in job.
func scrapedPods(a *agent.Agent, job string) []string {
	var pods []string
	for _, tg := range a.Targets()[job] {
		pods = append(pods, tg.Labels.Get("pod"))
	}
	sort.Strings(pods)
	return pods
}

// jobsWithPrefix returns an agent's targets of the jobs whose name starts
// with prefix.
func jobsWithPrefix(a *agent.Agent, prefix string) []agent.Target {
	var out []agent.Target
	for job, ts := range a.Targets() {
		if strings.HasPrefix(job, prefix) {
			out = append(out, ts...)
		}
	}
	return out
}

func TestAgent_Kubernetes(t *testing.T) {
	api := startAPIServer(t)
	api.createNode(t, "node-a")
	api.createNode(t, "node-b")

	annotated := func(port int) map[string]string {
		return map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": strconv.Itoa(port), "prometheus.io/path": "/custom"}
	}
	for _, p := range []struct{ name, node string }{{"web-a1", "node-a"}, {"web-a2", "node-a"}, {"web-b1", "node-b"}} {
		api.createPod(t, p.name, p.node, metricsServer(t, p.name), map[string]string{"app": "web"}, annotated(0))
	}
	// Fix the annotations' port: each pod has its own server.
	for _, name := range []string{"web-a1", "web-a2", "web-b1"} {
		pod, err := api.Client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
		require.NoError(t, err)
		pod.Annotations["prometheus.io/port"] = strconv.Itoa(int(pod.Spec.Containers[0].Ports[0].ContainerPort))
		_, err = api.Client.CoreV1().Pods("default").Update(context.Background(), pod, metav1.UpdateOptions{})
		require.NoError(t, err)
	}
	// Not annotated: scraped only once a PodMonitor selects it.
	api.createPod(t, "batch-a1", "node-a", metricsServer(t, "batch-a1"), map[string]string{"app": "batch"}, nil)

	agentA, dbA := runKubeAgent(t, api, "node-a")
	agentB, dbB := runKubeAgent(t, api, "node-b")

	t.Run("annotated pods are scraped by the agent of their node", func(t *testing.T) {
		require.Eventually(t, func() bool {
			return fmt.Sprint(scrapedPods(agentA, "kubernetes-pods")) == "[web-a1 web-a2]" && fmt.Sprint(scrapedPods(agentB, "kubernetes-pods")) == "[web-b1]"
		}, 30*time.Second, 100*time.Millisecond, "a: %v, b: %v", agentA.Targets(), agentB.Targets())
		// The annotations' path and port are scraped, and the series carry
		// kube-prometheus' labels.
		for _, tc := range []struct {
			db   *teststorage.TestStorage
			pod  string
			node string
		}{{dbA, "web-a1", "node-a"}, {dbA, "web-a2", "node-a"}, {dbB, "web-b1", "node-b"}} {
			require.Eventually(t, func() bool {
				return latest(t, tc.db,
					labels.MustNewMatcher(labels.MatchEqual, "__name__", "served_by"),
					labels.MustNewMatcher(labels.MatchEqual, "pod_name", tc.pod),
					labels.MustNewMatcher(labels.MatchEqual, "path", "/custom"),
					labels.MustNewMatcher(labels.MatchEqual, "pod", tc.pod),
					labels.MustNewMatcher(labels.MatchEqual, "namespace", "default"),
					labels.MustNewMatcher(labels.MatchEqual, "container", "app"),
					labels.MustNewMatcher(labels.MatchEqual, "node", tc.node),
					labels.MustNewMatcher(labels.MatchEqual, "job", "web")) == 1
			}, 30*time.Second, 100*time.Millisecond, "pod %s", tc.pod)
		}
		// No agent stores another node's pods.
		require.True(t, isNaN(latest(t, dbA, labels.MustNewMatcher(labels.MatchEqual, "pod", "web-b1"))))
		require.True(t, isNaN(latest(t, dbB, labels.MustNewMatcher(labels.MatchRegexp, "pod", "web-a.*"))))
	})

	t.Run("a PodMonitor added, changed and deleted", func(t *testing.T) {
		spec := map[string]any{
			"selector":            map[string]any{"matchLabels": map[string]any{"app": "batch"}},
			"podMetricsEndpoints": []any{map[string]any{"port": "metrics", "path": "/first", "interval": "1s"}},
		}
		api.applyMonitor(t, podMonitors, "PodMonitor", "batch", spec)
		require.Eventually(t, func() bool {
			ts := jobsWithPrefix(agentA, "podMonitor/default/batch/")
			return len(ts) == 1 && strings.HasSuffix(ts[0].URL, "/first") && ts[0].Labels.Get("job") == "default/batch" && ts[0].Labels.Get("pod") == "batch-a1"
		}, 30*time.Second, 100*time.Millisecond, "%v", agentA.Targets())
		require.Empty(t, jobsWithPrefix(agentB, "podMonitor/"), "the pod is on node-a")
		require.Eventually(t, func() bool {
			return latest(t, dbA, labels.MustNewMatcher(labels.MatchEqual, "__name__", "served_by"), labels.MustNewMatcher(labels.MatchEqual, "path", "/first"), labels.MustNewMatcher(labels.MatchEqual, "job", "default/batch")) == 1
		}, 30*time.Second, 100*time.Millisecond)

		spec["podMetricsEndpoints"] = []any{map[string]any{"port": "metrics", "path": "/second", "interval": "1s"}}
		api.applyMonitor(t, podMonitors, "PodMonitor", "batch", spec)
		require.Eventually(t, func() bool {
			ts := jobsWithPrefix(agentA, "podMonitor/default/batch/")
			return len(ts) == 1 && strings.HasSuffix(ts[0].URL, "/second")
		}, 30*time.Second, 100*time.Millisecond, "%v", agentA.Targets())

		api.deleteMonitor(t, podMonitors, "batch")
		require.Eventually(t, func() bool { return len(jobsWithPrefix(agentA, "podMonitor/")) == 0 }, 30*time.Second, 100*time.Millisecond)
	})

	t.Run("a ServiceMonitor added, changed and deleted", func(t *testing.T) {
		ctx := context.Background()
		_, err := api.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "default", Labels: map[string]string{"app": "api", "team": "core"}},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "web", Port: 8080}}},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		// EndpointSlices refuse loopback addresses: these endpoints are
		// discovered and their targets listed, never reached.
		_, err = api.Client.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "api-1", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "api"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"10.1.0.1"}, NodeName: ptr.To("node-a"), Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
				{Addresses: []string{"10.1.0.2"}, NodeName: ptr.To("node-b"), Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
			},
			Ports: []discoveryv1.EndpointPort{{Name: ptr.To("web"), Port: ptr.To(int32(8080))}},
		}, metav1.CreateOptions{})
		require.NoError(t, err)

		spec := map[string]any{
			"selector":     map[string]any{"matchLabels": map[string]any{"app": "api"}},
			"targetLabels": []any{"team"},
			"endpoints":    []any{map[string]any{"port": "web", "path": "/metrics", "interval": "1s"}},
		}
		api.applyMonitor(t, serviceMonitors, "ServiceMonitor", "api", spec)
		check := func(a *agent.Agent, addr, node, path string) func() bool {
			return func() bool {
				ts := jobsWithPrefix(a, "serviceMonitor/default/api/")
				return len(ts) == 1 && ts[0].URL == "http://"+addr+path &&
					ts[0].Labels.Get("job") == "api" && ts[0].Labels.Get("service") == "api" && ts[0].Labels.Get("namespace") == "default" &&
					ts[0].Labels.Get("node") == node && ts[0].Labels.Get("endpoint") == "web" && ts[0].Labels.Get("team") == "core"
			}
		}
		require.Eventually(t, check(agentA, "10.1.0.1:8080", "node-a", "/metrics"), 30*time.Second, 100*time.Millisecond, "%v", agentA.Targets())
		require.Eventually(t, check(agentB, "10.1.0.2:8080", "node-b", "/metrics"), 30*time.Second, 100*time.Millisecond, "%v", agentB.Targets())

		spec["endpoints"] = []any{map[string]any{"port": "web", "path": "/federate", "interval": "1s", "metricRelabelings": []any{map[string]any{"action": "drop", "sourceLabels": []any{"__name__"}, "regex": "go_.*"}}}}
		api.applyMonitor(t, serviceMonitors, "ServiceMonitor", "api", spec)
		require.Eventually(t, check(agentA, "10.1.0.1:8080", "node-a", "/federate"), 30*time.Second, 100*time.Millisecond, "%v", agentA.Targets())
		require.Eventually(t, check(agentB, "10.1.0.2:8080", "node-b", "/federate"), 30*time.Second, 100*time.Millisecond, "%v", agentB.Targets())

		api.deleteMonitor(t, serviceMonitors, "api")
		require.Eventually(t, func() bool {
			return len(jobsWithPrefix(agentA, "serviceMonitor/")) == 0 && len(jobsWithPrefix(agentB, "serviceMonitor/")) == 0
		}, 30*time.Second, 100*time.Millisecond)
		// The annotated pods are scraped all along.
		require.Equal(t, []string{"web-a1", "web-a2"}, scrapedPods(agentA, "kubernetes-pods"))
	})
}

func isNaN(f float64) bool { return f != f }
