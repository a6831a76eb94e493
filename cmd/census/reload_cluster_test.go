package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestVersion prints the version as Prometheus' --version does.
func TestVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	require.Equal(t, 0, runMain([]string{"--version"}, &stdout, &stderr))
	require.Contains(t, stdout.String(), "census, version ")
	require.Empty(t, stderr.String())
}

// TestCluster_ReloadsLikePrometheus changes the scrape configuration of a
// running `census all` and reloads it with POST /-/reload and with SIGHUP;
// a configuration that does not load is refused and the old one stays.
func TestCluster_ReloadsLikePrometheus(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	_, target := startServedTarget(t)
	cfgFile := filepath.Join(t.TempDir(), "scrape.yml")
	writeJob := func(job string) {
		require.NoError(t, os.WriteFile(cfgFile, fmt.Appendf(nil, `
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: %s
    static_configs:
      - targets: [%q]
`, job, target.Host), 0o644))
	}
	writeJob("first")
	p := startProcess(t, "all", "all",
		"--http.listen-address=127.0.0.1:0",
		"--grpc.listen-address=127.0.0.1:0",
		"--memberlist.bind-address=127.0.0.1:0",
		"--storage.path="+filepath.Join(t.TempDir(), "data"),
		"--config.file="+cfgFile,
	)
	p.waitReady(30 * time.Second)
	for _, path := range []string{"/-/healthy", "/-/ready"} {
		require.Equal(t, http.StatusOK, httpStatus(t, http.MethodGet, "http://"+p.http+path), path)
	}
	require.Equal(t, http.StatusMethodNotAllowed, httpStatus(t, http.MethodGet, "http://"+p.http+"/-/reload"))

	upFor := func(job string) func() bool {
		return func() bool {
			up, _, err := queryInstant(p, "up", "job", time.Now().UnixMilli())
			return err == nil && up[job] == 1
		}
	}
	require.Eventually(t, upFor("first"), 30*time.Second, 250*time.Millisecond)

	// POST /-/reload applies a new job.
	writeJob("second")
	require.Equal(t, http.StatusOK, httpStatus(t, http.MethodPost, "http://"+p.http+"/-/reload"))
	require.Eventually(t, upFor("second"), 30*time.Second, 250*time.Millisecond)
	// /api/v1/status/config shows the configuration in force.
	code, status, err := p.apiGet("/api/v1/status/config", nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, string(status.Data), `job_name: second`)

	// A bad configuration is refused with why, and the old one stays.
	require.NoError(t, os.WriteFile(cfgFile, []byte("scrape_configs: [{job_name: \"\"}]\n"), 0o644))
	resp, err := http.Post("http://"+p.http+"/-/reload", "", nil)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusInternalServerError, resp.StatusCode)
	require.Contains(t, string(body), "reload failed")

	// SIGHUP reloads too, and does not stop the process.
	writeJob("third")
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, upFor("third"), 30*time.Second, 250*time.Millisecond)
	require.True(t, strings.Contains(p.log.String(), "Reloaded the configuration"))
	require.NoError(t, p.stop(30*time.Second))
}

// httpStatus sends a bodyless request and returns the status code.
func httpStatus(t *testing.T, method, u string) int {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}
