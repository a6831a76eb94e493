// Package ingester is the gRPC storage server of Census: it appends pushed
// series to a Prometheus TSDB (head, WAL and local blocks) and answers
// queries over them with the TSDB's own chunks.
package ingester

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
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

	// statDisk reads the space of the storage volume; tests replace it
	// before Run.
	statDisk func(path string) (diskSpace, error)
	// diskFull is the refusal of every push while the storage volume has
	// less free space than --storage.min-free-bytes or the TSDB is open
	// read-only, nil while pushes are taken. checkDisk sets and clears it;
	// every push and Ready read it without a lock.
	diskFull atomic.Pointer[diskFullError]
	// inflightPushes counts the pushes being worked on, for
	// --ingester.max-inflight-push-requests.
	inflightPushes atomic.Int64
	// inflightPushBytes sums the request sizes of the pushes being worked
	// on, for --ingester.max-inflight-push-bytes.
	inflightPushBytes atomic.Int64
	// appendSlots holds a token per push appending (appendPush); nil: no
	// limit.
	appendSlots chan struct{}
	// queryAppendSlots holds a second token per push appending while
	// queries read (queries > 0), so that pushes leave cores to them; nil:
	// no such limit.
	queryAppendSlots chan struct{}
	// queries counts the reads of the TSDB in flight (queryStream and the
	// label and series requests).
	queries atomic.Int64
	// readOnly is set while db is a read-only mirror of the storage path
	// (mirrorStorage), opened because the volume was full at start.
	readOnly atomic.Bool
	// reopenc wakes Run to reopen the TSDB for writes once a read-only
	// start has room again; capacity 1.
	reopenc chan struct{}

	// leaving is set once a decommission began: pushes and handed-off
	// blocks are refused. handOffMu is held for reading by every block
	// being received and for writing while leaving is set, so a block is
	// either refused or in the TSDB before the decommission lists its
	// blocks.
	leaving   atomic.Bool
	handOffMu sync.RWMutex

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
		statDisk: statDisk,
		reopenc:  make(chan struct{}, 1),
	}
	switch n := cfg.Limits.MaxConcurrentAppends; {
	case n == 0:
		i.appendSlots = make(chan struct{}, 2*runtime.GOMAXPROCS(0))
	case n > 0:
		i.appendSlots = make(chan struct{}, n)
	}
	switch n := cfg.Limits.MaxConcurrentAppendsDuringQueries; {
	case n == 0:
		i.queryAppendSlots = make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2))
	case n > 0:
		i.queryAppendSlots = make(chan struct{}, n)
	}
	i.walSegments.Store(-1)
	i.metrics = newMetrics(reg, i.openDB.Load, &i.queries)
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
//
// While serving, Run reads the free space of the storage volume every
// diskCheckInterval: below --storage.min-free-bytes pushes are refused
// (diskFullError) and queries go on, until there is room again. A start on
// a volume below the reserve opens the TSDB read-only, on a mirror of the
// storage path whose own writes go to the temporary directory, since the
// WAL replay writes head chunks and the TSDB panics when that fails; once
// there is room, Run closes it and reopens the storage path for writes.
func (i *Ingester) Run(ctx context.Context) error {
	if !i.started.CompareAndSwap(false, true) {
		return errors.New("ingester already ran: Run may be called only once")
	}
	fail := func(err error) error {
		i.mtx.Lock()
		i.closed = true
		i.mtx.Unlock()
		return err
	}
	if err := os.MkdirAll(i.cfg.StoragePath, 0o777); err != nil {
		return fail(fmt.Errorf("create storage path: %w", err))
	}
	// A volume whose space cannot be read opens for writes, as before.
	space, err := i.statDisk(i.cfg.StoragePath)
	readOnly := err == nil && space.free < reserveFor(i.cfg.MinFreeBytes, space.total)
	i.readOnly.Store(readOnly)
	i.checkDisk(nil)

	var (
		db      *tsdb.DB
		sandbox string // The mirror of a read-only TSDB, removed once it closed.
		syncer  *runningSyncer
	)
	if readOnly {
		db, sandbox, err = i.openReadOnly()
	} else {
		db, err = i.open(i.cfg.StoragePath, false)
	}
	if err != nil {
		return fail(err)
	}
	if !readOnly {
		syncer = i.startSyncer()
	}
	i.publish(db, syncer)

	stopWatch, watchDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watchDone)
		i.watchDisk(stopWatch)
	}()
	defer func() {
		close(stopWatch)
		<-watchDone
	}()

serve:
	for {
		select {
		case <-ctx.Done():
			break serve
		case <-i.reopenc:
			// A wake that came while a reopen ran, or room that went
			// again, leaves the TSDB as it is.
			if !i.readOnly.Load() || !i.hasRoom() {
				continue
			}
			if db, syncer, err = i.reopenForWrites(db, sandbox); err != nil {
				return fail(err)
			}
			sandbox = ""
		}
	}

	i.logger.Info("Stopping the ingester: refusing new requests, waiting for in-flight ones")
	i.stopping.Store(true)
	i.mtx.Lock()
	defer i.mtx.Unlock()
	// No request holds the TSDB any more, so no push waits for the syncer.
	syncer.close()
	i.closed = true
	i.db, i.syncer = nil, nil
	i.openDB.Store(nil)
	start := time.Now()
	err = db.Close()
	if sandbox != "" {
		err = errors.Join(err, os.RemoveAll(sandbox))
	}
	if err != nil {
		return fmt.Errorf("close TSDB in %s: %w", i.cfg.StoragePath, err)
	}
	if sandbox != "" {
		i.logger.Info("Read-only TSDB closed", "path", i.cfg.StoragePath, "duration", time.Since(start))
		return nil
	}
	i.logger.Info("TSDB closed, head snapshot written", "path", i.cfg.StoragePath, "duration", time.Since(start))
	return nil
}

// publish makes db serve requests, and syncer fsync pushes if not nil.
func (i *Ingester) publish(db *tsdb.DB, syncer *runningSyncer) {
	i.mtx.Lock()
	i.db = db
	i.syncer = nil
	if syncer != nil {
		i.syncer = syncer.walSyncer
	}
	i.openDB.Store(db)
	i.mtx.Unlock()
	// From now on a new series must fit the limits; the replayed ones came
	// in whatever the limits are now.
	i.limiter.enforce.Store(true)
}

// runningSyncer is a walSyncer with the goroutine that runs it.
type runningSyncer struct {
	*walSyncer
	stopc, donec chan struct{}
}

// startSyncer starts the WAL syncer of --storage.wal-fsync; nil without it.
func (i *Ingester) startSyncer() *runningSyncer {
	if !i.cfg.WALFsync {
		return nil
	}
	dirs := []string{filepath.Join(i.cfg.StoragePath, "wal")}
	if i.cfg.OutOfOrderWindow > 0 {
		dirs = append(dirs, filepath.Join(i.cfg.StoragePath, wlog.WblDirName))
	}
	s := &runningSyncer{walSyncer: newWALSyncer(dirs, i.metrics.walFsyncDuration), stopc: make(chan struct{}), donec: make(chan struct{})}
	go func() {
		defer close(s.donec)
		s.run(s.stopc)
	}()
	return s
}

// close stops s; no push may be waiting for it. A nil s is a no-op.
func (s *runningSyncer) close() {
	if s == nil {
		return
	}
	close(s.stopc)
	<-s.donec
}

// openReadOnly opens the TSDB of the storage path without writing to its
// volume: on a mirror in the temporary directory (mirrorStorage), with
// compaction off (see open for the rest). It returns the mirror's
// directory, which the caller removes once db closed.
func (i *Ingester) openReadOnly() (db *tsdb.DB, sandbox string, err error) {
	// One name per storage path, so that a read-only start after a crash
	// of one removes the mirror the crashed process left behind.
	abs, err := filepath.Abs(i.cfg.StoragePath)
	if err != nil {
		return nil, "", err
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(abs))
	sandbox = filepath.Join(os.TempDir(), fmt.Sprintf("census-read-only-tsdb-%016x", h.Sum64()))
	if err := os.RemoveAll(sandbox); err != nil {
		return nil, "", fmt.Errorf("remove the mirror of an earlier read-only start: %w", err)
	}
	if err := os.Mkdir(sandbox, 0o777); err != nil {
		return nil, "", fmt.Errorf("create the directory of a read-only TSDB: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(sandbox) // Links and files of our own only.
		}
	}()
	if err := mirrorStorage(i.cfg.StoragePath, sandbox); err != nil {
		return nil, "", fmt.Errorf("mirror %s into %s to open it read-only: %w", i.cfg.StoragePath, sandbox, err)
	}
	i.logger.Warn("Storage volume full: opening the TSDB read-only, through a mirror whose writes go to the temporary directory",
		"path", i.cfg.StoragePath, "mirror", sandbox)
	db, err = i.open(sandbox, true)
	if err != nil {
		return nil, "", err
	}
	// Compaction would write blocks into the mirror; the first one would
	// run a minute after Open, so nothing has been compacted yet.
	db.DisableCompactions()
	return db, sandbox, nil
}

// reopenForWrites closes the read-only TSDB db and its mirror and opens the
// storage path for writes, replaying its WAL again: meanwhile requests
// fail with Unavailable and Ready reports the replay.
func (i *Ingester) reopenForWrites(db *tsdb.DB, sandbox string) (*tsdb.DB, *runningSyncer, error) {
	i.logger.Info("Storage volume has room again: reopening the TSDB for writes", "path", i.cfg.StoragePath)
	i.mtx.Lock()
	i.db = nil
	i.openDB.Store(nil)
	i.replay = &tsdb.DBStats{Head: tsdb.NewHeadStats()}
	i.walSegments.Store(-1)
	err := db.Close()
	i.mtx.Unlock()
	if err := errors.Join(err, os.RemoveAll(sandbox)); err != nil {
		i.logger.Warn("Closing the read-only TSDB failed", "mirror", sandbox, "err", err)
	}
	i.limiter.enforce.Store(false)
	db, err = i.open(i.cfg.StoragePath, false)
	if err != nil {
		return nil, nil, err
	}
	syncer := i.startSyncer()
	i.publish(db, syncer)
	i.readOnly.Store(false)
	i.checkDisk(nil)
	return db, syncer, nil
}

// watchDisk reads the volume's space every diskCheckInterval until stopc
// is closed.
func (i *Ingester) watchDisk(stopc <-chan struct{}) {
	t := time.NewTicker(diskCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-stopc:
			return
		case <-t.C:
			i.checkDisk(nil)
		}
	}
}

// hasRoom reports whether the storage volume has the reserve free.
func (i *Ingester) hasRoom() bool {
	space, err := i.statDisk(i.cfg.StoragePath)
	return err == nil && space.free >= reserveFor(i.cfg.MinFreeBytes, space.total)
}

// checkDisk reads the free space of the storage volume and refuses pushes
// while it is below the reserve, the TSDB is read-only, or cause, a write
// that failed for lack of room, says so; else it takes them again. A
// read-only TSDB with room again wakes Run to reopen it for writes.
func (i *Ingester) checkDisk(cause error) {
	space, err := i.statDisk(i.cfg.StoragePath)
	if err != nil {
		i.logger.Warn("Reading the free space of the storage volume failed", "err", err)
		if cause == nil {
			return
		}
	}
	reserve := reserveFor(i.cfg.MinFreeBytes, space.total)
	i.metrics.storageFree.Set(float64(space.free))
	i.metrics.storageReserve.Set(float64(reserve))
	readOnly := i.readOnly.Load()
	if space.free >= reserve && !readOnly && cause == nil {
		if prev := i.diskFull.Swap(nil); prev != nil {
			i.logger.Info("Storage volume has room again: accepting pushes", "path", i.cfg.StoragePath,
				"free_bytes", space.free, "min_free_bytes", reserve)
		}
		i.metrics.diskFull.Set(0)
		return
	}
	e := &diskFullError{path: i.cfg.StoragePath, free: space.free, reserve: reserve, readOnly: readOnly, cause: cause}
	if prev := i.diskFull.Swap(e); prev == nil {
		i.logger.Warn("Storage volume full: refusing pushes, serving queries", "path", i.cfg.StoragePath,
			"free_bytes", space.free, "min_free_bytes", reserve, "read_only", readOnly, "err", cause)
	}
	i.metrics.diskFull.Set(1)
	if readOnly && space.free >= reserve {
		select {
		case i.reopenc <- struct{}{}:
		default: // Run has been woken already.
		}
	}
}

// open opens the TSDB in dir: the storage path, or with readOnly its
// mirror. It is slow: most of it is the WAL replay. A read-only TSDB
// registers no metrics (the TSDB that replaces it registers them), counts
// its series in a limiter of its own (that one counts them again), and
// neither loads nor writes a head snapshot: the snapshot of its close
// would go to the temporary directory, as big as the head's open chunks,
// and the WAL and the head chunks hold everything without it.
func (i *Ingester) open(dir string, readOnly bool) (*tsdb.DB, error) {
	var (
		reg    prometheus.Registerer        = i.tsdbReg
		series tsdb.SeriesLifecycleCallback = i.limiter
	)
	if readOnly {
		reg, series = nil, newLimiter(i.cfg.Limits)
	}
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
	opts.EnableMemorySnapshotOnShutdown = !readOnly
	opts.SeriesLifecycleCallback = series
	// Blocks handed off by decommissioning ingesters appear in the
	// directory; HandOffBlock acknowledges one once the TSDB loaded it.
	opts.BlockReloadInterval = blockReloadInterval

	walDir := filepath.Join(dir, "wal")
	first, last, err := wlog.Segments(walDir)
	segments := 0
	if err == nil && last >= 0 {
		segments = last - first + 1
	}
	i.walSegments.Store(int64(segments))
	i.logger.Info("Opening TSDB, replaying its WAL", "path", dir, "wal_segments", segments)
	start := time.Now()
	db, err := tsdb.Open(dir, i.logger, reg, opts, i.replay)
	if err != nil {
		return nil, fmt.Errorf("open TSDB in %s: %w", dir, err)
	}
	// The TSDB logs each WAL segment as it replays it ("WAL segment
	// loaded", segment i of maxSegment); this is the total.
	i.logger.Info("TSDB opened, WAL replayed", "path", dir,
		"duration", time.Since(start), "wal_segments", segments,
		"head_series", db.Head().NumSeries(), "blocks", len(db.Blocks()))
	return db, nil
}

// Ready returns nil while the ingester serves: once Run has opened the TSDB
// and until Run's context ends. Otherwise it says why not, with the WAL
// replay's progress while Run opens the TSDB. While the storage volume is
// full it returns the diskFullError that refuses pushes, naming the volume
// and its free bytes, though queries are served: /ready answers 503 and
// says why. (The ring does not read Ready: queriers still ask this ingester,
// and distributors count its refused pushes as failed replicas.)
func (i *Ingester) Ready() error {
	if i.stopping.Load() {
		return errStopping
	}
	// Serving, Ready takes no lock: once Run has set stopping it waits for
	// mtx, and a read lock taken behind it would wait for every in-flight
	// request, one of which may be waiting for this caller.
	if i.openDB.Load() != nil {
		if e := i.diskFull.Load(); e != nil {
			return e
		}
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
