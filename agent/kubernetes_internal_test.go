package agent

import (
	"fmt"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// testTargets has pods on three nodes and targets without a node.
func testTargets() map[string][]*targetgroup.Group {
	var pods []*targetgroup.Group
	for i := range 30 {
		pods = append(pods, &targetgroup.Group{
			Source:  fmt.Sprintf("pod/default/p%d", i),
			Labels:  model.LabelSet{"__meta_kubernetes_pod_node_name": model.LabelValue(fmt.Sprintf("node-%d", i%3))},
			Targets: []model.LabelSet{{"__address__": model.LabelValue(fmt.Sprintf("10.0.0.%d:8080", i))}},
		})
	}
	static := &targetgroup.Group{Source: "0"}
	for i := range 50 {
		static.Targets = append(static.Targets, model.LabelSet{"__address__": model.LabelValue(fmt.Sprintf("db-%d:9100", i))})
	}
	nodes := &targetgroup.Group{Source: "node"}
	for i := range 3 {
		nodes.Targets = append(nodes.Targets, model.LabelSet{"__address__": "x", "__meta_kubernetes_node_name": model.LabelValue(fmt.Sprintf("node-%d", i))})
	}
	return map[string][]*targetgroup.Group{
		"pods":   pods,
		"static": {static},
		nodesJob: {nodes},
	}
}

func TestNodeFilter_PartitionsWithNoOverlapAndNoGap(t *testing.T) {
	tsets := testTargets()
	nodes := nodesOf(tsets[nodesJob])
	require.Equal(t, []string{"node-0", "node-1", "node-2"}, nodes)

	owner := map[string]string{} // job/address -> node of the agent keeping it
	for _, node := range nodes {
		f := &nodeFilter{node: node, haveNodes: true}
		out := f.filter(tsets, nodes)
		require.NotContains(t, out, nodesJob, "the node list is never scraped")
		perNode := 0
		for job, groups := range out {
			for _, g := range groups {
				for _, tg := range g.Targets {
					key := job + "/" + string(tg["__address__"])
					require.NotContains(t, owner, key, "%s kept by %s and %s", key, owner[key], node)
					owner[key] = node
					if job == "pods" {
						require.Equal(t, node, string(g.Labels["__meta_kubernetes_pod_node_name"]), "a pod goes to its node")
					}
					perNode++
				}
			}
		}
		require.Positive(t, perNode)
	}
	require.Len(t, owner, 30+50, "every target is kept by one agent")

	// A node going moves only the node-less targets it had.
	remaining := nodes[:2]
	for _, node := range remaining {
		f := &nodeFilter{node: node, haveNodes: true}
		for _, g := range f.filter(tsets, remaining)["static"] {
			for _, tg := range g.Targets {
				key := "static/" + string(tg["__address__"])
				if owner[key] != "node-2" {
					require.Equal(t, node, owner[key], "%s moved though its node stays", key)
				}
			}
		}
	}
}

func TestNodeFilter_WithoutNodeList(t *testing.T) {
	tsets := testTargets()
	delete(tsets, nodesJob)
	// Outside Kubernetes there is no node list: node-less targets stay.
	out := (&nodeFilter{node: "node-0", haveNodes: false}).filter(tsets, nil)
	require.Len(t, out["static"][0].Targets, 50)
	// In Kubernetes, until the nodes are listed, no agent takes them:
	// none scrapes them twice.
	out = (&nodeFilter{node: "node-0", haveNodes: true}).filter(tsets, nil)
	require.Empty(t, out["static"][0].Targets)
	require.Len(t, out["pods"], 30, "every group is passed on, emptied, so its targets stop")
}

func TestSelectorRelabels(t *testing.T) {
	sel := metav1.LabelSelector{
		MatchLabels: map[string]string{"app.kubernetes.io/name": "api.v1"},
		MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"web", "edge"}},
			{Key: "canary", Operator: metav1.LabelSelectorOpDoesNotExist},
			{Key: "team", Operator: metav1.LabelSelectorOpExists},
			{Key: "env", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"dev"}},
		},
	}
	text, err := yaml.Marshal(selectorRelabels("service", sel))
	require.NoError(t, err)
	var rules []*relabel.Config
	require.NoError(t, yaml.UnmarshalStrict(text, &rules))
	svc := func(kv ...string) labels.Labels {
		b := labels.NewBuilder(labels.FromStrings("__address__", "10.0.0.1:80"))
		for i := 0; i < len(kv); i += 2 {
			name := "__meta_kubernetes_service_label_" + kv[i]
			b.Set(name, kv[i+1])
			b.Set("__meta_kubernetes_service_labelpresent_"+kv[i], "true")
		}
		return b.Labels()
	}
	for _, tc := range []struct {
		name string
		ls   labels.Labels
		keep bool
	}{
		{"matches", svc("app_kubernetes_io_name", "api.v1", "tier", "web", "team", "a", "env", "prod"), true},
		{"regex characters are literal", svc("app_kubernetes_io_name", "apixv1", "tier", "web", "team", "a"), false},
		{"not in values", svc("app_kubernetes_io_name", "api.v1", "tier", "batch", "team", "a"), false},
		{"label that must not exist", svc("app_kubernetes_io_name", "api.v1", "tier", "edge", "team", "a", "canary", "x"), false},
		{"label that must exist", svc("app_kubernetes_io_name", "api.v1", "tier", "edge"), false},
		{"excluded value", svc("app_kubernetes_io_name", "api.v1", "tier", "edge", "team", "a", "env", "dev"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keep := relabel.ProcessBuilder(labels.NewBuilder(tc.ls), rules...)
			require.Equal(t, tc.keep, keep)
		})
	}
}
