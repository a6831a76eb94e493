package main

import (
	"go/build"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"
)

// TestPromQLCompliance runs every PromQL test file that ships with the
// pinned Prometheus module through Census: each load is pushed by the
// distributor through the ring to three real ingesters (RF 3), and each eval
// is answered by Prometheus' engine over the querier's fan-out and replica
// merge. Every eval must pass: the data path is lossless.
func TestPromQLCompliance(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole PromQL suite through a cluster")
	}
	files := builtinTestFiles(t)
	exceptions := readExceptions(t, "../../querier/PROMQL_EXCEPTIONS.md")

	c := newTestCluster(t, 3, 3)
	engine := promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery)
	// Each file and each "clear" gets empty ingesters behind the same ring.
	newStorage := func(tb testing.TB) storage.Storage { return c.storage(c.reset(tb)) }
	run := &exceptionsRun{TBRun: t, files: files, exceptions: exceptions, engine: engine, newStorage: newStorage}
	promqltest.RunBuiltinTestsWithStorage(run, engine, newStorage)

	passed, total, excepted, passedFiles := 0, 0, 0, 0
	for name, f := range files {
		total += f.evals
		excepted += len(exceptions[filepath.Base(name)])
		if run.passed[name] {
			passed += f.evals - len(exceptions[filepath.Base(name)])
			passedFiles++
		}
	}
	t.Logf("PromQL compliance: %d of %d eval statements passed, %d listed as exceptions in querier/PROMQL_EXCEPTIONS.md, in %d of %d files", passed, total, excepted, passedFiles, len(files))
	for name := range files {
		if !run.passed[name] {
			t.Logf("PromQL compliance: %s has failing evals (see its subtests)", name)
		}
	}
}

// exceptionsRun runs each file of the suite, less its listed exceptions,
// and records which files passed.
type exceptionsRun struct {
	promqltest.TBRun
	files      map[string]testFile
	exceptions map[string][]int // Eval lines by file base name.
	engine     *promql.Engine
	newStorage func(testing.TB) storage.Storage
	passed     map[string]bool
}

func (r *exceptionsRun) Run(name string, f func(*testing.T)) bool {
	if lines := r.exceptions[filepath.Base(name)]; len(lines) > 0 {
		content := blankEvals(r.TBRun, r.files[name].content, lines)
		f = func(t *testing.T) { promqltest.RunTestWithStorage(t, content, r.engine, r.newStorage) }
	}
	ok := r.TBRun.Run(name, f)
	if r.passed == nil {
		r.passed = map[string]bool{}
	}
	r.passed[name] = ok
	return ok
}

// blankEvals empties the eval statements at lines (1-based) of content,
// with their expected results, keeping every line number.
func blankEvals(t testing.TB, content string, lines []int) string {
	t.Helper()
	ls := strings.Split(content, "\n")
	for _, n := range lines {
		require.True(t, n >= 1 && n <= len(ls) && strings.HasPrefix(strings.ToLower(strings.TrimSpace(ls[n-1])), "eval"),
			"PROMQL_EXCEPTIONS.md lists line %d, which is no eval statement", n)
		ls[n-1] = ""
		// The expectations follow up to the next blank line or command.
		for i := n; i < len(ls); i++ {
			line := strings.TrimSpace(ls[i])
			lower := strings.ToLower(line)
			if line == "" || strings.HasPrefix(lower, "eval") || strings.HasPrefix(lower, "load") || lower == "clear" {
				break
			}
			ls[i] = ""
		}
	}
	return strings.Join(ls, "\n")
}

// readExceptions reads the table of PROMQL_EXCEPTIONS.md: the eval lines
// that may fail, by file.
func readExceptions(t testing.TB, path string) map[string][]int {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	out := map[string][]int{}
	for _, line := range strings.Split(string(b), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasSuffix(strings.TrimSpace(cells[1]), ".test") {
			continue
		}
		file := strings.TrimSpace(cells[1])
		for _, n := range strings.Split(cells[2], ",") {
			i, err := strconv.Atoi(strings.TrimSpace(n))
			require.NoError(t, err, "line numbers of %s in %s", file, path)
			out[file] = append(out[file], i)
		}
		require.NotEmpty(t, strings.TrimSpace(cells[3]), "the exceptions of %s need a reason", file)
	}
	return out
}

// testFile is one file of the suite.
type testFile struct {
	content string
	evals   int
}

// builtinTestFiles returns the files of the suite by the name the suite
// runs them under (testdata/<name>.test). It reads them from the module's
// source, and checks that they are the files the suite embeds.
func builtinTestFiles(t *testing.T) map[string]testFile {
	t.Helper()
	bi, ok := debug.ReadBuildInfo()
	require.True(t, ok, "no build info")
	var version string
	for _, d := range bi.Deps {
		if d.Path == "github.com/prometheus/prometheus" {
			version = d.Version
		}
	}
	require.NotEmpty(t, version, "no Prometheus module in the build info")
	modCache := os.Getenv("GOMODCACHE")
	if modCache == "" {
		modCache = filepath.Join(build.Default.GOPATH, "pkg", "mod")
	}
	dir := filepath.Join(modCache, "github.com", "prometheus", "prometheus@"+version, "promql", "promqltest")
	files, err := filepath.Glob(filepath.Join(dir, "testdata", "*.test"))
	require.NoError(t, err)
	require.NotEmpty(t, files, "no test files under %s", dir)

	out := map[string]testFile{}
	total := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		tf := testFile{content: string(b)}
		for _, line := range strings.Split(tf.content, "\n") {
			if strings.HasPrefix(strings.ToLower(strings.TrimSpace(line)), "eval") {
				tf.evals++
			}
		}
		out[filepath.Join("testdata", filepath.Base(f))] = tf
		total += tf.evals
	}
	exprs, err := promqltest.GetBuiltInExprs()
	require.NoError(t, err)
	require.Equal(t, len(exprs), total, "the eval statements in %s are not those the suite embeds", dir)
	return out
}
