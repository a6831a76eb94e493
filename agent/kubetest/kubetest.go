// Package kubetest runs a real Kubernetes API server, kube-apiserver with
// etcd, for tests: controller-runtime's envtest starts the binaries in
// KUBEBUILDER_ASSETS, which scripts/kube-test-assets.sh builds and `make
// test` sets. It is the one copy of that setup, for the agent's tests and
// the cluster tests of cmd/census. The same folder has kubectl and
// kube-controller-manager, which Server.Kubectl and
// Server.StartControllerManager run against the server.
package kubetest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/go-logr/logr"
	"github.com/stretchr/testify/require"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// Server is a running API server.
type Server struct {
	// Config reaches the server as its administrator.
	Config *rest.Config
	// Client is a clientset on Config.
	Client kubernetes.Interface
	// Kubeconfig is the path of a kubeconfig file for the user
	// census-agent, in system:masters, as an agent reads it from
	// --agent.kubeconfig.
	Kubeconfig string

	// assets is KUBEBUILDER_ASSETS, where the other binaries of the
	// control plane are (kubectl, kube-controller-manager).
	assets string
}

// Start starts an API server that serves crds besides the built-in kinds,
// and stops it when the test ends. Without KUBEBUILDER_ASSETS it skips the
// test, or fails it when CI is set: there `make test` always sets it.
func Start(t testing.TB, crds ...*apiextensionsv1.CustomResourceDefinition) *Server {
	t.Helper()
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("KUBEBUILDER_ASSETS is not set: `make test` sets it from scripts/kube-test-assets.sh")
		}
		t.Skip("KUBEBUILDER_ASSETS is not set; run the tests as KUBEBUILDER_ASSETS=$(scripts/kube-test-assets.sh) go test <packages>, from the repository's root")
	}
	// envtest logs through controller-runtime's logger, which otherwise
	// prints a stack trace to say nobody set it.
	ctrllog.SetLogger(logr.Discard())
	env := &envtest.Environment{BinaryAssetsDirectory: assets, CRDs: crds}
	cfg, err := env.Start()
	require.NoError(t, err, "start kube-apiserver and etcd from %s", assets)
	t.Cleanup(func() { require.NoError(t, env.Stop()) })
	user, err := env.AddUser(envtest.User{Name: "census-agent", Groups: []string{"system:masters"}}, nil)
	require.NoError(t, err)
	kc, err := user.KubeConfig()
	require.NoError(t, err)
	s := &Server{Config: cfg, Kubeconfig: filepath.Join(t.TempDir(), "kubeconfig"), assets: assets}
	require.NoError(t, os.WriteFile(s.Kubeconfig, kc, 0o600))
	s.Client, err = kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	return s
}
