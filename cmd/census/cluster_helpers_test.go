package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
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
	p := &process{t: t, name: name, done: make(chan struct{}), log: &syncBuffer{}}
	p.cmd = exec.Command(os.Args[0], args...)
	p.cmd.Env = append(os.Environ(), childEnv+"=1")
	stderr, err := p.cmd.StderrPipe()
	require.NoError(t, err)
	p.cmd.Stdout = p.log
	require.NoError(t, p.cmd.Start())

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
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- log of %s ---\n%s", p.name, p.log.String())
		}
	})

	select {
	case m := <-started:
		p.http, p.grpc, p.gossip = m[1], m[2], m[3]
	case <-p.done:
		t.Fatalf("%s exited before it started:\n%s", name, p.log.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not start within 60s:\n%s", name, p.log.String())
	}
	return p
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

// waitReady polls /ready until it answers 200.
func (p *process) waitReady(timeout time.Duration) {
	p.t.Helper()
	require.Eventually(p.t, func() bool {
		resp, err := http.Get("http://" + p.http + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, timeout, 100*time.Millisecond, "%s not ready", p.name)
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

// apiGet calls the Prometheus HTTP API of p and decodes the envelope.
func (p *process) apiGet(path string, params url.Values) (int, apiResponse, error) {
	resp, err := http.Get("http://" + p.http + path + "?" + params.Encode())
	if err != nil {
		return 0, apiResponse{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, apiResponse{}, err
	}
	var r apiResponse
	if err := json.Unmarshal(body, &r); err != nil {
		return resp.StatusCode, r, fmt.Errorf("decode %s: %w: %s", path, err, body)
	}
	return resp.StatusCode, r, nil
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
