package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/fileutil"
	"github.com/prometheus/prometheus/tsdb/record"
	"github.com/prometheus/prometheus/tsdb/wlog"

	"github.com/census-metrics/census/distributor"
)

// Sending: how many goroutines send, how big their batches are, how long
// a caught-up sender waits for more before it sends, and the backoff
// between attempts when the ingesters are unreachable.
const (
	numShards      = 4
	maxBatch       = 5000
	flushDelay     = 100 * time.Millisecond
	minBackoff     = 100 * time.Millisecond
	maxBackoff     = 5 * time.Second
	readTimeout    = time.Second      // Read the WAL at least this often, notified or not.
	metadataResend = 10 * time.Minute // Send each series' metadata again this often.
)

// sender tails the agent's write-ahead log and appends what it reads
// through a storage.AppendableV2 (the distributor, which shards each
// series onto its ingesters), oldest first.
//
// One goroutine reads the WAL; numShards goroutines send, each owning the
// series whose hash falls to it, so every series is sent in order. A
// shard holds at most one batch being filled and one being sent, so memory
// is bounded however long the ingesters are gone: the reader then waits,
// and the WAL keeps what was scraped until the ingesters come back or the
// WAL's retention drops it. A batch is sent until a quorum of every
// series' replicas stored it; each attempt shards it anew, so series whose
// owners changed in the ring go to their new owners. Samples refused as
// invalid are dropped: sending them again cannot help.
//
// The position up to which everything was stored is written to a file at
// every point where all shards are idle, so a restarted agent resumes from
// there: nothing is lost, and little is sent twice (an ingester takes an
// identical sample again without complaint).
type sender struct {
	walDir  string
	posFile string
	app     storage.AppendableV2
	logger  *slog.Logger
	metrics *metrics

	notify chan struct{}
	shards [numShards]*shard

	// The fields below belong to the reading goroutine.
	series     map[chunks.HeadSeriesRef]*seriesEntry
	dec        record.Decoder
	checkpoint int       // Index of the last checkpoint whose series were read.
	saved      position  // Where the last run stopped; records before it are not sent.
	firstQueue time.Time // When the oldest sample not yet handed to a shard was read.
	// Scratch buffers of the decoder.
	seriesBuf     []record.RefSeries
	samplesBuf    []record.RefSample
	histBuf       []record.RefHistogramSample
	floatHistBuf  []record.RefFloatHistogramSample
	exemplarsBuf  []record.RefExemplar
	metadataBuf   []record.RefMetadata
	checkpointBuf []record.RefSeries
}

// seriesEntry is a series of the WAL. labels and hash never change; ref
// belongs to the series' shard; the rest to the reader.
type seriesEntry struct {
	labels labels.Labels
	hash   uint64
	// ref is what the appendable returned for the series, handed back so
	// the distributor neither re-validates nor re-hashes it.
	ref     storage.SeriesRef
	created int // Segment of its series record, for garbage collection.
	// lastQueued is the newest timestamp handed to a shard: a checkpoint
	// read again after a truncation sends nothing twice.
	lastQueued int64
	// meta is its newest metadata, sent with its next sample when
	// metaEpoch is behind the reader's.
	meta      *metadata.Metadata
	metaEpoch uint64
	// Where its newest queued sample is, for its exemplars: the index in
	// its shard's batch being filled, valid while the shard's gen is
	// lastGen.
	lastIndex int
	lastGen   uint64
}

// item is one sample to send.
type item struct {
	series    *seriesEntry
	st, t     int64
	v         float64
	h         *histogram.Histogram
	fh        *histogram.FloatHistogram
	exemplars []exemplar.Exemplar
	meta      *metadata.Metadata
}

// position is a point in the WAL: a segment and a byte offset in it.
type position struct {
	Segment int   `json:"segment"`
	Offset  int64 `json:"offset"`
}

func (p position) before(q position) bool {
	return p.Segment < q.Segment || (p.Segment == q.Segment && p.Offset < q.Offset)
}

// shard sends the batches of the series whose hash falls to it.
type shard struct {
	filling []item // Belongs to the reader.
	gen     uint64 // Counts hand-offs from 1, so a seriesEntry's lastGen can go stale.
	work    chan []item
	free    chan []item
	// Oldest timestamp in the batch being filled and in the one being
	// sent, math.MaxInt64 when empty, for the oldest unsent sample's age.
	fillingOldest, sendingOldest atomic.Int64
	queued                       atomic.Int64 // Samples filling and sending.
}

func newSender(walDir, posFile string, app storage.AppendableV2, logger *slog.Logger, m *metrics) *sender {
	s := &sender{
		walDir:     walDir,
		posFile:    posFile,
		app:        app,
		logger:     logger,
		metrics:    m,
		notify:     make(chan struct{}, 1),
		series:     map[chunks.HeadSeriesRef]*seriesEntry{},
		dec:        record.NewDecoder(labels.NewSymbolTable(), logger),
		checkpoint: -1,
	}
	for i := range s.shards {
		sh := &shard{work: make(chan []item), free: make(chan []item, 1), gen: 1}
		sh.fillingOldest.Store(math.MaxInt64)
		sh.sendingOldest.Store(math.MaxInt64)
		s.shards[i] = sh
	}
	return s
}

// Notify tells the sender the WAL has new records; it never blocks. The
// agent's storage calls it after every commit.
func (s *sender) Notify() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// oldestUnsent returns the timestamp of the oldest sample read but not yet
// stored, and false when there is none.
func (s *sender) oldestUnsent() (int64, bool) {
	oldest := int64(math.MaxInt64)
	for _, sh := range s.shards {
		oldest = min(oldest, sh.fillingOldest.Load(), sh.sendingOldest.Load())
	}
	return oldest, oldest != math.MaxInt64
}

func (s *sender) queued() int64 {
	var n int64
	for _, sh := range s.shards {
		n += sh.queued.Load()
	}
	return n
}

// run reads and sends until stop is closed and everything read has been
// sent, or sendCtx ends. Sends give up only when sendCtx ends; what they
// had not stored stays in the WAL for the next start.
func (s *sender) run(sendCtx context.Context, stop <-chan struct{}) error {
	var wg sync.WaitGroup
	var pending sync.WaitGroup // Batches handed to shards and not yet done.
	var aborted atomic.Bool    // A send gave up: the position must not move past it.
	for _, sh := range s.shards {
		wg.Go(func() {
			for batch := range sh.work {
				if !s.deliver(sendCtx, batch) {
					aborted.Store(true)
				}
				sh.queued.Add(-int64(len(batch)))
				sh.sendingOldest.Store(math.MaxInt64)
				clear(batch)
				select {
				case sh.free <- batch[:0]:
				default:
				}
				pending.Done()
			}
		})
	}
	r := &walReader{s: s, stop: stop, sendCtx: sendCtx, pending: &pending, aborted: &aborted, metaEpoch: 1, metaEpochStart: time.Now()}
	err := r.run()
	for _, sh := range s.shards {
		close(sh.work)
	}
	wg.Wait()
	return err
}

// deliver sends batch until it is stored or refused, backing off between
// attempts, and reports false if sendCtx ended first.
func (s *sender) deliver(ctx context.Context, batch []item) bool {
	n := float64(len(batch))
	backoff := minBackoff
	for attempt := 0; ; attempt++ {
		err := s.send(ctx, batch, attempt)
		switch {
		case err == nil:
			s.metrics.sent.Add(n)
			return true
		case !errors.Is(err, distributor.ErrNoQuorum) && ctx.Err() == nil:
			// Refused as invalid or over a limit: the rest is stored.
			refused := 0
			if re, ok := errors.AsType[*distributor.RejectedError](err); ok {
				refused = re.Samples()
			}
			s.metrics.sent.Add(n - float64(refused))
			s.metrics.dropped.Add(float64(refused))
			s.logger.Warn("Samples refused; they will not be sent again", "err", err)
			return true
		}
		s.metrics.failed.Add(n)
		if ctx.Err() != nil {
			return false
		}
		if attempt == 0 || attempt%10 == 0 {
			s.logger.Warn("Cannot store samples yet; retrying", "samples", len(batch), "attempt", attempt+1, "err", err)
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff + rand.N(backoff/2)):
		}
		backoff = min(2*backoff, maxBackoff)
		s.metrics.retried.Add(n)
	}
}

// send appends batch through the appendable and commits it.
func (s *sender) send(ctx context.Context, batch []item, attempt int) error {
	if attempt > 0 {
		ctx = distributor.RetryContext(ctx)
	}
	app := s.app.AppenderV2(ctx)
	for i := range batch {
		it := &batch[i]
		opts := storage.AOptions{Exemplars: it.exemplars}
		if it.meta != nil {
			opts.Metadata = *it.meta
		}
		ref, err := app.Append(it.series.ref, it.series.labels, it.st, it.t, it.v, it.h, it.fh, opts)
		if err != nil && !errors.Is(err, (*storage.AppendPartialError)(nil)) {
			// Only storages other than the distributor refuse here.
			s.metrics.dropped.Inc()
			continue
		}
		it.series.ref = ref
	}
	return app.Commit()
}

// walReader is the reading goroutine of a sender's run.
type walReader struct {
	s        *sender
	stop     <-chan struct{}
	sendCtx  context.Context
	pending  *sync.WaitGroup
	aborted  *atomic.Bool
	pos      position // Just after the last record read.
	savedPos position // Last written to the position file.
	stopped  bool
	filling  int // Samples in the shards' batches being filled.
	// metaEpoch counts metadataResend periods from 1; metaEpochStart is
	// when the current one began.
	metaEpoch      uint64
	metaEpochStart time.Time
}

func (r *walReader) run() error {
	s := r.s
	if saved, err := loadPosition(s.posFile); err == nil {
		s.saved = saved
	} else if !errors.Is(err, os.ErrNotExist) {
		s.logger.Warn("Cannot read the sender's position: sending the whole WAL again", "file", s.posFile, "err", err)
	}
	seg, err := r.readCheckpoint(true)
	if err != nil {
		return err
	}
	for {
		done, err := r.readSegment(seg)
		if done || err != nil {
			return err
		}
		next, err := r.nextSegment(seg)
		if err != nil {
			return err
		}
		seg = next
	}
}

// readCheckpoint reads the newest checkpoint: its series, and its samples
// too when they may not have been sent (at start without a position before
// it, or when the segment to read next was truncated into it). It returns
// the first segment after it.
func (r *walReader) readCheckpoint(atStart bool) (int, error) {
	s := r.s
	dir, idx, err := wlog.LastCheckpoint(s.walDir)
	if errors.Is(err, record.ErrNotFound) {
		first, _, err := wlog.Segments(s.walDir)
		return first, err
	}
	if err != nil {
		return 0, fmt.Errorf("find the WAL's last checkpoint: %w", err)
	}
	sendSamples := !atStart || s.saved.Segment <= idx
	if err := r.readCheckpointDir(dir, idx, sendSamples); err != nil {
		return 0, err
	}
	first, _, err := wlog.Segments(s.walDir)
	if err != nil {
		return 0, err
	}
	return max(first, idx+1), nil
}

func (r *walReader) readCheckpointDir(dir string, idx int, sendSamples bool) error {
	s := r.s
	sr, err := wlog.NewSegmentsReader(dir)
	if err != nil {
		return fmt.Errorf("open WAL checkpoint %s: %w", dir, err)
	}
	defer sr.Close()
	rd := wlog.NewReader(sr)
	for rd.Next() {
		if err := r.handle(rd.Record(), idx, !sendSamples); err != nil {
			return fmt.Errorf("read WAL checkpoint %s: %w", dir, err)
		}
	}
	if err := rd.Err(); err != nil {
		return fmt.Errorf("read WAL checkpoint %s: %w", dir, err)
	}
	s.checkpoint = idx
	return nil
}

// nextSegment returns the segment after seg, collecting the series of a
// new checkpoint first. When truncation removed it, it sends what the
// checkpoint kept of it instead.
func (r *walReader) nextSegment(seg int) (int, error) {
	s := r.s
	next := seg + 1
	first, _, err := wlog.Segments(s.walDir)
	if err != nil {
		return 0, err
	}
	if next < first {
		s.logger.Warn("WAL segments were truncated before they were sent; sending what their checkpoint kept", "segment", next, "first", first)
		return r.readCheckpoint(false)
	}
	if err := r.collectSeries(); err != nil {
		s.logger.Warn("Cannot collect the series the WAL dropped", "err", err)
	}
	return next, nil
}

// collectSeries forgets the series a new checkpoint no longer holds: the
// agent's storage dropped them for having no sample within its retention.
func (r *walReader) collectSeries() error {
	s := r.s
	dir, idx, err := wlog.LastCheckpoint(s.walDir)
	if errors.Is(err, record.ErrNotFound) || (err == nil && idx <= s.checkpoint) {
		return nil
	}
	if err != nil {
		return err
	}
	sr, err := wlog.NewSegmentsReader(dir)
	if err != nil {
		return err
	}
	defer sr.Close()
	keep := map[chunks.HeadSeriesRef]struct{}{}
	rd := wlog.NewReader(sr)
	for rd.Next() {
		if s.dec.Type(rd.Record()) != record.Series {
			continue
		}
		s.checkpointBuf, err = s.dec.Series(rd.Record(), s.checkpointBuf[:0])
		if err != nil {
			return err
		}
		for _, rs := range s.checkpointBuf {
			keep[rs.Ref] = struct{}{}
		}
	}
	if err := rd.Err(); err != nil {
		return err
	}
	for ref, e := range s.series {
		if _, ok := keep[ref]; !ok && e.created <= idx {
			delete(s.series, ref)
		}
	}
	s.checkpoint = idx
	return nil
}

// readSegment reads segment seg to its end, then, while it is the newest,
// waits for more. It reports done once stop is closed and everything read
// was sent.
func (r *walReader) readSegment(seg int) (done bool, _ error) {
	s := r.s
	f, err := wlog.OpenReadSegment(wlog.SegmentName(s.walDir, seg))
	if err != nil {
		return false, fmt.Errorf("open WAL segment %d: %w", seg, err)
	}
	defer f.Close()
	rd := wlog.NewLiveReader(s.logger, nil, f)
	r.pos = position{Segment: seg}
	readAll := func() error {
		for rd.Next() {
			next := position{Segment: seg, Offset: rd.Offset()}
			// Records up to where the last run stopped were sent: only
			// their series and metadata matter.
			if err := r.handle(rd.Record(), seg, !s.saved.before(next)); err != nil {
				return fmt.Errorf("read WAL segment %d: %w", seg, err)
			}
			r.pos = next
		}
		if err := rd.Err(); !errors.Is(err, io.EOF) {
			return fmt.Errorf("read WAL segment %d: %w", seg, err)
		}
		return nil
	}
	for {
		if err := readAll(); err != nil {
			return false, err
		}
		_, last, err := wlog.Segments(s.walDir)
		if err != nil {
			return false, err
		}
		if last > seg {
			// A newer segment exists, so nothing more is written to this
			// one: read what came in since, and move on.
			return false, readAll()
		}
		if r.stopped {
			r.flushAll()
			r.barrier()
			return true, nil
		}
		if time.Since(r.metaEpochStart) >= metadataResend {
			r.metaEpoch++
			r.metaEpochStart = time.Now()
		}
		wait := readTimeout
		if r.filling > 0 {
			if since := time.Since(s.firstQueue); since >= flushDelay {
				r.flushAll()
				r.barrier()
			} else {
				wait = flushDelay - since
			}
		}
		select {
		case <-s.notify:
		case <-time.After(wait):
		case <-r.stop:
			// Read what the last scrapes wrote, send it, and stop.
			r.stopped = true
		case <-r.sendCtx.Done():
			return true, nil
		}
	}
}

// handle decodes one WAL record and queues its samples, unless seriesOnly.
func (r *walReader) handle(rec []byte, seg int, seriesOnly bool) error {
	s := r.s
	var err error
	switch s.dec.Type(rec) {
	case record.Series:
		if s.seriesBuf, err = s.dec.Series(rec, s.seriesBuf[:0]); err != nil {
			return err
		}
		for _, rs := range s.seriesBuf {
			if e, ok := s.series[rs.Ref]; ok {
				e.created = max(e.created, seg)
				continue
			}
			s.series[rs.Ref] = &seriesEntry{labels: rs.Labels, hash: distributor.SeriesHash(rs.Labels), created: seg, lastQueued: math.MinInt64}
		}
	case record.Metadata:
		if s.metadataBuf, err = s.dec.Metadata(rec, s.metadataBuf[:0]); err != nil {
			return err
		}
		for _, m := range s.metadataBuf {
			if e, ok := s.series[m.Ref]; ok {
				e.meta = &metadata.Metadata{Type: record.ToMetricType(m.Type), Unit: m.Unit, Help: m.Help}
				e.metaEpoch = 0 // Send it with the next sample.
			}
		}
	case record.Samples, record.SamplesV2:
		if seriesOnly {
			return nil
		}
		if s.samplesBuf, err = s.dec.Samples(rec, s.samplesBuf[:0]); err != nil {
			return err
		}
		for _, smp := range s.samplesBuf {
			r.queue(smp.Ref, item{st: smp.ST, t: smp.T, v: smp.V})
		}
	case record.HistogramSamples, record.HistogramSamplesV2, record.CustomBucketsHistogramSamples:
		if seriesOnly {
			return nil
		}
		if s.histBuf, err = s.dec.HistogramSamples(rec, s.histBuf[:0]); err != nil {
			return err
		}
		for _, h := range s.histBuf {
			r.queue(h.Ref, item{st: h.ST, t: h.T, h: h.H})
		}
	case record.FloatHistogramSamples, record.FloatHistogramSamplesV2, record.CustomBucketsFloatHistogramSamples:
		if seriesOnly {
			return nil
		}
		if s.floatHistBuf, err = s.dec.FloatHistogramSamples(rec, s.floatHistBuf[:0]); err != nil {
			return err
		}
		for _, fh := range s.floatHistBuf {
			r.queue(fh.Ref, item{st: fh.ST, t: fh.T, fh: fh.FH})
		}
	case record.Exemplars:
		if seriesOnly {
			return nil
		}
		if s.exemplarsBuf, err = s.dec.Exemplars(rec, s.exemplarsBuf[:0]); err != nil {
			return err
		}
		for _, e := range s.exemplarsBuf {
			r.attachExemplar(e)
		}
	}
	return nil
}

// queue hands one sample of series ref to its shard's batch.
func (r *walReader) queue(ref chunks.HeadSeriesRef, it item) {
	s := r.s
	e, ok := s.series[ref]
	if !ok {
		// A sample without its series record: the WAL lost it.
		s.metrics.dropped.Inc()
		return
	}
	if it.t <= e.lastQueued {
		return // Sent already, before a truncation made us read it again.
	}
	e.lastQueued = it.t
	it.series = e
	if e.meta != nil && e.metaEpoch != r.metaEpoch {
		// The storage writes metadata only when it changes; sending it
		// again every metadataResend teaches ingesters that took over
		// the series since.
		it.meta, e.metaEpoch = e.meta, r.metaEpoch
	}
	sh := s.shards[e.hash%numShards]
	if r.filling == 0 {
		s.firstQueue = time.Now()
	}
	if len(sh.filling) == 0 {
		sh.fillingOldest.Store(it.t)
	} else if it.t < sh.fillingOldest.Load() {
		sh.fillingOldest.Store(it.t)
	}
	sh.filling = append(sh.filling, it)
	sh.queued.Add(1)
	r.filling++
	e.lastIndex, e.lastGen = len(sh.filling)-1, sh.gen
	if len(sh.filling) >= maxBatch {
		r.handOff(sh)
	}
}

// attachExemplar adds an exemplar to the newest queued sample of its
// series: the agent's storage logs a scrape's exemplars right after its
// samples.
func (r *walReader) attachExemplar(e record.RefExemplar) {
	s := r.s
	se, ok := s.series[e.Ref]
	if !ok || s.shards[se.hash%numShards].gen != se.lastGen {
		s.metrics.droppedExemplars.Inc()
		return
	}
	it := &s.shards[se.hash%numShards].filling[se.lastIndex]
	it.exemplars = append(it.exemplars, exemplar.Exemplar{Labels: e.Labels, Value: e.V, Ts: e.T, HasTs: true})
}

// handOff gives a shard's batch to its sending goroutine, waiting while
// that one still sends the previous batch.
func (r *walReader) handOff(sh *shard) {
	batch := sh.filling
	r.filling -= len(batch)
	r.pending.Add(1)
	sh.work <- batch
	sh.sendingOldest.Store(sh.fillingOldest.Load())
	sh.fillingOldest.Store(math.MaxInt64)
	sh.gen++
	select {
	case sh.filling = <-sh.free:
	default:
		sh.filling = make([]item, 0, maxBatch)
	}
}

func (r *walReader) flushAll() {
	for _, sh := range r.s.shards {
		if len(sh.filling) > 0 {
			r.handOff(sh)
		}
	}
}

// barrier waits until every batch handed off is done, then records the
// position: everything before it is stored.
func (r *walReader) barrier() {
	s := r.s
	r.pending.Wait()
	if r.aborted.Load() || r.pos == r.savedPos {
		return
	}
	// A small write at most every flushDelay: a restart then sends again
	// only what was in flight.
	if err := savePosition(s.posFile, r.pos); err != nil {
		s.logger.Warn("Cannot write the sender's position; a restart sends more again", "file", s.posFile, "err", err)
		return
	}
	r.savedPos = r.pos
}

func loadPosition(file string) (position, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return position{}, err
	}
	var p position
	if err := json.Unmarshal(b, &p); err != nil {
		return position{}, fmt.Errorf("decode %s: %w", file, err)
	}
	return p, nil
}

// savePosition replaces file atomically and durably, so a crash leaves
// the old position or the new one: the new one is synced before the
// rename, and fileutil.Replace syncs the directory after it. A temporary
// file a crash left half written is overwritten here and never read.
func savePosition(file string, p position) (err error) {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode position: %w", err)
	}
	tmp := file + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("create temporary position file: %w", err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("write position file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync position file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close position file: %w", err)
	}
	if err := fileutil.Replace(tmp, file); err != nil {
		return fmt.Errorf("replace position file: %w", err)
	}
	return nil
}

// dirSize returns the bytes of the files under dir.
func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if info, err := d.Info(); err == nil && !d.IsDir() {
			n += info.Size()
		}
		return nil
	})
	return n
}
