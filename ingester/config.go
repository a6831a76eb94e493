package ingester

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"

	censuspb "github.com/census-metrics/census/proto"
)

// Config configures an Ingester.
type Config struct {
	// StoragePath is the TSDB directory: blocks, head chunks and the WAL.
	StoragePath string
	// WALFsync makes every push wait until its samples are fsynced in the
	// WAL before it is acknowledged; concurrent pushes share one fsync.
	// Without it an acknowledged push survives a crash of the process (the
	// WAL is written before the acknowledgement) but not of the machine:
	// the TSDB itself fsyncs only full segments and on shutdown.
	WALFsync bool
	// Retention is how long blocks are kept.
	Retention model.Duration
	// RetentionSize caps the bytes of blocks kept; 0 means no cap.
	RetentionSize ByteSize
	// OutOfOrderWindow is how far behind the newest sample of the TSDB a
	// sample may be and still be accepted out of order; 0 refuses every
	// sample older than its series' newest, as Prometheus does by default.
	OutOfOrderWindow model.Duration
	// MaxExemplars is the size of the TSDB's exemplar ring buffer, shared by
	// every series; 0 disables exemplar storage.
	MaxExemplars int
	// StartTimestamps stores each sample's start timestamp (when its
	// counter started), which PromQL's rate() and increase() then use. It
	// needs the TSDB's newer chunk encodings (XOR2 for floats), which a
	// Prometheus before 3.x cannot read from the blocks.
	StartTimestamps bool
	// MinFreeBytes is the free space of the storage volume below which
	// pushes are refused (Unavailable) while queries go on; writes resume
	// once there is that much again. 0 derives it: 1% of the volume, at
	// least 64MiB and at most 4GiB.
	MinFreeBytes ByteSize
	// Limits protect the ingester from cardinality explosions and huge
	// queries.
	Limits Limits
}

// RegisterFlags registers the ingester's flags, with their defaults, in fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.StoragePath, "storage.path", "./data", "Ingester data directory: the TSDB blocks and its write-ahead log.")
	fs.BoolVar(&c.WALFsync, "storage.wal-fsync", true, "Fsync the WAL before acknowledging a push (concurrent pushes share one fsync), so an acknowledged push survives a machine crash. false acknowledges once the WAL is written, which survives a crash of the process only.")
	c.Retention = model.Duration(15 * 24 * time.Hour)
	fs.Var(&c.Retention, "storage.retention", "How long to keep blocks, e.g. 15d, 8w.")
	c.RetentionSize = 0
	fs.Var(&c.RetentionSize, "storage.retention-size", "Most bytes of blocks to keep, e.g. 512MB, 100GB (powers of 1024); the oldest blocks go first. 0 means no size limit. The WAL and head chunks come on top.")
	c.OutOfOrderWindow = 0
	fs.Var(&c.OutOfOrderWindow, "storage.out-of-order-window", "Accept samples older than their series' newest sample when they are at most this far behind the newest sample in the TSDB, e.g. 10m. 0 refuses them, as Prometheus does by default.")
	fs.BoolVar(&c.StartTimestamps, "storage.start-timestamps", false, "Store samples' start timestamps (OpenMetrics created timestamps), in the TSDB's start-timestamp chunk encodings (XOR2), as Prometheus' st-storage feature does.")
	fs.IntVar(&c.MaxExemplars, "storage.max-exemplars", 100_000, "Exemplars kept in memory, in one ring buffer shared by every series (about 100 bytes each). 0 disables exemplar storage.")
	c.MinFreeBytes = 0
	fs.Var(&c.MinFreeBytes, "storage.min-free-bytes", "Free space of the --storage.path volume below which the ingester refuses pushes (gRPC Unavailable: other replicas take them, and /ready says why) and keeps answering queries; writes resume by themselves once there is this much free again. A start on a fuller volume opens the TSDB read-only. The TSDB's own writes after pushes stop (head chunks, the shutdown snapshot) come out of this reserve. 0 means 1% of the volume, at least 64MB and at most 4GB.")
	c.Limits.RegisterFlags(fs)
}

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	if c.StoragePath == "" {
		return errors.New("--storage.path must not be empty")
	}
	if c.Retention <= 0 {
		return fmt.Errorf("--storage.retention must be positive, got %s", c.Retention)
	}
	if c.RetentionSize < 0 {
		return fmt.Errorf("--storage.retention-size must not be negative, got %s", c.RetentionSize)
	}
	if c.OutOfOrderWindow < 0 {
		return fmt.Errorf("--storage.out-of-order-window must not be negative, got %s", c.OutOfOrderWindow)
	}
	if c.MinFreeBytes < 0 {
		return fmt.Errorf("--storage.min-free-bytes must not be negative, got %s", c.MinFreeBytes)
	}
	if c.MaxExemplars < 0 {
		return fmt.Errorf("--storage.max-exemplars must not be negative, got %d", c.MaxExemplars)
	}
	return c.Limits.Validate()
}

// Limits bound what one ingester takes: series limits stop a cardinality
// explosion before the process runs out of memory. Every limit is enforced
// per ingester. The label limits are the distributor's, and the per-query
// limits the querier's, which sends them with each query
// (QueryStreamRequest.max_series): each has one owner and one flag.
type Limits struct {
	// MaxSeries is the most series the TSDB head may hold; 0 derives it from
	// the memory available to the process (see deriveMaxSeries).
	MaxSeries int
	// MaxSeriesPerMetric is the most head series of one metric name; 0
	// makes it a fifth of MaxSeries.
	MaxSeriesPerMetric int
	// MaxRequestBytes is the largest push message the gRPC server accepts.
	// cmd/census passes it to grpc.MaxRecvMsgSize; it cannot exceed
	// censuspb.MaxMessageSize, the most any Census client sends.
	MaxRequestBytes ByteSize
	// MaxInflightPushes is the most pushes the ingester works on at once;
	// 0 means no limit.
	MaxInflightPushes int
	// MaxInflightPushBytes bounds the request bytes of the pushes worked
	// on at once; 0 means no limit.
	MaxInflightPushBytes ByteSize
	// MaxConcurrentAppends is the most pushes appending at once; 0 means
	// twice GOMAXPROCS, -1 no limit.
	MaxConcurrentAppends int
	// MaxConcurrentAppendsDuringQueries is the most pushes appending at
	// once while queries read; 0 means half of GOMAXPROCS (at least 1), -1
	// no limit but MaxConcurrentAppends.
	MaxConcurrentAppendsDuringQueries int
}

// RegisterFlags registers the limits' flags, with their defaults, in fs.
func (l *Limits) RegisterFlags(fs *flag.FlagSet) {
	fs.IntVar(&l.MaxSeries, "ingester.max-series", 0, "Most series this ingester holds in memory; a push creating more is refused with ResourceExhausted. 0 derives it from the memory limit of the process (GOMEMLIMIT, else the cgroup limit, else physical memory): half of it at 8KiB per series.")
	fs.IntVar(&l.MaxSeriesPerMetric, "ingester.max-series-per-metric", 0, "Most series of one metric name in this ingester. 0 means a fifth of --ingester.max-series.")
	l.MaxRequestBytes = censuspb.MaxMessageSize
	fs.IntVar(&l.MaxInflightPushes, "ingester.max-inflight-push-requests", 512, "Most pushes this ingester works on at once; more fail at once with Unavailable (the other replicas take them, or the sender retries later), so a flood of pushes cannot exhaust its memory or starve its queries. 0 means no limit.")
	fs.IntVar(&l.MaxConcurrentAppends, "ingester.max-concurrent-appends", 0, "Most pushes appending to the TSDB at once, the CPU-bound part of a push; more wait (up to 1s, then fail with Unavailable), so that a flood of pushes leaves CPU to queries. The WAL fsync after it is not limited. 0 means twice the number of CPUs Go uses (GOMAXPROCS); -1 means no limit.")
	fs.IntVar(&l.MaxConcurrentAppendsDuringQueries, "ingester.max-concurrent-appends-during-queries", 0, "Most pushes appending to the TSDB at once while queries are reading it, so that a flood of pushes leaves the other cores to the queries instead of sharing every core with them. A push that does not get a slot within 1s fails with Unavailable. 0 means half the number of CPUs Go uses (GOMAXPROCS), at least 1; -1 means only --ingester.max-concurrent-appends applies.")
	l.MaxInflightPushBytes = 512 << 20
	fs.Var(&l.MaxInflightPushBytes, "ingester.max-inflight-push-bytes", "Most request bytes of the pushes this ingester works on at once, e.g. 512MB; more fail at once with Unavailable. 0 means no limit.")
	fs.Var(&l.MaxRequestBytes, "ingester.max-request-bytes", "Largest push request this ingester accepts, e.g. 16MB; larger ones fail with ResourceExhausted. At most 64MB, the largest message Census clients send.")
}

// Validate reports the first limit that cannot work.
func (l *Limits) Validate() error {
	for _, f := range []struct {
		flag  string
		value int
	}{
		{"--ingester.max-series", l.MaxSeries},
		{"--ingester.max-series-per-metric", l.MaxSeriesPerMetric},
		{"--ingester.max-inflight-push-requests", l.MaxInflightPushes},
	} {
		if f.value < 0 {
			return fmt.Errorf("%s must not be negative, got %d", f.flag, f.value)
		}
	}
	if l.MaxConcurrentAppends < -1 {
		return fmt.Errorf("--ingester.max-concurrent-appends must be -1 (no limit) or more, got %d", l.MaxConcurrentAppends)
	}
	if l.MaxConcurrentAppendsDuringQueries < -1 {
		return fmt.Errorf("--ingester.max-concurrent-appends-during-queries must be -1 (no limit) or more, got %d", l.MaxConcurrentAppendsDuringQueries)
	}
	if l.MaxInflightPushBytes < 0 {
		return fmt.Errorf("--ingester.max-inflight-push-bytes must not be negative, got %s", l.MaxInflightPushBytes)
	}
	if l.MaxRequestBytes < 1024 || l.MaxRequestBytes > censuspb.MaxMessageSize {
		return fmt.Errorf("--ingester.max-request-bytes must be between 1KB and %s, got %s", ByteSize(censuspb.MaxMessageSize), l.MaxRequestBytes)
	}
	return nil
}

// ByteSize is a size in bytes that reads and prints with units of powers of
// 1024, as Prometheus' --storage.tsdb.retention.size: B, KB, MB, GB, TB, PB
// (KiB, MiB, ... are accepted too).
type ByteSize int64

var byteUnits = []struct {
	suffix string
	size   int64
}{
	{"PB", 1 << 50}, {"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}, {"B", 1},
}

// Set parses s, such as "512MB" or "0".
func (b *ByteSize) Set(s string) error {
	num, unit := strings.ToUpper(strings.TrimSpace(s)), int64(1)
	for _, u := range byteUnits {
		if u.size == 1 {
			num = strings.TrimSuffix(num, "B")
			break
		}
		// KiB and KB mean the same: both are powers of 1024 here.
		prefix := u.suffix[:1]
		if trimmed, ok := strings.CutSuffix(num, prefix+"IB"); ok {
			num, unit = trimmed, u.size
			break
		}
		if trimmed, ok := strings.CutSuffix(num, prefix+"B"); ok {
			num, unit = trimmed, u.size
			break
		}
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || n < 0 || math.IsInf(n, 0) || math.IsNaN(n) || n*float64(unit) > math.MaxInt64 {
		return fmt.Errorf("invalid size %q: want a number of bytes with an optional unit B, KB, MB, GB, TB or PB", s)
	}
	*b = ByteSize(n * float64(unit))
	return nil
}

// String prints b in the largest unit that divides it exactly.
func (b ByteSize) String() string {
	if b == 0 {
		return "0"
	}
	for _, u := range byteUnits {
		if int64(b)%u.size == 0 {
			return strconv.FormatInt(int64(b)/u.size, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(b), 10) + "B"
}
