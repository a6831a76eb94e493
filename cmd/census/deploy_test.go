package main

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/census-metrics/census/deploy"
)

const chartDir = "../../deploy/helm/census"

// TestDeployManifestsAreTheRenderedChart checks that the plain manifests
// are the chart rendered with its default values, so the two cannot drift.
func TestDeployManifestsAreTheRenderedChart(t *testing.T) {
	want, err := deploy.Manifests(chartDir)
	require.NoError(t, err)
	got, err := os.ReadFile("../../deploy/kubernetes/census.yaml")
	require.NoError(t, err)
	require.Equal(t, string(want), string(got), "deploy/kubernetes/census.yaml is not the chart rendered with its defaults: run make manifests")
}

// manifest is the part of a rendered object the deploy tests read.
type manifest struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Spec struct {
		Replicas            *int   `yaml:"replicas"`
		PodManagementPolicy string `yaml:"podManagementPolicy"`
		Template            struct {
			Spec struct {
				TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
				Containers                    []struct {
					Args []string `yaml:"args"`
				} `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
	Rules []struct {
		ResourceNames []string `yaml:"resourceNames"`
	} `yaml:"rules"`
}

func decodeManifests(t *testing.T, b []byte) []manifest {
	t.Helper()
	var ms []manifest
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var m manifest
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return ms
		}
		require.NoError(t, err)
		ms = append(ms, m)
	}
}

// TestDeployChartUsesValidFlags renders the chart with its defaults and
// with values that take its other branches, and runs every container's
// arguments through the binary's own flag parsing, so a renamed or removed
// flag cannot leave the chart broken. It also checks what makes a
// scale-down safe: ingesters leave one at a time, and each gives up before
// the kubelet kills it.
func TestDeployChartUsesValidFlags(t *testing.T) {
	zones := []any{
		map[string]any{"name": "a", "nodeSelector": map[string]any{"topology.kubernetes.io/zone": "z1"}},
		map[string]any{"name": "b", "nodeSelector": map[string]any{"topology.kubernetes.io/zone": "z2"}},
		map[string]any{"name": "c", "nodeSelector": map[string]any{"topology.kubernetes.io/zone": "z3"}},
	}
	for _, tc := range []struct {
		name   string
		values map[string]any
		// ingesters are the ingester StatefulSets and their replicas.
		ingesters map[string]int
		roles     []string
	}{
		{
			name:      "defaults",
			ingesters: map[string]int{"census-ingester": 3},
			roles:     []string{"agent", "distributor", "ingester", "querier"},
		},
		{
			name: "zone-aware",
			values: map[string]any{
				"ingester": map[string]any{"replicas": 2, "zones": zones},
			},
			ingesters: map[string]int{"census-ingester-a": 2, "census-ingester-b": 2, "census-ingester-c": 2},
			roles:     []string{"agent", "distributor", "ingester", "querier"},
		},
		{
			name: "gossip key, RF 5, extra flags, short grace, no agent or distributor",
			values: map[string]any{
				"ring":        map[string]any{"replicationFactor": 5, "gossipKeySecret": "census-gossip-key"},
				"logLevel":    "DEBUG",
				"agent":       map[string]any{"enabled": false},
				"distributor": map[string]any{"replicas": 0},
				"ingester": map[string]any{
					"replicas":                      7,
					"terminationGracePeriodSeconds": 600,
					"shutdownTimeoutSeconds":        570,
					"extraArgs":                     []any{"--storage.retention=30d"},
				},
				"querier": map[string]any{"extraArgs": []any{"--query.timeout=1m"}},
			},
			ingesters: map[string]int{"census-ingester": 7},
			roles:     []string{"ingester", "querier"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := deploy.Render(chartDir, tc.values)
			require.NoError(t, err)
			// $(VAR) is expanded by Kubernetes from the pod's environment.
			envRef := regexp.MustCompile(`\$\([A-Z_]+\)`)
			ingesters := map[string]int{}
			var roles, roleNames []string
			for _, m := range decodeManifests(t, b) {
				if m.Kind == "Role" {
					for _, r := range m.Rules {
						roleNames = append(roleNames, r.ResourceNames...)
					}
				}
				for _, c := range m.Spec.Template.Spec.Containers {
					require.NotEmpty(t, c.Args, "%s %s: container without arguments", m.Kind, m.Metadata.Name)
					role := c.Args[0]
					args := make([]string, len(c.Args)-1)
					for i, a := range c.Args[1:] {
						args[i] = envRef.ReplaceAllString(a, "x")
					}
					if role == "agent" {
						// In a pod the agent finds the API server through
						// its service account; a kubeconfig stands in for
						// it here.
						args = append(args, "--agent.kubeconfig=kubeconfig")
					}
					var stderr bytes.Buffer
					_, err := parseFlags(role, args, &stderr)
					require.NoError(t, err, "%s %s %v: %s", m.Kind, m.Metadata.Name, c.Args, stderr.String())
					if !slices.Contains(roles, role) {
						roles = append(roles, role)
					}
					if role != "ingester" {
						continue
					}
					require.Equal(t, "StatefulSet", m.Kind)
					require.Equal(t, "OrderedReady", m.Spec.PodManagementPolicy, "%s removes ingesters one at a time", m.Metadata.Name)
					ingesters[m.Metadata.Name] = *m.Spec.Replicas
					require.Contains(t, c.Args, "--ingester.decommission-on-scale-down")
					i := slices.IndexFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--shutdown-timeout=") })
					require.GreaterOrEqual(t, i, 0, "%s has no --shutdown-timeout", m.Metadata.Name)
					timeout, err := time.ParseDuration(strings.TrimPrefix(c.Args[i], "--shutdown-timeout="))
					require.NoError(t, err)
					grace := time.Duration(m.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
					require.Less(t, timeout, grace, "%s: the ingester must give up before the kubelet kills it", m.Metadata.Name)
				}
			}
			slices.Sort(roles)
			require.Equal(t, tc.roles, roles)
			require.Equal(t, tc.ingesters, ingesters)
			// The ingesters may get their own StatefulSets and no other.
			slices.Sort(roleNames)
			require.Equal(t, slices.Sorted(maps.Keys(ingesters)), roleNames)
		})
	}
}

// TestDeployChartRefusesShutdownTimeoutPastGrace checks that the chart does
// not render an ingester the kubelet would kill before it gave up.
func TestDeployChartRefusesShutdownTimeoutPastGrace(t *testing.T) {
	_, err := deploy.Render(chartDir, map[string]any{
		"ingester": map[string]any{"terminationGracePeriodSeconds": 600, "shutdownTimeoutSeconds": 600},
	})
	require.ErrorContains(t, err, "ingester.shutdownTimeoutSeconds (600) must be below ingester.terminationGracePeriodSeconds (600)")
}
