package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/ring"
)

// childEnv marks a re-run of the test binary as a Census process (the
// -test.main pattern of Prometheus' cmd tests): go test needs no prebuilt
// binary, and the children run the code under test.
const childEnv = "CENSUS_TEST_CHILD"

// process is one Census role running as a child of the test.
type process struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	done chan struct{} // Closed when the process has exited.
	log  *syncBuffer

	// Addresses the child bound, read from its "Census started" line.
	http, grpc, gossip string
}

var startedLine = regexp.MustCompile(`msg="Census started" role=\S+ http=(\S+) grpc=(\S*) gossip=(\S+)`)

// startProcess runs `census <args>` as a child, waits until it logs its
// addresses and makes sure it is killed when the test ends.
func startProcess(t testing.TB, name string, args ...string) *process {
	t.Helper()
	p, err := launchProcess(t, name, nil, args)
	require.NoError(t, err)
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- log of %s ---\n%s", p.name, p.log.String())
		}
	})
	return p
}

// launchProcess runs `census <args>` with env added to the test's, and
// waits until it logs its addresses. It returns an error where
// startProcess fails the test, so that it may run on any goroutine, and
// leaves killing the process to the caller, unless it failed to start.
func launchProcess(t testing.TB, name string, env, args []string) (*process, error) {
	p := &process{t: t, name: name, done: make(chan struct{}), log: &syncBuffer{}}
	p.cmd = exec.Command(os.Args[0], args...)
	p.cmd.Env = append(append(os.Environ(), childEnv+"=1"), env...)
	p.cmd.Stdout = p.log
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	started := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.log.WriteString(line + "\n")
			if m := startedLine.FindStringSubmatch(line); m != nil {
				started <- m
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	select {
	case m := <-started:
		p.http, p.grpc, p.gossip = m[1], m[2], m[3]
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("%s exited before it started (args %q):\n%s", name, args, p.log.String())
	case <-time.After(60 * time.Second):
		p.kill()
		return nil, fmt.Errorf("%s did not start within 60s:\n%s", name, p.log.String())
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *process) kill() {
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-p.done
}

// stop sends SIGTERM and waits up to timeout for a clean exit.
func (p *process) stop(timeout time.Duration) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if code := p.cmd.ProcessState.ExitCode(); code != 0 {
			return fmt.Errorf("%s exited with code %d", p.name, code)
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%s did not stop within %s", p.name, timeout)
	}
}

// roleConfig is what a cluster test sets for one role; startRole turns it
// into flags. Its zero value is a role on loopback, with the role's
// defaults for everything else.
type roleConfig struct {
	// id is --instance.id and the process' name in the test's logs. Empty
	// keeps the role's default (the hostname) and names the process after
	// its role.
	id string
	// join is the ring member the process joins through (--memberlist.join);
	// nil joins none.
	join *process
	// rf is --ring.replication-factor; 0 keeps the role's default.
	rf int
	// heartbeatTimeout is --ring.heartbeat-timeout; 0 keeps the default.
	heartbeatTimeout time.Duration
	// storage is --storage.path of an ingester or of `all`; empty is a new
	// temporary directory.
	storage string
	// scrapeConfig is --config.file of an agent or of `all`.
	scrapeConfig string
	// flags come after the others.
	flags []string
}

// startRole runs `census <role>` with cfg as startProcess does. Every
// address is on loopback and picked by the child. Ring members other than
// `all` heartbeat every 200ms, so that a cluster converges in a moment; an
// agent's WAL is in a temporary directory of the test, which a killed
// child cannot leave behind.
func startRole(t testing.TB, role string, cfg roleConfig) *process {
	t.Helper()
	args := []string{role, "--http.listen-address=127.0.0.1:0", "--memberlist.bind-address=127.0.0.1:0"}
	if role != "all" {
		args = append(args, "--ring.heartbeat-period=200ms")
	}
	if role == "ingester" || role == "all" {
		if cfg.storage == "" {
			cfg.storage = filepath.Join(t.TempDir(), "data")
		}
		args = append(args, "--grpc.listen-address=127.0.0.1:0", "--storage.path="+cfg.storage)
	}
	if role == "agent" {
		args = append(args, "--agent.wal-path="+t.TempDir())
	}
	name := role
	if cfg.id != "" {
		name = cfg.id
		args = append(args, "--instance.id="+cfg.id)
	}
	if cfg.join != nil {
		args = append(args, "--memberlist.join="+cfg.join.gossip)
	}
	if cfg.rf != 0 {
		args = append(args, "--ring.replication-factor="+strconv.Itoa(cfg.rf))
	}
	if cfg.heartbeatTimeout != 0 {
		args = append(args, "--ring.heartbeat-timeout="+cfg.heartbeatTimeout.String())
	}
	if cfg.scrapeConfig != "" {
		args = append(args, "--config.file="+cfg.scrapeConfig)
	}
	return startProcess(t, name, append(args, cfg.flags...)...)
}

// restartableIngesters returns n ingester slots at replication factor n and
// start, which starts ingester i, or starts it again after a kill, with its
// id and on its own storage, joined through another ingester of the slots.
func restartableIngesters(t testing.TB, n int, heartbeatTimeout time.Duration) ([]*process, func(i int) *process) {
	dataDirs := make([]string, n)
	for i := range dataDirs {
		dataDirs[i] = filepath.Join(t.TempDir(), "data")
	}
	ingesters := make([]*process, n)
	start := func(i int) *process {
		cfg := roleConfig{id: fmt.Sprintf("ingester-%d", i), rf: n, heartbeatTimeout: heartbeatTimeout, storage: dataDirs[i]}
		if i > 0 {
			cfg.join = ingesters[0]
		} else {
			cfg.join = ingesters[1] // Nil at the first start.
		}
		return startRole(t, "ingester", cfg)
	}
	return ingesters, start
}

// waitReady polls /ready until it answers 2xx.
func (p *process) waitReady(timeout time.Duration) {
	p.t.Helper()
	require.Eventually(p.t, func() bool {
		_, err := p.get("/ready")
		return err == nil
	}, timeout, 100*time.Millisecond, "%s not ready", p.name)
}

// httpClient is the tests' client of their processes. Its timeout is a
// deadline for every request; no request of the tests takes this long.
var httpClient = &http.Client{Timeout: time.Minute}

// statusError is an HTTP answer outside 2xx.
type statusError struct {
	request string // Method, process and path.
	code    int
	body    []byte
}

func (e *statusError) Error() string {
	return fmt.Sprintf("%s: HTTP %d: %s", e.request, e.code, bytes.TrimSpace(e.body))
}

// httpCode returns the status code of the answer outside 2xx that err
// reports, or 0 if err reports none.
func httpCode(err error) int {
	var se *statusError
	if errors.As(err, &se) {
		return se.code
	}
	return 0
}

// send sends req to p, whose URL holds only the path and query (as
// http.NewRequest(method, "/ring", nil) makes it), and returns the body of
// the answer. An answer outside 2xx returns its body too, with a
// *statusError.
func (p *process) send(req *http.Request) ([]byte, error) {
	req.URL.Scheme, req.URL.Host = "http", p.http
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s of %s: read the answer: %w", req.Method, req.URL.Path, p.name, err)
	}
	if resp.StatusCode/100 != 2 {
		return body, &statusError{request: fmt.Sprintf("%s %s of %s", req.Method, req.URL.Path, p.name), code: resp.StatusCode, body: body}
	}
	return body, nil
}

// call sends method path to p as Grafana does: a GET with params in the
// URL, a POST with them as a form.
func (p *process) call(method, path string, params url.Values) ([]byte, error) {
	var (
		req *http.Request
		err error
	)
	if method == http.MethodGet {
		if len(params) > 0 {
			path += "?" + params.Encode()
		}
		req, err = http.NewRequest(method, path, nil)
	} else {
		req, err = http.NewRequest(method, path, strings.NewReader(params.Encode()))
		if err == nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
	}
	if err != nil {
		return nil, err
	}
	return p.send(req)
}

// get GETs path from p.
func (p *process) get(path string) ([]byte, error) {
	return p.call(http.MethodGet, path, nil)
}

// apiResponse is the envelope of every Prometheus HTTP API answer.
type apiResponse struct {
	Status    string          `json:"status"`
	Data      json.RawMessage `json:"data"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Warnings  []string        `json:"warnings"`
	Infos     []string        `json:"infos"`
}

// api GETs path of p's Prometheus HTTP API with params and decodes the
// envelope. Prometheus' errors have one too: an answer outside 2xx
// returns it with a *statusError.
func (p *process) api(path string, params url.Values) (apiResponse, error) {
	var r apiResponse
	body, err := p.call(http.MethodGet, path, params)
	if body == nil {
		return r, err
	}
	if derr := json.Unmarshal(body, &r); derr != nil {
		return r, errors.Join(err, fmt.Errorf("decode the answer to %s of %s: %w: %s", path, p.name, derr, body))
	}
	return r, err
}

// ringStatus reads p's /ring page as JSON, by instance ID.
func ringStatus(p *process) (map[string]ring.InstanceStatus, error) {
	req, err := http.NewRequest(http.MethodGet, "/ring", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	body, err := p.send(req)
	if err != nil {
		return nil, err
	}
	var rows []ring.InstanceStatus
	if err := json.Unmarshal(body, &rows); err != nil {
		return nil, fmt.Errorf("decode /ring of %s: %w", p.name, err)
	}
	out := map[string]ring.InstanceStatus{}
	for _, r := range rows {
		out[r.ID] = r
	}
	return out, nil
}

// metric returns the value of the series name{labelPairs} on p's /metrics
// page; see sampleValue.
func (p *process) metric(name string, labelPairs ...string) (float64, error) {
	body, err := p.get("/metrics")
	if err != nil {
		return 0, err
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("parse /metrics of %s: %w", p.name, err)
	}
	v, err := sampleValue(mfs, name, labelPairs...)
	if err != nil {
		return 0, fmt.Errorf("/metrics of %s: %w", p.name, err)
	}
	return v, nil
}

// gathered returns the value of the series name{labelPairs} that g
// gathers; see sampleValue.
func gathered(g prometheus.Gatherer, name string, labelPairs ...string) (float64, error) {
	list, err := g.Gather()
	if err != nil {
		return 0, err
	}
	mfs := make(map[string]*dto.MetricFamily, len(list))
	for _, mf := range list {
		mfs[mf.GetName()] = mf
	}
	return sampleValue(mfs, name, labelPairs...)
}

// sampleValue returns the value of the series name{labelPairs} in mfs,
// the metric families by name: the series of name whose labels are exactly
// labelPairs (name, value, ...). A histogram's or summary's count and sum
// are read as name_count and name_sum, as the text format shows them.
func sampleValue(mfs map[string]*dto.MetricFamily, name string, labelPairs ...string) (float64, error) {
	if len(labelPairs)%2 != 0 {
		return 0, fmt.Errorf("odd label pairs %q", labelPairs)
	}
	want := map[string]string{}
	for i := 0; i < len(labelPairs); i += 2 {
		want[labelPairs[i]] = labelPairs[i+1]
	}
	series := fmt.Sprintf("%s%v", name, want)
	mf, suffix := mfs[name], ""
	if mf == nil {
		for _, s := range []string{"_count", "_sum"} {
			base, cut := strings.CutSuffix(name, s)
			if f := mfs[base]; cut && (f.GetType() == dto.MetricType_HISTOGRAM || f.GetType() == dto.MetricType_SUMMARY) {
				mf, suffix = f, s
			}
		}
	}
	if mf == nil {
		return 0, fmt.Errorf("no metric %s", name)
	}
	var have []string
	for _, m := range mf.GetMetric() {
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		if !maps.Equal(got, want) {
			have = append(have, fmt.Sprint(got))
			continue
		}
		switch mf.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue(), nil
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue(), nil
		case dto.MetricType_UNTYPED:
			return m.GetUntyped().GetValue(), nil
		case dto.MetricType_HISTOGRAM:
			if suffix == "_count" {
				return float64(m.GetHistogram().GetSampleCount()), nil
			}
			return m.GetHistogram().GetSampleSum(), nil
		case dto.MetricType_SUMMARY:
			if suffix == "_count" {
				return float64(m.GetSummary().GetSampleCount()), nil
			}
			return m.GetSummary().GetSampleSum(), nil
		}
		return 0, fmt.Errorf("%s: cannot read a %s", series, mf.GetType())
	}
	return 0, fmt.Errorf("no series %s; %s has %v", series, mf.GetName(), have)
}

// syncBuffer is a bytes.Buffer safe for the log reader and the test.
type syncBuffer struct {
	mtx sync.Mutex // Guards buf.
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mtx.Lock()
	defer b.mtx.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) WriteString(s string) {
	b.mtx.Lock()
	defer b.mtx.Unlock()
	b.buf.WriteString(s)
}

func (b *syncBuffer) String() string {
	b.mtx.Lock()
	defer b.mtx.Unlock()
	return b.buf.String()
}
