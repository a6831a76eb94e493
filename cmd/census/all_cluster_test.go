package main

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestCluster_AllInOne runs `census all` as a newcomer's `make run` does
// and checks that within 30 seconds it reports up == 1 for itself and for
// the demo service, and that every endpoint of the role answers.
func TestCluster_AllInOne(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	p := startRole(t, "all", roleConfig{})
	require.Eventually(t, func() bool {
		return strings.Contains(p.log.String(), "http://"+p.http+"/api/v1/query?query=up")
	}, 10*time.Second, 10*time.Millisecond, "the URL to open is printed")
	p.waitReady(30 * time.Second)

	require.Eventually(t, func() bool {
		up, _, err := queryInstant(p, "up", "job", time.Now().UnixMilli())
		return err == nil && up["census"] == 1 && up["demo"] == 1
	}, 30*time.Second, 250*time.Millisecond, "up == 1 for census and demo")

	// The golden signals of the demo service are queryable.
	require.Eventually(t, func() bool {
		got, _, err := queryInstant(p, `sum by (job) (demo_http_requests_total)`, "job", time.Now().UnixMilli())
		return err == nil && got["demo"] > 0
	}, 30*time.Second, 250*time.Millisecond)

	for _, tc := range []struct {
		path, accept, want string
	}{
		{path: "/metrics", want: "census_distributor_received_samples_total"},
		{path: "/ready", want: "ready"},
		{path: "/ring", accept: "application/json", want: `"state":"ACTIVE"`},
		{path: "/ring", want: "<table"},
		{path: "/api/v1/status/buildinfo", want: `"status":"success"`},
		{path: "/api/v1/label/job/values", want: `"demo"`},
	} {
		req, err := http.NewRequest(http.MethodGet, tc.path, nil)
		require.NoError(t, err)
		if tc.accept != "" {
			req.Header.Set("Accept", tc.accept)
		}
		body, err := p.send(req)
		require.NoError(t, err)
		require.Contains(t, string(body), tc.want, tc.path)
	}

	// POST with a form works as GET does.
	body, err := p.call(http.MethodPost, "/api/v1/query", url.Values{"query": {`up{job="demo"}`}})
	require.NoError(t, err)
	require.True(t, strings.Contains(string(body), `"job":"demo"`), "%s", body)

	require.NoError(t, p.stop(30*time.Second))
}
