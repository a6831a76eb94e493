package ingester

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/tsdb/wlog"
)

// walSyncer makes committed pushes durable against a machine crash, with one
// fsync shared by every push that waits at the same time (group commit).
//
// Why it works: the TSDB does not fsync per commit and does not expose its
// WAL, but Commit returns only after the commit's records were written to
// the WAL's segment files with write(2) (wlog.WL.Log flushes the page of the
// final record of every batch). fsync(2) flushes every dirty page of a file,
// whichever descriptor wrote it, so fsyncing the segments from the one the
// previous round saw as newest up to the newest one now covers every commit
// that finished before this round listed the directory. The TSDB fsyncs a
// full segment itself only asynchronously when it starts the next one, so
// a round fsyncs every segment since the last round, not only the newest,
// and the directory too when a segment was created, so that the new file's
// name survives a crash as well.
type walSyncer struct {
	dirs     []string // WAL and, with an out-of-order window, WBL directories.
	duration prometheus.Observer

	wakec chan struct{} // Wakes run; capacity 1.

	mtx     sync.Mutex // Guards pending and stopped.
	pending *syncRound // The round the next caller joins, not yet started.
	stopped bool

	// Used by run only.
	synced map[string]*syncedSegment
}

// syncRound is one fsync shared by every push that joined it.
type syncRound struct {
	done chan struct{} // Closed once err is set.
	err  error
}

// syncedSegment is the newest segment of a directory a round fsynced, kept
// open for the next round.
type syncedSegment struct {
	index int
	f     *os.File
}

func newWALSyncer(dirs []string, duration prometheus.Observer) *walSyncer {
	return &walSyncer{
		dirs:     dirs,
		duration: duration,
		wakec:    make(chan struct{}, 1),
		synced:   map[string]*syncedSegment{},
	}
}

// sync returns once every WAL record written before it was called is on
// disk. The caller's commit is durable when sync returns nil; if ctx ends
// first, the commit may or may not be durable.
func (s *walSyncer) sync(ctx context.Context) error {
	s.mtx.Lock()
	if s.stopped {
		s.mtx.Unlock()
		return errClosed
	}
	r := s.pending
	if r == nil {
		r = &syncRound{done: make(chan struct{})}
		s.pending = r
	}
	s.mtx.Unlock()
	select {
	case s.wakec <- struct{}{}:
	default: // run is awake already and will take r.
	}
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run fsyncs rounds until stopc is closed. The caller must make sure no
// sync is waiting when it closes stopc.
func (s *walSyncer) run(stopc <-chan struct{}) {
	defer s.closeFiles()
	for {
		select {
		case <-stopc:
			s.mtx.Lock()
			s.stopped = true
			r := s.pending
			s.pending = nil
			s.mtx.Unlock()
			if r != nil {
				r.err = errClosed
				close(r.done)
			}
			return
		case <-s.wakec:
		}
		s.mtx.Lock()
		r := s.pending
		s.pending = nil
		s.mtx.Unlock()
		if r == nil {
			continue
		}
		start := time.Now()
		r.err = s.syncDirs()
		s.duration.Observe(time.Since(start).Seconds())
		close(r.done)
	}
}

func (s *walSyncer) syncDirs() error {
	for _, dir := range s.dirs {
		if err := s.syncDir(dir); err != nil {
			return err
		}
	}
	return nil
}

// syncDir fsyncs the segments of dir from the newest one the previous round
// saw to the newest one now, and dir itself if a segment appeared.
func (s *walSyncer) syncDir(dir string) error {
	first, last, err := wlog.Segments(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // No WBL until the first out-of-order sample.
	}
	if err != nil {
		return fmt.Errorf("list WAL segments in %s: %w", dir, err)
	}
	if last < 0 {
		return nil
	}
	prev := s.synced[dir]
	from := last
	if prev != nil {
		from = max(first, min(prev.index, last))
	}
	for k := from; k <= last; k++ {
		if prev != nil && prev.index == k {
			if err := prev.f.Sync(); err != nil {
				return fmt.Errorf("fsync WAL segment %s: %w", wlog.SegmentName(dir, k), err)
			}
			continue
		}
		if err := fsyncFile(wlog.SegmentName(dir, k)); err != nil {
			return err
		}
	}
	if prev == nil || prev.index != last {
		// A new segment file: its directory entry must survive too.
		if err := fsyncFile(dir); err != nil {
			return err
		}
		f, err := os.OpenFile(wlog.SegmentName(dir, last), os.O_WRONLY, 0)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("open WAL segment to fsync: %w", err)
		}
		if prev != nil {
			_ = prev.f.Close() // Read-only use: nothing to lose.
			delete(s.synced, dir)
		}
		if f != nil {
			s.synced[dir] = &syncedSegment{index: last, f: f}
		}
	}
	return nil
}

// fsyncFile fsyncs the file or directory at path; a file the TSDB removed
// meanwhile (a truncated segment) needs nothing.
func fsyncFile(path string) error {
	flag := os.O_WRONLY
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s to fsync: %w", path, err)
	}
	err = f.Sync()
	_ = f.Close() // Nothing was written through f.
	if err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return nil
}

func (s *walSyncer) closeFiles() {
	for dir, seg := range s.synced {
		_ = seg.f.Close()
		delete(s.synced, dir)
	}
}
