// Package ingester is the gRPC storage server of Census: it appends pushed
// series to a Prometheus TSDB (head, WAL and local blocks) and answers
// queries over them with the TSDB's own chunks.
package ingester

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/tsdb"

	censuspb "github.com/census-metrics/census/proto"
)

// Config configures an Ingester.
type Config struct {
	// StoragePath is the TSDB directory: blocks, head chunks and the WAL.
	StoragePath string
}

// RegisterFlags registers the ingester's flags, with their defaults, in fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.StoragePath, "storage.path", "./data", "Ingester data directory: the TSDB blocks and its write-ahead log.")
}

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	if c.StoragePath == "" {
		return errors.New("--storage.path must not be empty")
	}
	return nil
}

// Ingester stores pushed series in a Prometheus TSDB and answers queries from
// it. It implements censuspb.IngesterServer; its methods are safe for
// concurrent use.
type Ingester struct {
	// The generated server interface requires this embedding; Ingester
	// implements every method itself.
	censuspb.UnimplementedIngesterServer

	logger  *slog.Logger
	metrics *metrics
	db      *tsdb.DB

	// closeMtx guards closed, and keeps db open while a request uses it:
	// every request holds a read lock for its whole duration, Close takes
	// the write lock. So Close waits for in-flight requests; stop the gRPC
	// server first, which cancels them.
	closeMtx sync.RWMutex
	closed   bool

	// pushStates pools *pushState, the scratch space of one Push.
	pushStates sync.Pool
}

var _ censuspb.IngesterServer = (*Ingester)(nil)

// New opens the TSDB in cfg.StoragePath, creating the directory if needed,
// and replays its WAL before returning, so every push acknowledged before a
// restart or a crash of the process is queryable again. reg receives the ingester's metrics
// and the TSDB's own; it must not be shared with another Ingester. A nil
// logger discards logs and a nil reg registers nothing.
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Ingester, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid ingester config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	// Defaults are Prometheus' own (in-order only, XOR float chunks, 2h
	// blocks, 15d retention); limits, out-of-order windows and retention
	// become flags once users need to choose them.
	opts := tsdb.DefaultOptions()

	logger.Info("Opening TSDB, replaying its WAL", "path", cfg.StoragePath)
	start := time.Now()
	db, err := tsdb.Open(cfg.StoragePath, logger, reg, opts, nil)
	if err != nil {
		return nil, fmt.Errorf("open TSDB in %s: %w", cfg.StoragePath, err)
	}
	// Open is dominated by WAL replay; the TSDB logs each segment as it goes.
	logger.Info("TSDB opened, WAL replayed", "path", cfg.StoragePath,
		"duration", time.Since(start), "head_series", db.Head().NumSeries())

	return &Ingester{
		logger:  logger,
		metrics: newMetrics(reg, db.Head()),
		db:      db,
	}, nil
}

// Ready returns nil while the ingester serves: from New until Close.
func (i *Ingester) Ready() error {
	i.closeMtx.RLock()
	defer i.closeMtx.RUnlock()
	if i.closed {
		return errClosed
	}
	return nil
}

// Close waits for in-flight requests, then closes the TSDB: its WAL is
// flushed and the head chunks are synced. Later requests fail with
// Unavailable. Calling Close again returns nil.
func (i *Ingester) Close() error {
	i.closeMtx.Lock()
	defer i.closeMtx.Unlock()
	if i.closed {
		return nil
	}
	i.closed = true
	if err := i.db.Close(); err != nil {
		return fmt.Errorf("close TSDB: %w", err)
	}
	i.logger.Info("TSDB closed")
	return nil
}

// acquire holds the TSDB open for one request. On success the caller must
// call i.closeMtx.RUnlock when done; it is not a returned closure because
// that would allocate on every push.
func (i *Ingester) acquire() error {
	i.closeMtx.RLock()
	if i.closed {
		i.closeMtx.RUnlock()
		return errClosed
	}
	return nil
}
