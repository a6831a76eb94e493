package agent

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	// Register the Kubernetes service discovery (kubernetes_sd_configs).
	_ "github.com/prometheus/prometheus/discovery/kubernetes"
)

// InCluster reports whether the agent runs in a Kubernetes pod with a
// service account, the way client-go's in-cluster configuration finds the
// API server.
func InCluster() bool {
	if os.Getenv("KUBERNETES_SERVICE_HOST") == "" || os.Getenv("KUBERNETES_SERVICE_PORT") == "" {
		return false
	}
	_, err := os.Stat("/var/run/secrets/kubernetes.io/serviceaccount/token")
	return err == nil
}

// DefaultKubernetesConfig is the scrape configuration of an agent in a
// cluster without --config.file: every pod, and every endpoint of every
// service, annotated prometheus.io/scrape: "true", at the path, port and
// scheme its prometheus.io/path, prometheus.io/port and
// prometheus.io/scheme annotations give, labelled with namespace, pod,
// container, node and job as kube-prometheus labels them. kubeconfig is
// the kubeconfig file to reach the API server with; empty means the
// in-cluster service account. With nodeName, pods are listed only from
// that node (a field selector), so an agent watches its own pods only.
// Targets are scraped every interval.
func DefaultKubernetesConfig(kubeconfig, nodeName string, interval time.Duration) string {
	sd := func(role string) string {
		var b strings.Builder
		fmt.Fprintf(&b, "      - role: %s\n", role)
		if kubeconfig != "" {
			fmt.Fprintf(&b, "        kubeconfig_file: %q\n", kubeconfig)
		}
		if role == "pod" && nodeName != "" {
			fmt.Fprintf(&b, "        selectors:\n          - role: pod\n            field: %q\n", "spec.nodeName="+nodeName)
		}
		return b.String()
	}
	return `
global:
  scrape_interval: ` + model.Duration(interval).String() + `
  scrape_timeout: ` + model.Duration(min(interval, 10*time.Second)).String() + `
scrape_configs:
  - job_name: kubernetes-pods
    kubernetes_sd_configs:
` + sd("pod") + `
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        regex: "true"
        action: keep
      - source_labels: [__meta_kubernetes_pod_phase]
        regex: Pending|Succeeded|Failed|Unknown
        action: drop
` + portRelabels("__meta_kubernetes_pod_annotation_prometheus_io_port", "__meta_kubernetes_pod_container_port_number") + `
` + annotationRelabels("pod") + `
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
      - source_labels: [__meta_kubernetes_pod_container_name]
        target_label: container
      - source_labels: [__meta_kubernetes_pod_node_name]
        target_label: node
` + jobRelabels("pod") + `
  - job_name: kubernetes-service-endpoints
    kubernetes_sd_configs:
` + sd("endpointslice") + `
    relabel_configs:
      - source_labels: [__meta_kubernetes_service_annotation_prometheus_io_scrape]
        regex: "true"
        action: keep
` + portRelabels("__meta_kubernetes_service_annotation_prometheus_io_port", "__meta_kubernetes_endpointslice_port") + `
` + annotationRelabels("service") + `
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_service_name]
        target_label: service
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
      - source_labels: [__meta_kubernetes_pod_container_name]
        target_label: container
      - source_labels: [__meta_kubernetes_endpointslice_endpoint_node_name]
        target_label: node
      # kube-prometheus: a service's series are its job.
      - source_labels: [__meta_kubernetes_service_name]
        target_label: job
` + jobRelabels("service")
}

// portRelabels keeps the targets of the declared port the port annotation
// names, or of every declared port without one: a pod (or an endpoint)
// is scraped on ports it declares, once each.
func portRelabels(annotation, port string) string {
	return `      - source_labels: [` + port + `]
        regex: ""
        action: drop
      - source_labels: [` + port + `]
        target_label: __tmp_port
      - source_labels: [` + annotation + `]
        regex: (.+)
        target_label: __tmp_port
      - source_labels: [` + port + `]
        target_label: __tmp_port
        action: keepequal`
}

// annotationRelabels applies the prometheus.io/scheme, path and port
// annotations of a pod or a service.
func annotationRelabels(kind string) string {
	a := "__meta_kubernetes_" + kind + "_annotation_prometheus_io_"
	return `      - source_labels: [` + a + `scheme]
        regex: (https?)
        target_label: __scheme__
      - source_labels: [` + a + `path]
        regex: (.+)
        target_label: __metrics_path__
      - source_labels: [__address__, ` + a + `port]
        regex: '(\[[^\]]+\]|[^:]+)(?::\d+)?;(\d+)'
        replacement: $1:$2
        target_label: __address__`
}

// jobRelabels names the job of a pod target after its app, as
// kube-prometheus does with app.kubernetes.io/name; the job name stays
// when the pod has no such label. A service target's job is the service.
func jobRelabels(kind string) string {
	if kind != "pod" {
		return ""
	}
	return `      - source_labels: [__meta_kubernetes_pod_label_app]
        regex: (.+)
        target_label: job
      - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name]
        regex: (.+)
        target_label: job
`
}

// nodeLabels are the discovery labels naming the node of a target, in the
// order they are looked at.
var nodeLabels = []model.LabelName{
	"__meta_kubernetes_pod_node_name",
	"__meta_kubernetes_endpointslice_endpoint_node_name",
	"__meta_kubernetes_endpoint_node_name",
	"__meta_kubernetes_node_name",
}

// nodesJob is the discovery job listing the cluster's nodes, for targets
// without a node; its targets are never scraped.
const nodesJob = "census/nodes"

// nodeFilter passes on the targets of one node: N agents, one per node,
// partition the targets with no overlap and no gap. A target runs on the
// node its discovery labels name (a pod's, an endpoint's, a node's own).
// A target without a node (a service, an ingress, a static or file
// target, an endpoint outside the cluster) goes to one node chosen by
// rendezvous hashing over the nodes the API server lists, so each is
// scraped by exactly one agent and moves only when its node goes. Without
// a node list (no Kubernetes API), such targets stay with every agent.
type nodeFilter struct {
	node      string
	haveNodes bool // Whether nodesJob runs.
}

// run filters every update of in onto out until ctx ends.
func (f *nodeFilter) run(ctx context.Context, in <-chan map[string][]*targetgroup.Group, out chan<- map[string][]*targetgroup.Group) {
	var nodes []string
	for {
		var tsets map[string][]*targetgroup.Group
		select {
		case <-ctx.Done():
			return
		case tsets = <-in:
		}
		if f.haveNodes {
			nodes = nodesOf(tsets[nodesJob])
		}
		filtered := f.filter(tsets, nodes)
		select {
		case <-ctx.Done():
			return
		case out <- filtered:
		}
	}
}

// nodesOf lists the node names of the nodes job's targets.
func nodesOf(groups []*targetgroup.Group) []string {
	var nodes []string
	for _, g := range groups {
		if g == nil {
			continue
		}
		for _, t := range g.Targets {
			if n := labelOf(t, g.Labels, "__meta_kubernetes_node_name"); n != "" {
				nodes = append(nodes, n)
			}
		}
	}
	return nodes
}

func (f *nodeFilter) filter(tsets map[string][]*targetgroup.Group, nodes []string) map[string][]*targetgroup.Group {
	out := make(map[string][]*targetgroup.Group, len(tsets))
	for job, groups := range tsets {
		if job == nodesJob {
			continue
		}
		kept := make([]*targetgroup.Group, 0, len(groups))
		for _, g := range groups {
			if g == nil {
				continue
			}
			ng := &targetgroup.Group{Source: g.Source, Labels: g.Labels}
			for _, t := range g.Targets {
				if f.keep(job, g, t, nodes) {
					ng.Targets = append(ng.Targets, t)
				}
			}
			// An empty group still tells the scrape manager its targets
			// are gone.
			kept = append(kept, ng)
		}
		out[job] = kept
	}
	return out
}

func (f *nodeFilter) keep(job string, g *targetgroup.Group, t model.LabelSet, nodes []string) bool {
	for _, l := range nodeLabels {
		if n := labelOf(t, g.Labels, l); n != "" {
			return n == f.node
		}
	}
	if !f.haveNodes {
		return true
	}
	return rendezvousOwner(job+"\xff"+g.Source+"\xff"+string(labelOf(t, g.Labels, model.AddressLabel)), nodes) == f.node
}

func labelOf(t, common model.LabelSet, name model.LabelName) string {
	if v, ok := t[name]; ok {
		return string(v)
	}
	return string(common[name])
}

// rendezvousOwner returns the node with the highest hash of (node, key),
// or "" without nodes: every agent that sees the same nodes picks the same
// one, and a node's going moves only its own keys.
func rendezvousOwner(key string, nodes []string) string {
	var (
		best      string
		bestScore uint64
	)
	for _, n := range nodes {
		score := xxhash.Sum64String(n + "\xff" + key)
		if best == "" || score > bestScore || (score == bestScore && n < best) {
			best, bestScore = n, score
		}
	}
	return best
}
