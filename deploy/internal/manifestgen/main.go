// Command manifestgen writes the plain Kubernetes manifests: Census' Helm
// chart rendered with its default values (make manifests).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/census-metrics/census/deploy"
)

func main() {
	chartDir := flag.String("chart", "deploy/helm/census", "Directory of the chart.")
	out := flag.String("out", "deploy/kubernetes/census.yaml", "File to write.")
	flag.Parse()
	b, err := deploy.Manifests(*chartDir)
	if err == nil {
		err = os.WriteFile(*out, b, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "manifestgen:", err)
		os.Exit(1)
	}
}
