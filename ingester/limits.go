package ingester

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunks"

	censuspb "github.com/census-metrics/census/proto"
)

const (
	// seriesMemoryBudget is the memory set aside per series when
	// --ingester.max-series is derived. A new series of ten labels holds
	// about 1.1KiB of heap (BenchmarkIngester_MemoryPerSeries), and up to
	// about twice that once its open chunk fills and its labels are
	// longer; Go's garbage collector lets the heap grow to twice the live
	// data with the default GOGC. 8KiB per series on half the memory leaves
	// room for both, and for queries and compactions on top.
	seriesMemoryBudget = 8 << 10
	// fallbackMaxSeries is --ingester.max-series when no memory size can be
	// found: what a 16GiB machine would get.
	fallbackMaxSeries = 1_000_000
	// minDerivedMaxSeries keeps a tiny container usable.
	minDerivedMaxSeries = 10_000
)

// deriveMaxSeries returns the default --ingester.max-series for the memory
// this process may use, and where that memory size came from: half of it at
// seriesMemoryBudget bytes per series, so the head stops growing well before
// the process is killed for its memory.
func deriveMaxSeries() (int, string) {
	mem, source := memoryLimit()
	if mem == 0 {
		return fallbackMaxSeries, "no memory size found"
	}
	return max(minDerivedMaxSeries, int(mem/2/seriesMemoryBudget)), source
}

// memoryLimit returns the memory this process may use: GOMEMLIMIT if set,
// else the cgroup (v2, then v1) limit, else the machine's memory; 0 if none
// of them can be read.
func memoryLimit() (uint64, string) {
	if l := debug.SetMemoryLimit(-1); l > 0 && l != math.MaxInt64 {
		return uint64(l), "GOMEMLIMIT"
	}
	if l, ok := readLimitFile("/sys/fs/cgroup/memory.max"); ok {
		return l, "cgroup v2 memory.max"
	}
	if l, ok := readLimitFile("/sys/fs/cgroup/memory/memory.limit_in_bytes"); ok {
		return l, "cgroup v1 memory.limit_in_bytes"
	}
	if l, ok := physicalMemory(); ok {
		return l, "physical memory"
	}
	return 0, ""
}

// readLimitFile reads a cgroup memory limit; "max" and the huge number
// cgroup v1 uses for "no limit" count as none.
func readLimitFile(path string) (uint64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n == 0 || n >= 1<<60 {
		return 0, false
	}
	return n, true
}

func physicalMemory() (uint64, bool) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// MemTotal:       24514424 kB
		fields := strings.Fields(sc.Text())
		if len(fields) == 3 && fields[0] == "MemTotal:" && fields[2] == "kB" {
			kb, err := strconv.ParseUint(fields[1], 10, 64)
			return kb << 10, err == nil && kb > 0
		}
	}
	return 0, false
}

// limitError is a new series refused by a limit. It names the limit, its
// value and the series.
type limitError struct {
	reason censuspb.Reason
	msg    string
}

func (e *limitError) Error() string { return e.msg }

// limiter enforces the series limits when the TSDB head creates a series. It is the head's tsdb.SeriesLifecycleCallback, so it costs nothing
// on appends to existing series. Counts are kept with soft consistency:
// concurrent creations may overshoot a limit by the number of concurrent
// pushes, which is harmless next to millions.
type limiter struct {
	maxSeries, maxSeriesPerMetric int

	// enforce is false while the WAL is replayed: series acknowledged
	// before a restart come back whatever the limits are now.
	enforce atomic.Bool
	series  atomic.Int64

	mtx       sync.Mutex     // Guards perMetric.
	perMetric map[string]int // Head series by metric name.
}

var _ tsdb.SeriesLifecycleCallback = (*limiter)(nil)

func newLimiter(l Limits) *limiter {
	return &limiter{
		maxSeries:          l.MaxSeries,
		maxSeriesPerMetric: l.MaxSeriesPerMetric,
		perMetric:          map[string]int{},
	}
}

// PreCreation refuses a new series that breaks a limit.
func (l *limiter) PreCreation(ls labels.Labels) error {
	if !l.enforce.Load() {
		return nil
	}
	if n := l.series.Load(); n >= int64(l.maxSeries) {
		return &limitError{reason: censuspb.ReasonMaxSeries, msg: fmt.Sprintf(
			"series %s would exceed the limit of %d series in this ingester (--ingester.max-series)",
			formatSeries(ls), l.maxSeries)}
	}
	name := ls.Get(labels.MetricName)
	l.mtx.Lock()
	n := l.perMetric[name]
	l.mtx.Unlock()
	if n >= l.maxSeriesPerMetric {
		return &limitError{reason: censuspb.ReasonMaxSeriesPerMetric, msg: fmt.Sprintf(
			"series %s would exceed the limit of %d series of metric %q in this ingester (--ingester.max-series-per-metric)",
			formatSeries(ls), l.maxSeriesPerMetric, name)}
	}
	return nil
}

// PostCreation counts a series the head created, also during WAL replay.
func (l *limiter) PostCreation(ls labels.Labels) {
	l.series.Add(1)
	name := ls.Get(labels.MetricName)
	l.mtx.Lock()
	n, ok := l.perMetric[name]
	if !ok {
		// The name views ls's memory; a key of its own lets that go.
		name = strings.Clone(name)
	}
	l.perMetric[name] = n + 1
	l.mtx.Unlock()
}

// PostDeletion uncounts the series head garbage collection removed.
func (l *limiter) PostDeletion(deleted map[chunks.HeadSeriesRef]labels.Labels) {
	l.series.Add(-int64(len(deleted)))
	l.mtx.Lock()
	defer l.mtx.Unlock()
	for _, ls := range deleted {
		name := ls.Get(labels.MetricName)
		if n := l.perMetric[name]; n > 1 {
			l.perMetric[name] = n - 1
		} else {
			delete(l.perMetric, name)
		}
	}
}

const (
	// maxErrorValueLength bounds a label name or value as error messages
	// print it: a value may be kilobytes long, and gRPC carries the message
	// in a header.
	maxErrorValueLength = 128
	// maxErrorLength bounds a whole error message in a push's response.
	maxErrorLength = 4096
)

// formatSeries prints ls for an error message as labels.Labels.String
// does, with long names and values shortened.
func formatSeries(ls labels.Labels) string {
	var sb strings.Builder
	sb.WriteByte('{')
	first := true
	ls.Range(func(l labels.Label) {
		if !first {
			sb.WriteString(", ")
		}
		first = false
		sb.WriteString(shorten(l.Name))
		sb.WriteByte('=')
		sb.WriteString(strconv.Quote(shorten(l.Value)))
	})
	sb.WriteByte('}')
	return sb.String()
}

// shorten cuts s to maxErrorValueLength bytes, saying how long it was.
func shorten(s string) string {
	if len(s) <= maxErrorValueLength {
		return s
	}
	return fmt.Sprintf("%s...(%d bytes)", s[:maxErrorValueLength/2], len(s))
}

// truncate cuts an error message to maxErrorLength bytes.
func truncate(s string) string {
	if len(s) <= maxErrorLength {
		return s
	}
	return fmt.Sprintf("%s...(%d bytes)", s[:maxErrorLength], len(s))
}
