package ingester

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb"

	censuspb "github.com/census-metrics/census/proto"
)

// decommissionDir, inside the storage path, holds what a decommission
// needs to resume after a kill: its state, the snapshot of the TSDB it
// hands off, and the journal of the blocks its targets acknowledged.
const decommissionDir = "decommission"

const (
	stateFile    = "state.json"
	journalFile  = "journal"
	snapshotDir  = "snapshot"
	snapshotDone = "complete"
	splitDir     = "split"
)

// Decommission states, as state.json and census_ingester_decommission_state
// say.
const (
	stateHandingOff = "handing-off"
	stateHandedOff  = "handed-off"
)

// handOffChunkBytes is the size of the data messages of a hand-off.
const handOffChunkBytes = 1 << 20

// progressLogInterval is how often a decommission logs its progress.
const progressLogInterval = 5 * time.Second

// HandOffConfig is what a decommission needs from outside the ingester:
// the ring, to find each series' new owners, and connections to them.
type HandOffConfig struct {
	// Self is this ingester's instance ID in the ring.
	Self string
	// Owners finds the ingesters each series goes to.
	Owners OwnersFunc
	// Client returns a client of the ingester at addr.
	Client func(addr string) (censuspb.IngesterClient, error)
	// SetLeaving marks this ingester LEAVING in the ring, so writers send
	// its series to their new owners while readers still ask it.
	SetLeaving func(ctx context.Context) error
}

// Decommission moves everything an ingester holds to the ingesters that
// own its series once it is gone, so that it can leave the ring for good
// (a scale-down) without losing a sample; it is the opposite of a restart,
// which keeps the data on the volume for the same ingester to replay.
//
// Started (by Start: POST /ingester/decommission, or SIGTERM when the
// StatefulSet was scaled down, or a start that finds a decommission that
// did not finish), it refuses pushes and handed-off blocks, turns the
// ingester LEAVING in the ring, waits for the pushes in flight, and writes
// a snapshot of the TSDB (its blocks and its head, as blocks) to the
// volume. Then, block by block, it splits each block by the series' new
// owners, copying chunks as they are, and streams each part to its owner,
// which acknowledges it once it is durable, verified and queryable. The
// journal on the volume records every acknowledgement, so a decommission
// killed half-way resumes where it was. The ingester serves queries all
// along; a series is then in both places for a while, which queriers
// merge as they merge replicas. When every part is acknowledged, Done is
// closed: the process then leaves the ring (LEFT) and exits, and
// RemoveData empties the volume so that a later scale-up that reuses it
// joins fresh.
type Decommission struct {
	i      *Ingester
	cfg    HandOffConfig
	logger *slog.Logger
	dir    string

	resume    bool // A decommission that did not finish was found on the volume.
	startOnce sync.Once
	started   atomic.Bool
	done      chan struct{}

	mtx      sync.Mutex
	progress DecommissionProgress
}

// DecommissionProgress is what GET /ingester/decommission reports.
type DecommissionProgress struct {
	// State is idle, handing-off or handed-off.
	State   string    `json:"state"`
	Started time.Time `json:"started,omitzero"`
	// Blocks and BlocksDone count the snapshot's blocks, and those that
	// every target of has acknowledged.
	Blocks     int `json:"blocks"`
	BlocksDone int `json:"blocks_done"`
	// Bytes and BytesDone are the same in bytes of the snapshot.
	Bytes     int64 `json:"bytes"`
	BytesDone int64 `json:"bytes_done"`
	// Targets has one entry per target instance.
	Targets map[string]*TargetProgress `json:"targets"`
	// Remaining estimates the time left from the rate so far.
	Remaining string `json:"remaining,omitempty"`
	// LastError is the last failure, retried.
	LastError string `json:"last_error,omitempty"`
}

// TargetProgress counts what was sent to one target and what it
// acknowledged: series once per block.
type TargetProgress struct {
	SeriesSent  uint64 `json:"series_sent"`
	BytesSent   uint64 `json:"bytes_sent"`
	SeriesAcked uint64 `json:"series_acked"`
	BytesAcked  uint64 `json:"bytes_acked"`
	Failures    int    `json:"failures"`
}

// NewDecommission returns the decommission of i. It reads the ingester's
// volume: a decommission that handed everything off but was killed before
// it emptied the volume is finished now (the volume is emptied), and one
// that was handing off is to resume (Resume). Call it before the ring reads
// its tokens from the storage path and before i runs.
func NewDecommission(i *Ingester, cfg HandOffConfig, logger *slog.Logger) (*Decommission, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	d := &Decommission{
		i:        i,
		cfg:      cfg,
		logger:   logger,
		dir:      filepath.Join(i.cfg.StoragePath, decommissionDir),
		done:     make(chan struct{}),
		progress: DecommissionProgress{State: "idle", Targets: map[string]*TargetProgress{}},
	}
	st, err := d.readState()
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	case st.State == stateHandedOff:
		logger.Info("This volume was handed off by a decommission; emptying it to join as a new ingester", "path", i.cfg.StoragePath)
		if err := RemoveData(i.cfg.StoragePath); err != nil {
			return nil, err
		}
	default:
		logger.Info("Found a decommission that did not finish: resuming it", "started", st.Started)
		d.resume = true
		d.progress.Started = st.Started
	}
	return d, nil
}

// Resume reports whether the volume holds a decommission to resume: the
// caller then calls Start as soon as the process runs.
func (d *Decommission) Resume() bool { return d.resume }

// Start begins the decommission, unless it began already, and returns at
// once. From then on the ingester takes no push.
func (d *Decommission) Start() {
	d.startOnce.Do(func() {
		d.started.Store(true)
		go d.run()
	})
}

// Started reports whether Start was called.
func (d *Decommission) Started() bool { return d.started.Load() }

// Done is closed once every series is handed off.
func (d *Decommission) Done() <-chan struct{} { return d.done }

// Progress returns a copy of the decommission's progress.
func (d *Decommission) Progress() DecommissionProgress {
	d.mtx.Lock()
	defer d.mtx.Unlock()
	p := d.progress
	p.Targets = maps.Clone(p.Targets)
	for id, t := range p.Targets {
		c := *t
		p.Targets[id] = &c
	}
	if p.State == stateHandingOff && p.BytesDone > 0 && p.Bytes > p.BytesDone {
		elapsed := time.Since(p.Started)
		p.Remaining = (time.Duration(float64(elapsed) * float64(p.Bytes-p.BytesDone) / float64(p.BytesDone))).Round(time.Second).String()
	}
	return p
}

// ServeHTTP serves /ingester/decommission: POST starts a decommission (or
// does nothing when one runs) and GET reports its progress, both as JSON.
func (d *Decommission) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
	case http.MethodPost:
		d.Start()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(d.Progress())
		return
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "use GET for the progress or POST to start a decommission", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(d.Progress())
}

// run hands everything off, retrying until it has. A process that must stop
// first is killed by its shutdown timeout; the journal keeps what was done.
func (d *Decommission) run() {
	ctx := context.Background()
	// A resumed decommission started when the volume says.
	start := d.Progress().Started
	if start.IsZero() {
		start = time.Now()
	}
	d.setProgress(func(p *DecommissionProgress) { p.State, p.Started = stateHandingOff, start })
	d.i.metrics.decommissionState.Set(1)
	d.logger.Info("Decommissioning: handing every series off to its new owners, then leaving the ring")

	d.retry(ctx, "write the decommission state", func() error {
		return d.writeState(decommissionState{State: stateHandingOff, Started: start})
	})
	// No push appends from here on, and no block is taken.
	d.i.handOffMu.Lock()
	d.i.leaving.Store(true)
	d.i.handOffMu.Unlock()
	leaveCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	if err := d.cfg.SetLeaving(leaveCtx); err != nil {
		d.logger.Warn("Could not gossip that this ingester is LEAVING; going on", "err", err)
	}
	cancel()

	d.retry(ctx, "snapshot the TSDB", func() error { return d.snapshot(ctx) })
	stopLog := d.logProgress()
	d.retry(ctx, "hand off the snapshot's blocks", func() error { return d.handOff(ctx) })
	stopLog()

	d.retry(ctx, "write the decommission state", func() error {
		return d.writeState(decommissionState{State: stateHandedOff, Started: start})
	})
	took := time.Since(start)
	d.setProgress(func(p *DecommissionProgress) { p.State, p.LastError = stateHandedOff, "" })
	d.i.metrics.decommissionState.Set(2)
	d.i.metrics.decommissionSeconds.Set(took.Seconds())
	p := d.Progress()
	d.logger.Info("Decommission handed every series off: leaving the ring", "duration", took, "blocks", p.Blocks, "bytes", p.Bytes)
	close(d.done)
}

// retry runs f until it succeeds, backing off from 1s to 10s between
// attempts.
func (d *Decommission) retry(ctx context.Context, what string, f func() error) {
	backoff := time.Second
	for {
		err := f()
		if err == nil {
			return
		}
		d.setProgress(func(p *DecommissionProgress) { p.LastError = err.Error() })
		d.logger.Warn("Decommission: failed to "+what+"; retrying", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// snapshot waits for the TSDB to be open and the pushes in flight to end,
// then writes every block and the head (with its out-of-order part) as
// blocks into the snapshot directory, unless a complete snapshot is there
// from before a restart.
func (d *Decommission) snapshot(ctx context.Context) error {
	dir := filepath.Join(d.dir, snapshotDir)
	if _, err := os.Stat(filepath.Join(dir, snapshotDone)); err == nil {
		return nil
	}
	db, err := d.waitOpen(ctx)
	if err != nil {
		return err
	}
	// Every push that got past the leaving check holds mtx for reading.
	d.i.release()
	// An empty critical section: taking the write lock waits for them.
	d.i.mtx.Lock()
	d.i.mtx.Unlock()
	if db, err = d.i.acquire(); err != nil {
		return err
	}
	defer d.i.release()

	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(d.dir, 0o777); err != nil {
		return err
	}
	start := time.Now()
	if d.i.cfg.OutOfOrderWindow > 0 {
		if err := db.CompactOOOHead(ctx); err != nil {
			return fmt.Errorf("compact the out-of-order head: %w", err)
		}
	}
	if err := db.Snapshot(dir, true); err != nil {
		return fmt.Errorf("snapshot the TSDB into %s: %w", dir, d.i.noSpace(err))
	}
	f, err := os.Create(filepath.Join(dir, snapshotDone))
	if err != nil {
		return err
	}
	if err := errors.Join(f.Sync(), f.Close(), syncDir(dir)); err != nil {
		return err
	}
	d.logger.Info("Decommission: TSDB snapshot written", "path", dir, "duration", time.Since(start), "head_series", db.Head().NumSeries())
	return nil
}

// waitOpen waits until the ingester serves and returns its TSDB, held open:
// the caller must release it.
func (d *Decommission) waitOpen(ctx context.Context) (*tsdb.DB, error) {
	for {
		db, err := d.i.acquire()
		if err == nil {
			return db, nil
		}
		if errors.Is(err, errStopping) || errors.Is(err, errClosed) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// handOff hands off every block of the snapshot that the journal does not
// list as acknowledged by each of its targets, asking the ring for the
// targets afresh, so a failed target's series go to whoever owns them now.
// It tries every block and target, and returns the failures.
func (d *Decommission) handOff(ctx context.Context) error {
	dir := filepath.Join(d.dir, snapshotDir)
	blocks, err := snapshotBlocks(dir)
	if err != nil {
		return err
	}
	journal, err := openJournal(filepath.Join(d.dir, journalFile))
	if err != nil {
		return err
	}
	defer journal.close()
	var total int64
	for _, b := range blocks {
		total += b.size
	}
	d.setProgress(func(p *DecommissionProgress) { p.Blocks, p.Bytes, p.BlocksDone, p.BytesDone = len(blocks), total, 0, 0 })

	split, err := newSplitter(ctx, d.logger)
	if err != nil {
		return err
	}
	owners := func(ls labels.Labels, buf []Target) ([]Target, error) {
		out, err := d.cfg.Owners(ls, buf)
		return slices.DeleteFunc(out, func(t Target) bool { return t.ID == d.cfg.Self }), err
	}
	var errs []error
	for _, sb := range blocks {
		failed, err := d.handOffBlock(ctx, split, journal, sb, owners)
		if err != nil {
			errs = append(errs, err)
		}
		if err == nil && !failed {
			d.setProgress(func(p *DecommissionProgress) { p.BlocksDone++; p.BytesDone += sb.size })
		}
	}
	return errors.Join(errs...)
}

// handOffBlock hands off one block of the snapshot to each of its targets.
// failed reports that a target did not take its part.
func (d *Decommission) handOffBlock(ctx context.Context, split *splitter, journal *journal, sb snapshotBlock, owners OwnersFunc) (failed bool, err error) {
	b, err := tsdb.OpenBlock(d.logger, sb.dir, nil, nil)
	if err != nil {
		return true, fmt.Errorf("open snapshot block %s: %w", sb.id, err)
	}
	defer b.Close()
	plan, err := planBlock(ctx, b, owners)
	if err != nil {
		return true, fmt.Errorf("plan the hand-off of block %s: %w", sb.id, err)
	}
	var errs []error
	for _, id := range slices.Sorted(maps.Keys(plan)) {
		ts := plan[id]
		if journal.has(sb.id, ts) {
			continue
		}
		if err := d.sendPart(ctx, split, b, ts); err != nil {
			d.i.metrics.handOffFailures.WithLabelValues(id).Inc()
			d.setProgress(func(p *DecommissionProgress) { p.target(id).Failures++ })
			errs = append(errs, fmt.Errorf("block %s to %s (%s): %w", sb.id, id, ts.target.Addr, err))
			continue
		}
		if err := journal.add(sb.id, ts); err != nil {
			return true, err
		}
	}
	return len(errs) > 0, errors.Join(errs...)
}

// sendPart splits off the series of b that ts.target is to own and streams
// them to it, waiting for its acknowledgement.
func (d *Decommission) sendPart(ctx context.Context, split *splitter, b *tsdb.Block, ts *targetSeries) error {
	out := filepath.Join(d.dir, splitDir)
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	defer os.RemoveAll(out)
	dir, id, err := split.split(b, ts.refs, out)
	if err != nil || dir == "" {
		return err
	}
	files, err := blockFiles(dir)
	if err != nil {
		return err
	}
	size := totalSize(files)
	client, err := d.cfg.Client(ts.target.Addr)
	if err != nil {
		return err
	}
	// A part streams at tens of MB/s; the bound is for a target that hangs.
	ctx, cancel := context.WithTimeout(ctx, time.Minute+time.Duration(size/(1<<20))*time.Second)
	defer cancel()
	stream, err := client.HandOffBlock(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&censuspb.HandOffBlockRequest{Header: &censuspb.HandOffBlockHeader{From: d.cfg.Self, BlockId: id.String(), Files: files}}); err != nil {
		return d.streamErr(stream, err)
	}
	buf := make([]byte, handOffChunkBytes)
	for n, f := range files {
		if err := sendFile(stream, uint32(n), filepath.Join(dir, filepath.FromSlash(f.GetPath())), buf); err != nil {
			return d.streamErr(stream, err)
		}
	}
	series := uint64(len(ts.refs))
	d.i.metrics.handOffSentBytes.WithLabelValues(ts.target.ID).Add(float64(size))
	d.i.metrics.handOffSentSeries.WithLabelValues(ts.target.ID).Add(float64(series))
	d.setProgress(func(p *DecommissionProgress) {
		t := p.target(ts.target.ID)
		t.SeriesSent += series
		t.BytesSent += size
	})
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	d.i.metrics.handOffAckedBytes.WithLabelValues(ts.target.ID).Add(float64(size))
	d.i.metrics.handOffAckedSeries.WithLabelValues(ts.target.ID).Add(float64(resp.GetSeries()))
	d.setProgress(func(p *DecommissionProgress) {
		t := p.target(ts.target.ID)
		t.SeriesAcked += resp.GetSeries()
		t.BytesAcked += size
	})
	return nil
}

// streamErr returns the receiver's error when a Send failed because the
// receiver ended the stream (Send then returns io.EOF).
func (d *Decommission) streamErr(stream censuspb.Ingester_HandOffBlockClient, err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := stream.CloseAndRecv(); rerr != nil {
			return rerr
		}
	}
	return err
}

func sendFile(stream censuspb.Ingester_HandOffBlockClient, n uint32, path string, buf []byte) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		k, err := io.ReadFull(f, buf)
		if k > 0 {
			if err := stream.Send(&censuspb.HandOffBlockRequest{File: n, Data: buf[:k]}); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// blockFiles lists the files of the block in dir with their sizes and
// SHA-256 digests, meta.json first so that a receiver reads the block's
// identity before its data.
func blockFiles(dir string) ([]*censuspb.HandOffFile, error) {
	var files []*censuspb.HandOffFile
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		n, err := io.Copy(h, f)
		if err != nil {
			return err
		}
		files = append(files, &censuspb.HandOffFile{Path: filepath.ToSlash(rel), Size: uint64(n), Sha256: h.Sum(nil)})
		return nil
	})
	slices.SortStableFunc(files, func(a, b *censuspb.HandOffFile) int {
		return boolInt(b.GetPath() == "meta.json") - boolInt(a.GetPath() == "meta.json")
	})
	return files, err
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// snapshotBlock is one block of the decommission's snapshot.
type snapshotBlock struct {
	id   string
	dir  string
	size int64
}

// snapshotBlocks lists the blocks in dir, oldest first.
func snapshotBlocks(dir string) ([]snapshotBlock, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []snapshotBlock
	for _, e := range entries {
		if _, err := ulid.ParseStrict(e.Name()); err != nil || !e.IsDir() {
			continue
		}
		b := snapshotBlock{id: e.Name(), dir: filepath.Join(dir, e.Name())}
		err := filepath.WalkDir(b.dir, func(_ string, de fs.DirEntry, err error) error {
			if err != nil || de.IsDir() {
				return err
			}
			info, err := de.Info()
			if err == nil {
				b.size += info.Size()
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// logProgress logs the progress every progressLogInterval until the
// returned function is called.
func (d *Decommission) logProgress() (stop func()) {
	stopc, donec := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(donec)
		tick := time.NewTicker(progressLogInterval)
		defer tick.Stop()
		for {
			select {
			case <-stopc:
				return
			case <-tick.C:
			}
			p := d.Progress()
			var sent, acked uint64
			for _, t := range p.Targets {
				sent += t.BytesSent
				acked += t.BytesAcked
			}
			d.logger.Info("Decommission progress", "blocks_done", p.BlocksDone, "blocks", p.Blocks,
				"bytes_done", p.BytesDone, "bytes", p.Bytes, "bytes_sent", sent, "bytes_acked", acked,
				"targets", len(p.Targets), "remaining", p.Remaining, "last_error", p.LastError)
		}
	}()
	return func() {
		close(stopc)
		<-donec
	}
}

func (d *Decommission) setProgress(f func(p *DecommissionProgress)) {
	d.mtx.Lock()
	defer d.mtx.Unlock()
	f(&d.progress)
}

func (p *DecommissionProgress) target(id string) *TargetProgress {
	t := p.Targets[id]
	if t == nil {
		t = &TargetProgress{}
		p.Targets[id] = t
	}
	return t
}

// decommissionState is state.json.
type decommissionState struct {
	State   string    `json:"state"`
	Started time.Time `json:"started"`
}

func (d *Decommission) readState() (decommissionState, error) {
	var st decommissionState
	b, err := os.ReadFile(filepath.Join(d.dir, stateFile))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("parse %s: %w", filepath.Join(d.dir, stateFile), err)
	}
	return st, nil
}

// writeState replaces state.json durably.
func (d *Decommission) writeState(st decommissionState) error {
	if err := os.MkdirAll(d.dir, 0o777); err != nil {
		return err
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return d.i.noSpace(replaceFile(d.dir, stateFile, b))
}

// replaceFile replaces the file name in dir with b durably: written and
// fsynced beside it, renamed over it, and the directory fsynced, so that a
// crash leaves the old file or the new one, whole.
func replaceFile(dir, name string, b []byte) error {
	tmp := filepath.Join(dir, name+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}

// RemoveData empties a storage path after a decommission: the TSDB, the
// ring tokens and the decommission's own files, state.json last, so that a
// kill half-way empties it again at the next start.
func RemoveData(path string) error {
	entries, err := os.ReadDir(path)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() == decommissionDir {
			continue
		}
		if err := os.RemoveAll(filepath.Join(path, e.Name())); err != nil {
			return err
		}
	}
	dir := filepath.Join(path, decommissionDir)
	entries, err = os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() != stateFile {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return os.RemoveAll(dir)
}

// journal lists the parts acknowledged, one per line, each appended and
// fsynced before the next part is sent. A part is named by its snapshot
// block, its target and the series in it: when the ring changes between two
// attempts, a target that took its part of a block may own more of the
// block's series than before, and must be sent its new part.
type journal struct {
	f    *os.File
	done map[string]bool
}

func openJournal(path string) (*journal, error) {
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	j := &journal{done: map[string]bool{}}
	// A line without its newline was cut by a crash before its fsync: its
	// part was not recorded, so it is sent again.
	lines := strings.Split(string(b), "\n")
	for _, line := range lines[:len(lines)-1] {
		j.done[line] = true
	}
	if last := lines[len(lines)-1]; last != "" {
		if err := os.Truncate(path, int64(len(b)-len(last))); err != nil {
			return nil, err
		}
	}
	if j.f, err = os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666); err != nil {
		return nil, err
	}
	return j, nil
}

func (j *journal) has(block string, ts *targetSeries) bool { return j.done[partKey(block, ts)] }

func (j *journal) add(block string, ts *targetSeries) error {
	key := partKey(block, ts)
	if _, err := j.f.WriteString(key + "\n"); err != nil {
		return err
	}
	if err := j.f.Sync(); err != nil {
		return err
	}
	j.done[key] = true
	return nil
}

func (j *journal) close() { j.f.Close() }

// partKey names the part ts of block in the journal.
func partKey(block string, ts *targetSeries) string {
	h := xxhash.New()
	var b [8]byte
	for _, ref := range ts.refs {
		binary.LittleEndian.PutUint64(b[:], uint64(ref))
		_, _ = h.Write(b[:])
	}
	return fmt.Sprintf("%s %s %016x", block, ts.target.ID, h.Sum64())
}
