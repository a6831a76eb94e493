// Package ingester is the gRPC storage server of Census: it appends pushed
// series to a Prometheus TSDB (head, WAL and local blocks) and answers
// queries over them with the TSDB's own chunks.
package ingester

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/wlog"

	censuspb "github.com/census-metrics/census/proto"
)

// Ingester stores pushed series in a Prometheus TSDB and answers queries from
// it. It implements censuspb.IngesterServer; its methods are safe for
// concurrent use. New makes it; Run opens the TSDB, serves until its context
// ends and closes the TSDB.
type Ingester struct {
	// The generated server interface requires this embedding; Ingester
	// implements every method itself.
	censuspb.UnimplementedIngesterServer

	cfg      Config
	logger   *slog.Logger
	metrics  *metrics
	limiter  *limiter
	metadata *metadataStore
	// tsdbReg is where the TSDB registers its metrics (they are exposed on
	// the caller's registerer too), so TSDBStats can read its head chunk
	// count as Prometheus' /api/v1/status/tsdb does.
	tsdbReg *teeRegisterer
	// replay reports the WAL replay's progress while Run opens the TSDB,
	// and walSegments how many segments the WAL had when it began (-1
	// before Run looked).
	replay      *tsdb.DBStats
	walSegments atomic.Int64

	started  atomic.Bool // Run was called.
	stopping atomic.Bool // Run's context ended: no new requests.

	// mtx guards db and closed, and keeps db open while a request uses it:
	// every request holds a read lock for its whole duration, and Run takes
	// the write lock to publish the opened TSDB and to close it, so closing
	// waits for in-flight requests.
	mtx    sync.RWMutex
	db     *tsdb.DB
	closed bool
	// openDB is db for readers that must not wait for mtx: metrics.
	openDB atomic.Pointer[tsdb.DB]
	// syncer fsyncs the WAL for pushes; nil without --storage.wal-fsync.
	// Set with db.
	syncer *walSyncer

	// pushStates pools *pushState, the scratch space of one Push, and
	// encodedRequests *encodedRequest, the request of registerService's Push.
	pushStates      sync.Pool
	encodedRequests sync.Pool
}

var _ censuspb.IngesterServer = (*Ingester)(nil)

// New validates cfg and returns an Ingester that is not serving yet: every
// request fails with Unavailable until Run has opened the TSDB. New resolves
// the limits derived from memory (--ingester.max-series 0). reg receives the
// ingester's metrics and the TSDB's own; it must not be shared with another
// Ingester. A nil logger discards logs and a nil reg registers nothing.
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Ingester, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid ingester config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Limits.MaxSeries == 0 {
		n, source := deriveMaxSeries()
		cfg.Limits.MaxSeries = n
		logger.Info("Derived the series limit from memory", "max_series", n, "memory_source", source)
	}
	if cfg.Limits.MaxSeriesPerMetric == 0 {
		cfg.Limits.MaxSeriesPerMetric = max(1, cfg.Limits.MaxSeries/5)
	}

	i := &Ingester{
		cfg:      cfg,
		logger:   logger,
		limiter:  newLimiter(cfg.Limits),
		tsdbReg:  newTeeRegisterer(reg),
		replay:   &tsdb.DBStats{Head: tsdb.NewHeadStats()},
		metadata: newMetadataStore(),
	}
	i.walSegments.Store(-1)
	i.metrics = newMetrics(reg, i.openDB.Load)
	i.metrics.seriesLimit.Set(float64(cfg.Limits.MaxSeries))
	i.metrics.seriesPerMetric.Set(float64(cfg.Limits.MaxSeriesPerMetric))
	return i, nil
}

// Run opens the TSDB in the configured storage path, creating it if needed,
// and replays its WAL, so every push acknowledged before a restart or a
// crash is queryable again; Ready reports the replay's progress meanwhile.
// Then it serves until ctx ends. Then it refuses new requests with
// Unavailable, waits for the in-flight ones, and closes the TSDB, writing a
// snapshot of the head so that the next start needs no WAL replay. Run
// returns nil after a clean stop; it may be called only once. A TSDB that
// fails to open is an error: ctx ending during the replay waits for it.
func (i *Ingester) Run(ctx context.Context) error {
	if !i.started.CompareAndSwap(false, true) {
		return errors.New("ingester already ran: Run may be called only once")
	}
	db, err := i.open()
	if err != nil {
		i.mtx.Lock()
		i.closed = true
		i.mtx.Unlock()
		return err
	}

	var syncer *walSyncer
	stopSyncer := make(chan struct{})
	syncerDone := make(chan struct{})
	if i.cfg.WALFsync {
		dirs := []string{filepath.Join(i.cfg.StoragePath, "wal")}
		if i.cfg.OutOfOrderWindow > 0 {
			dirs = append(dirs, filepath.Join(i.cfg.StoragePath, wlog.WblDirName))
		}
		syncer = newWALSyncer(dirs, i.metrics.walFsyncDuration)
		go func() {
			defer close(syncerDone)
			syncer.run(stopSyncer)
		}()
	} else {
		close(syncerDone)
	}

	i.mtx.Lock()
	i.db, i.syncer = db, syncer
	i.openDB.Store(db)
	i.mtx.Unlock()
	// From now on a new series must fit the limits; the replayed ones came
	// in whatever the limits are now.
	i.limiter.enforce.Store(true)

	<-ctx.Done()

	i.logger.Info("Stopping the ingester: refusing new requests, waiting for in-flight ones")
	i.stopping.Store(true)
	i.mtx.Lock()
	defer i.mtx.Unlock()
	// No request holds the TSDB any more, so no push waits for the syncer.
	close(stopSyncer)
	<-syncerDone
	i.closed = true
	i.db, i.syncer = nil, nil
	i.openDB.Store(nil)
	start := time.Now()
	if err := db.Close(); err != nil {
		return fmt.Errorf("close TSDB in %s: %w", i.cfg.StoragePath, err)
	}
	i.logger.Info("TSDB closed, head snapshot written", "path", i.cfg.StoragePath, "duration", time.Since(start))
	return nil
}

// open opens the TSDB. It is slow: most of it is the WAL replay.
func (i *Ingester) open() (*tsdb.DB, error) {
	opts := tsdb.DefaultOptions()
	opts.RetentionDuration = i.cfg.Retention.Milliseconds()
	opts.MaxBytes = int64(i.cfg.RetentionSize)
	// Head blocks are 2h (the TSDB's default); compaction merges them into
	// blocks of up to a tenth of the retention and at most 31 days, as
	// Prometheus does, so a long retention is not thousands of small blocks.
	opts.MaxBlockDuration = max(opts.MinBlockDuration, min(opts.RetentionDuration/10, (31*24*time.Hour).Milliseconds()))
	opts.OutOfOrderTimeWindow = i.cfg.OutOfOrderWindow.Milliseconds()
	if i.cfg.StartTimestamps {
		opts.EnableSTStorage = true
		opts.FloatChunkEncoding = chunkenc.EncXOR2
		opts.EnableHistogramSTEncoding = true
	}
	opts.EnableExemplarStorage = i.cfg.MaxExemplars > 0
	opts.MaxExemplars = int64(i.cfg.MaxExemplars)
	// A clean shutdown writes the head's chunks to a snapshot, so the next
	// start loads it instead of replaying the whole WAL.
	opts.EnableMemorySnapshotOnShutdown = true
	opts.SeriesLifecycleCallback = i.limiter

	walDir := filepath.Join(i.cfg.StoragePath, "wal")
	first, last, err := wlog.Segments(walDir)
	segments := 0
	if err == nil && last >= 0 {
		segments = last - first + 1
	}
	i.walSegments.Store(int64(segments))
	i.logger.Info("Opening TSDB, replaying its WAL", "path", i.cfg.StoragePath, "wal_segments", segments)
	start := time.Now()
	db, err := tsdb.Open(i.cfg.StoragePath, i.logger, i.tsdbReg, opts, i.replay)
	if err != nil {
		return nil, fmt.Errorf("open TSDB in %s: %w", i.cfg.StoragePath, err)
	}
	// The TSDB logs each WAL segment as it replays it ("WAL segment
	// loaded", segment i of maxSegment); this is the total.
	i.logger.Info("TSDB opened, WAL replayed", "path", i.cfg.StoragePath,
		"duration", time.Since(start), "wal_segments", segments,
		"head_series", db.Head().NumSeries(), "blocks", len(db.Blocks()))
	return db, nil
}

// Ready returns nil while the ingester serves: once Run has opened the TSDB
// and until Run's context ends. Otherwise it says why not, with the WAL
// replay's progress while Run opens the TSDB.
func (i *Ingester) Ready() error {
	if i.stopping.Load() {
		return errStopping
	}
	// Serving, Ready takes no lock: once Run has set stopping it waits for
	// mtx, and a read lock taken behind it would wait for every in-flight
	// request, one of which may be waiting for this caller.
	if i.openDB.Load() != nil {
		return nil
	}
	i.mtx.RLock()
	defer i.mtx.RUnlock()
	return i.notServingLocked()
}

// notServingLocked returns why requests cannot be served, or nil. The caller
// holds mtx.
func (i *Ingester) notServingLocked() error {
	switch {
	case i.db != nil:
		return nil
	case i.closed:
		return errClosed
	case !i.started.Load():
		return fmt.Errorf("%w: not running yet", errStarting)
	}
	// The TSDB sets the status when the WAL replay begins, after it loaded
	// the head's snapshot and chunks; Current is the last segment replayed,
	// or the first one until it is. A WAL of one segment (index 0) looks
	// the same before and during its replay.
	st := i.replay.Head.WALReplayStatus.GetWALReplayStatus()
	switch segments := i.walSegments.Load(); {
	case segments < 0:
		return fmt.Errorf("%w: opening the TSDB", errStarting)
	case st == (tsdb.WALReplayStatus{}) && segments != 1:
		return fmt.Errorf("%w: loading the head's chunks, then replaying %d WAL segments", errStarting, segments)
	}
	return fmt.Errorf("%w: replaying WAL: segment %d of %d", errStarting, st.Current-st.Min+1, st.Max-st.Min+1)
}

// acquire holds the TSDB open for one request. On success the caller must
// call release when done. (A returned closure would allocate on every
// push.)
func (i *Ingester) acquire() (*tsdb.DB, error) {
	if i.stopping.Load() {
		return nil, errStopping
	}
	i.mtx.RLock()
	if err := i.notServingLocked(); err != nil {
		i.mtx.RUnlock()
		return nil, err
	}
	return i.db, nil
}

// release ends what a successful acquire began.
func (i *Ingester) release() { i.mtx.RUnlock() }

// teeRegisterer registers every collector on its own registry, which the
// ingester gathers from, and on the caller's registerer, if any.
type teeRegisterer struct {
	local *prometheus.Registry
	outer prometheus.Registerer
}

var _ prometheus.Registerer = (*teeRegisterer)(nil)

func newTeeRegisterer(outer prometheus.Registerer) *teeRegisterer {
	return &teeRegisterer{local: prometheus.NewRegistry(), outer: outer}
}

// Register registers c on both, or on neither.
func (t *teeRegisterer) Register(c prometheus.Collector) error {
	if err := t.local.Register(c); err != nil {
		return err
	}
	if t.outer != nil {
		if err := t.outer.Register(c); err != nil {
			t.local.Unregister(c)
			return err
		}
	}
	return nil
}

// MustRegister registers cs, panicking on the first failure as
// prometheus.Registry does.
func (t *teeRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := t.Register(c); err != nil {
			panic(err)
		}
	}
}

// Unregister unregisters c from both.
func (t *teeRegisterer) Unregister(c prometheus.Collector) bool {
	ok := t.local.Unregister(c)
	if t.outer != nil {
		ok = t.outer.Unregister(c) && ok
	}
	return ok
}
