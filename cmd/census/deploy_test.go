package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// TestDeployManifestsUseValidFlags parses the Kubernetes manifests and runs
// every container's arguments through the binary's own flag parsing, so a
// renamed or removed flag cannot leave the manifests broken.
func TestDeployManifestsUseValidFlags(t *testing.T) {
	f, err := os.Open("../../deploy/kubernetes/census.yaml")
	require.NoError(t, err)
	defer f.Close()

	// $(VAR) is expanded by Kubernetes from the pod's environment.
	envRef := regexp.MustCompile(`\$\([A-Z_]+\)`)
	dec := yaml.NewDecoder(f)
	roles := map[string]bool{}
	for {
		var doc struct {
			Kind string `yaml:"kind"`
			Spec struct {
				Template struct {
					Spec struct {
						Containers []struct {
							Args []string `yaml:"args"`
						} `yaml:"containers"`
					} `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		}
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		for _, c := range doc.Spec.Template.Spec.Containers {
			require.NotEmpty(t, c.Args, "%s container without arguments", doc.Kind)
			args := make([]string, len(c.Args)-1)
			for i, a := range c.Args[1:] {
				args[i] = envRef.ReplaceAllString(a, "x")
			}
			if c.Args[0] == "agent" {
				// In a pod the agent finds the API server through its
				// service account; a kubeconfig stands in for it here.
				args = append(args, "--agent.kubeconfig=kubeconfig")
			}
			var stderr bytes.Buffer
			_, err := parseFlags(c.Args[0], args, &stderr)
			require.NoError(t, err, "%s %v: %s", doc.Kind, c.Args, stderr.String())
			roles[c.Args[0]] = true
		}
	}
	require.Equal(t, map[string]bool{"agent": true, "ingester": true, "querier": true}, roles)
}
