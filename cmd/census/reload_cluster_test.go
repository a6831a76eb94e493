package main

import (
	"bytes"
	"fmt"
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
	p := startRole(t, "all", roleConfig{scrapeConfig: cfgFile})
	p.waitReady(30 * time.Second)
	for _, path := range []string{"/-/healthy", "/-/ready"} {
		_, err := p.get(path)
		require.NoError(t, err, path)
	}
	_, err := p.get("/-/reload")
	require.Equal(t, http.StatusMethodNotAllowed, httpCode(err), "%v", err)

	upFor := func(job string) func() bool {
		return func() bool {
			up, _, err := queryInstant(p, "up", "job", time.Now().UnixMilli())
			return err == nil && up[job] == 1
		}
	}
	require.Eventually(t, upFor("first"), 30*time.Second, 250*time.Millisecond)

	// POST /-/reload applies a new job.
	writeJob("second")
	_, err = p.call(http.MethodPost, "/-/reload", nil)
	require.NoError(t, err)
	require.Eventually(t, upFor("second"), 30*time.Second, 250*time.Millisecond)
	// /api/v1/status/config shows the configuration in force.
	status, err := p.api("/api/v1/status/config", nil)
	require.NoError(t, err)
	require.Contains(t, string(status.Data), `job_name: second`)

	// A bad configuration is refused with why, and the old one stays.
	require.NoError(t, os.WriteFile(cfgFile, []byte("scrape_configs: [{job_name: \"\"}]\n"), 0o644))
	body, err := p.call(http.MethodPost, "/-/reload", nil)
	require.Equal(t, http.StatusInternalServerError, httpCode(err), "%v", err)
	require.Contains(t, string(body), "reload failed")

	// SIGHUP reloads too, and does not stop the process.
	writeJob("third")
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, upFor("third"), 30*time.Second, 250*time.Millisecond)
	require.True(t, strings.Contains(p.log.String(), "Reloaded the configuration"))
	require.NoError(t, p.stop(30*time.Second))
}
