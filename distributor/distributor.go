// Package distributor shards series over the ring and pushes them to their
// ingesters. It implements Prometheus' storage.AppendableV2, so the scrape
// manager (and later the remote-write receiver) write through it unchanged.
package distributor

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"sync"
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

// Config configures the distributor.
type Config struct {
	// PushTimeout bounds one commit: the concurrent pushes to every ingester.
	PushTimeout time.Duration
}

// RegisterFlags registers the distributor's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.PushTimeout, "distributor.push-timeout", 10*time.Second, "How long one push to the ingesters may take before it counts as failed.")
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.PushTimeout <= 0 {
		return fmt.Errorf("distributor.push-timeout must be positive, got %s", c.PushTimeout)
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

	// appenders pools *appender, whose buffers then serve many
	// transactions.
	appenders sync.Pool
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
	return &Distributor{cfg: cfg, ring: r, clients: clients, logger: logger, metrics: newMetrics(reg)}, nil
}

// AppenderV2 returns an appender that buffers samples until Commit pushes
// them. ctx bounds the pushes of Commit.
func (d *Distributor) AppenderV2(ctx context.Context) storage.AppenderV2 {
	a, ok := d.appenders.Get().(*appender)
	if !ok {
		a = &appender{d: d}
	}
	a.ctx = ctx
	return a
}

// putAppender clears a for its next transaction, dropping its references
// to labels and samples, and returns it to the pool.
func (d *Distributor) putAppender(a *appender) {
	clear(a.series)
	a.series = a.series[:0]
	a.floats = a.floats[:0]
	a.samples = 0
	a.encoded = a.encoded[:0]
	a.ends = a.ends[:0]
	a.ctx = nil
	d.appenders.Put(a)
}

type metrics struct {
	receivedSamples prometheus.Counter
	commits         *prometheus.CounterVec
	ingesterPushes  *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
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
}
