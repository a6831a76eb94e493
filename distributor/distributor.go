// Package distributor validates series, shards them over the ring and
// pushes them to their ingesters. It implements Prometheus' own
// storage.AppendableV2, so the agent's sender and Prometheus' remote-write
// and OTLP receivers (see Receiver) write through it unchanged.
package distributor

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/alecthomas/units"
	"log/slog"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/prometheus/storage"

	censuspb "github.com/census-metrics/census/proto"
	"github.com/census-metrics/census/ring"
)

// Ring is what the distributor needs of the ring: the write replicas of a
// token and how many copies a series should have.
type Ring interface {
	// Get appends the write replicas of token to buf[:0].
	Get(token uint32, buf []ring.InstanceDesc) ([]ring.InstanceDesc, error)
	ReplicationFactor() int
}

// Config configures the distributor. Zero limits mean no limit.
type Config struct {
	// PushTimeout bounds one commit: the concurrent pushes to every ingester.
	PushTimeout time.Duration

	// MaxLabelNamesPerSeries, MaxLabelNameLength and MaxLabelValueLength
	// bound the labels of every series appended.
	MaxLabelNamesPerSeries int
	MaxLabelNameLength     int
	MaxLabelValueLength    int
	// MaxSampleAge refuses samples older than now minus it; MaxFutureSkew
	// refuses samples newer than now plus it.
	MaxSampleAge  time.Duration
	MaxFutureSkew time.Duration
	// MaxRequestBytes bounds an HTTP push (remote write, OTLP): its body
	// as sent, and a remote-write body once snappy decompresses it.
	MaxRequestBytes units.Base2Bytes
	// MaxInflightPushRequests and MaxInflightPushBytes bound the HTTP
	// pushes worked on at once (see inflight).
	MaxInflightPushRequests int
	MaxInflightPushBytes    units.Base2Bytes
	// AdaptivePushLimit lowers the limit of pushes in flight, down to
	// MinInflightPushRequests, while pushes take more than
	// PushLatencyTolerance times as long as when the cluster keeps up
	// (see pushLimit).
	AdaptivePushLimit       bool
	MinInflightPushRequests int
	PushLatencyTolerance    float64
}

// newFreeList returns a free list for as many appenders as can run at
// once, give or take.
func newFreeList() chan *appender {
	return make(chan *appender, 2*runtime.GOMAXPROCS(0))
}

// RegisterFlags registers the distributor's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.PushTimeout, "distributor.push-timeout", 10*time.Second, "How long one push to the ingesters may take before it counts as failed.")
	// The label limits are Census' only ones: a series too big is refused
	// here, with a message to the sender, before it is sent.
	fs.IntVar(&c.MaxLabelNamesPerSeries, "distributor.max-label-names-per-series", 64, "Most labels of a series, __name__ included; a series with more is refused. 0 means no limit.")
	fs.IntVar(&c.MaxLabelNameLength, "distributor.max-label-name-length", 1024, "Longest label name, in bytes; a series with a longer one is refused. 0 means no limit.")
	fs.IntVar(&c.MaxLabelValueLength, "distributor.max-label-value-length", 4096, "Longest label value, in bytes; a series with a longer one is refused. 0 means no limit.")
	fs.DurationVar(&c.MaxSampleAge, "distributor.max-sample-age", 0, "Refuse samples older than this. 0 leaves it to the ingesters' time rules (--storage.out-of-order-window).")
	fs.TextVar(&c.MaxRequestBytes, "distributor.max-request-bytes", units.Base2Bytes(64<<20), "Largest HTTP push (remote write, OTLP) the distributor takes, as sent and, for remote write, once decompressed, e.g. 16MB; a larger one is refused with 413. 0 means no limit.")
	fs.IntVar(&c.MaxInflightPushRequests, "distributor.max-inflight-push-requests", 256, "Most HTTP pushes (remote write, OTLP) the distributor works on at once; more are refused with 429, so senders back off. 0 means no limit.")
	fs.TextVar(&c.MaxInflightPushBytes, "distributor.max-inflight-push-bytes", units.Base2Bytes(256<<20), "Most bytes of the HTTP pushes the distributor works on at once, decompressed for remote write (decoding takes about 13 times that in memory); more are refused with 429. 0 means no limit.")
	fs.BoolVar(&c.AdaptivePushLimit, "distributor.adaptive-push-limit", true, "Lower the limit of HTTP pushes in flight (--distributor.max-inflight-push-requests) while the cluster is slow to store them, down to --distributor.min-inflight-push-requests, and raise it again as it recovers: the pushes over it answer 429 at once, so senders back off instead of queueing for the CPU queries need. Slow means pushes taking more than --distributor.push-latency-tolerance times as long as when the cluster keeps up, or ingesters refusing pushes over their limits. No effect with --distributor.max-inflight-push-requests=0.")
	fs.IntVar(&c.MinInflightPushRequests, "distributor.min-inflight-push-requests", 8, "Least the adaptive limit of HTTP pushes in flight comes down to (--distributor.adaptive-push-limit).")
	fs.Float64Var(&c.PushLatencyTolerance, "distributor.push-latency-tolerance", 2, "How many times longer than when the cluster keeps up pushes may take before the adaptive limit of HTTP pushes in flight comes down (--distributor.adaptive-push-limit); more than 1.")
	fs.DurationVar(&c.MaxFutureSkew, "distributor.max-future-skew", 10*time.Minute, "Refuse samples stamped further than this ahead of this machine's clock. 0 means no limit. Prometheus' remote-write and OTLP receivers refuse more than 10m ahead in any case.")
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.PushTimeout <= 0 {
		return fmt.Errorf("--distributor.push-timeout must be positive, got %s", c.PushTimeout)
	}
	for _, f := range []struct {
		flag  string
		value int64
	}{
		{"--distributor.max-label-names-per-series", int64(c.MaxLabelNamesPerSeries)},
		{"--distributor.max-label-name-length", int64(c.MaxLabelNameLength)},
		{"--distributor.max-label-value-length", int64(c.MaxLabelValueLength)},
		{"--distributor.max-sample-age", int64(c.MaxSampleAge)},
		{"--distributor.max-future-skew", int64(c.MaxFutureSkew)},
		{"--distributor.max-request-bytes", int64(c.MaxRequestBytes)},
		{"--distributor.max-inflight-push-requests", int64(c.MaxInflightPushRequests)},
		{"--distributor.max-inflight-push-bytes", int64(c.MaxInflightPushBytes)},
	} {
		if f.value < 0 {
			return fmt.Errorf("%s must not be negative, got %d", f.flag, f.value)
		}
	}
	if c.AdaptivePushLimit {
		if c.MinInflightPushRequests < 1 {
			return fmt.Errorf("--distributor.min-inflight-push-requests must be at least 1 with --distributor.adaptive-push-limit, got %d", c.MinInflightPushRequests)
		}
		if c.PushLatencyTolerance <= 1 {
			return fmt.Errorf("--distributor.push-latency-tolerance must be more than 1 with --distributor.adaptive-push-limit, got %g", c.PushLatencyTolerance)
		}
	}
	return nil
}

// Distributor hashes each series onto the ring and pushes it to its replicas,
// succeeding once a quorum of them stored it.
type Distributor struct {
	cfg     Config
	ring    Ring
	clients *censuspb.ClientPool
	logger  *slog.Logger
	metrics *metrics

	// appenders is a free list of *appender, whose buffers then serve
	// many transactions. Unlike a sync.Pool it survives garbage
	// collections, which a distributor decoding pushes runs often; its
	// size bounds the memory it keeps.
	appenders chan *appender
	// latePushes counts the pushes still in flight after their commit was
	// answered (see push).
	latePushes atomic.Int64
}

var _ storage.AppendableV2 = (*Distributor)(nil)

// New returns a distributor that pushes through clients to the ingesters r
// chooses.
func New(cfg Config, r Ring, clients *censuspb.ClientPool, logger *slog.Logger, reg prometheus.Registerer) (*Distributor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if r == nil || clients == nil {
		return nil, errors.New("distributor needs a ring and a client pool")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Distributor{cfg: cfg, ring: r, clients: clients, logger: logger, metrics: newMetrics(reg), appenders: newFreeList()}, nil
}

// AppenderV2 returns an appender that buffers samples until Commit pushes
// them. ctx bounds the pushes of Commit.
func (d *Distributor) AppenderV2(ctx context.Context) storage.AppenderV2 {
	var a *appender
	select {
	case a = <-d.appenders:
	default:
		a = &appender{d: d}
	}
	a.ctx = ctx
	a.times = d.cfg.timeRange(time.Now())
	a.report = reportFrom(ctx)
	return a
}

// maxRetainedBuffer is the largest buffer a pooled appender keeps: one
// huge transaction should not pin its memory for good.
const maxRetainedBuffer = 8 << 20

// putAppender clears a for its next transaction, dropping its references
// to labels and samples, and returns it to the free list, buffers and all.
func (d *Distributor) putAppender(a *appender) {
	clear(a.series)
	a.series = a.series[:0]
	a.floats = a.floats[:0]
	a.samples = 0
	a.encoded = a.encoded[:0]
	a.ends = a.ends[:0]
	a.ctx = nil
	a.report = nil
	a.rejected = rejections{}
	if cap(a.encoded) > maxRetainedBuffer {
		a.encoded = nil
	}
	for j := range a.batch.targets[:cap(a.batch.targets)] {
		if t := &a.batch.targets[:cap(a.batch.targets)][j]; cap(t.req) > maxRetainedBuffer {
			t.req = nil
		}
	}
	a.batch.targets = a.batch.targets[:0]
	select {
	case d.appenders <- a:
	default:
	}
}

type metrics struct {
	receivedSamples prometheus.Counter
	commits         *prometheus.CounterVec
	ingesterPushes  *prometheus.HistogramVec
	// discarded[r] counts the samples refused for reason r.
	discarded [censuspb.NumReasons]prometheus.Counter
	// ingesterSamples counts samples per ingester and result.
	ingesterSamples *prometheus.CounterVec
}

// countIngesterSamples counts what the ingester of target t got: sent (it
// acknowledged them), failed (its push failed), retried (they were sent
// again, by a caller marking its context with RetryContext) and dropped
// (its push failed but every series reached its quorum without it, so
// nobody sends them to it again).
func (m *metrics) countIngesterSamples(t *target, err error, quorum, retry bool) {
	n := float64(t.samples)
	if retry {
		m.ingesterSamples.WithLabelValues(t.instance.ID, "retried").Add(n)
	}
	if acknowledged(err) {
		m.ingesterSamples.WithLabelValues(t.instance.ID, "sent").Add(n)
		return
	}
	m.ingesterSamples.WithLabelValues(t.instance.ID, "failed").Add(n)
	if quorum {
		m.ingesterSamples.WithLabelValues(t.instance.ID, "dropped").Add(n)
	}
}

type retryKey struct{}

// RetryContext marks ctx as the context of a commit that sends again what
// an earlier commit failed to store, so the samples it pushes are counted
// as retried too.
func RetryContext(ctx context.Context) context.Context {
	return context.WithValue(ctx, retryKey{}, true)
}

func isRetry(ctx context.Context) bool {
	retry, _ := ctx.Value(retryKey{}).(bool)
	return retry
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	discarded := f.NewCounterVec(prometheus.CounterOpts{
		Name: "census_distributor_discarded_samples_total",
		Help: "Samples the distributor refused before sending them, by reason: the rule or limit that refused them.",
	}, []string{"reason"})
	m := &metrics{
		receivedSamples: f.NewCounter(prometheus.CounterOpts{
			Name: "census_distributor_received_samples_total",
			Help: "Samples appended to the distributor, before replication.",
		}),
		commits: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_distributor_commits_total",
			Help: "Commits of appended samples by result: success, invalid (some input refused by ingesters), limited (some input over an ingester limit), no_quorum, rejected (refused before sending).",
		}, []string{"result"}),
		ingesterPushes: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:                           "census_distributor_ingester_push_duration_seconds",
			Help:                           "Latency of one push to one ingester, by gRPC status code.",
			Buckets:                        prometheus.DefBuckets,
			NativeHistogramBucketFactor:    1.1,
			NativeHistogramMaxBucketNumber: 100,
		}, []string{"code"}),
	}
	m.ingesterSamples = f.NewCounterVec(prometheus.CounterOpts{
		Name: "census_distributor_ingester_samples_total",
		Help: "Samples pushed to each ingester by result: sent (acknowledged), failed (the push failed), retried (sent again after a failed commit), dropped (failed while the other replicas made the quorum, so never sent to it again).",
	}, []string{"ingester", "result"})
	// Every reason exists from the start, so a rate over it never misses
	// the first discard. The distributor refuses for its own reasons only;
	// the others stay unexported.
	for _, r := range distributorReasons {
		m.discarded[r] = discarded.WithLabelValues(r.String())
	}
	return m
}

// distributorReasons are the reasons the distributor refuses samples for.
var distributorReasons = []censuspb.Reason{
	censuspb.ReasonMissingMetricName,
	censuspb.ReasonInvalidLabel,
	censuspb.ReasonDuplicateLabelNames,
	censuspb.ReasonMaxLabelNamesPerSeries,
	censuspb.ReasonLabelNameTooLong,
	censuspb.ReasonLabelValueTooLong,
	censuspb.ReasonSampleTooOld,
	censuspb.ReasonSampleTooFarInFuture,
	censuspb.ReasonInvalidHistogram,
}
