package ingester

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// diskCheckInterval is how often the ingester reads the free space of its
// volume. Between two readings pushes may write at most a second of WAL
// into the reserve (--storage.min-free-bytes).
const diskCheckInterval = time.Second

// Derived reserve (--storage.min-free-bytes 0): 1% of the volume, at least
// minReserve, at most maxReserve. Once pushes stop, the TSDB still writes:
// it m-maps the head chunks cut before (every minute), fsyncs, and on a
// clean stop writes the head snapshot (about one chunk per series). A write
// of those that fails with ENOSPC panics inside the TSDB
// (handleChunkWriteError), so the reserve is what keeps the process alive.
const (
	minReserve = 64 << 20
	maxReserve = 4 << 30
)

// diskSpace is what statfs says of a volume, in bytes.
type diskSpace struct {
	free  uint64 // Available to an unprivileged process, as df's Avail.
	total uint64
}

// statDisk reads the space of the volume holding path.
func statDisk(path string) (diskSpace, error) {
	var s syscall.Statfs_t
	if err := syscall.Statfs(path, &s); err != nil {
		return diskSpace{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	//nolint:unconvert // The field types differ between operating systems.
	return diskSpace{free: uint64(s.Bavail) * uint64(s.Bsize), total: uint64(s.Blocks) * uint64(s.Bsize)}, nil
}

// reserveFor is the free space below which writes are refused: set if not 0,
// else derived from the volume's size.
func reserveFor(set ByteSize, total uint64) uint64 {
	if set > 0 {
		return uint64(set)
	}
	return max(minReserve, min(total/100, maxReserve))
}

// diskFullError refuses a push while the volume of the TSDB has less free
// space than the reserve. It reaches the distributor as Unavailable: the
// push counts as a failed replica, so the other replicas make the quorum,
// and a sender retries a push that no quorum stored.
type diskFullError struct {
	path    string
	free    uint64
	reserve uint64
	// readOnly is set when the TSDB was opened read-only because the
	// volume was full at start.
	readOnly bool
	// cause is the write error that flipped the ingester to refusing
	// writes, if one did; nil when a statfs reading did.
	cause error
}

func (e *diskFullError) Error() string {
	msg := fmt.Sprintf("disk full: writes refused while %s has %s free, below --storage.min-free-bytes=%s; queries are served",
		e.path, formatBytes(e.free), formatBytes(e.reserve))
	if e.readOnly {
		msg += "; the TSDB was opened read-only at start and reopens for writes once there is room"
	}
	if e.cause != nil {
		msg += fmt.Sprintf(" (last write error: %v)", e.cause)
	}
	return msg
}

func (e *diskFullError) Unwrap() error { return e.cause }

// formatBytes prints n bytes exactly and in MiB.
func formatBytes(n uint64) string {
	return fmt.Sprintf("%d bytes (%.1fMiB)", n, float64(n)/(1<<20))
}

// isNoSpace reports whether err is a write that failed for lack of room.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// mirrorStorage makes dst a copy of the TSDB directory src that costs no
// space: the same directories, each file a symbolic link to src's. A TSDB
// opened on dst reads src's blocks, WAL, head chunks and snapshot, and
// writes only into dst: the new WAL segment, head chunks cut by the WAL
// replay (the TSDB m-maps them as it replays), its lock. Deleting a file in
// dst (retention, a chunk file it replaced) removes the link only. It is
// how an ingester starts on a full volume: replaying into src would write
// head chunks there, fail with ENOSPC and panic inside the TSDB.
func mirrorStorage(src, dst string) error {
	src, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o777)
		case rel == "lock":
			return nil // The TSDB's lock of src; dst gets its own.
		}
		return os.Symlink(p, target)
	})
}
