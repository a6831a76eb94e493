package kubetest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// StartControllerManager runs kube-controller-manager from
// KUBEBUILDER_ASSETS against s with only the named controllers (as
// --controllers takes them, e.g. "statefulset-controller"), and stops it
// when the test ends. envtest runs no controllers at all, so a test that
// needs the real behaviour of one (the StatefulSet controller creating
// and deleting pods) starts it here. If it exits before the test ends, the
// test fails with the tail of its log.
//
// It runs without leader election (it is the only one), without serving
// HTTPS (nothing scrapes or probes it) and without the service-account
// token controller unless named, which would need a signing key.
func (s *Server) StartControllerManager(t testing.TB, controllers ...string) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "kube-controller-manager.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("create the log of kube-controller-manager: %v", err)
	}
	cmd := exec.Command(filepath.Join(s.assets, "kube-controller-manager"),
		"--kubeconfig="+s.Kubeconfig,
		"--controllers="+strings.Join(controllers, ","),
		"--leader-elect=false",
		"--secure-port=0",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		t.Fatalf("start kube-controller-manager from %s: %v", s.assets, err)
	}
	var stopping atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := cmd.Wait()
		if !stopping.Load() {
			t.Errorf("kube-controller-manager exited before the test ended: %v\n%s", err, logTail(logPath))
		}
	}()
	t.Cleanup(func() {
		stopping.Store(true)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		_ = logFile.Close()
		if t.Failed() {
			t.Logf("--- log of kube-controller-manager ---\n%s", logTail(logPath))
		}
	})
}

// logTail returns the end of the log at path: kube-controller-manager
// logs every sync, and what went wrong is near the end.
func logTail(path string) string {
	const tailBytes = 16 << 10
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	if len(b) > tailBytes {
		b = b[len(b)-tailBytes:]
	}
	return string(b)
}

// Kubectl runs kubectl from KUBEBUILDER_ASSETS against s, as its
// administrator, with args, and returns what it printed on stdout and
// stderr. A failure returns that output in the error too.
func (s *Server) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(s.assets, "kubectl"), append([]string{"--kubeconfig=" + s.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return out, nil
}
