package ingester

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestIngester_NoSpaceWriteRefusesPushes: a write that fails with ENOSPC
// refuses pushes at once, with the write error, even while statfs still
// shows the reserve free; the next reading with room takes them again.
func TestIngester_NoSpaceWriteRefusesPushes(t *testing.T) {
	var cfg Config
	cfg.RegisterFlags(flag.NewFlagSet("test", flag.PanicOnError))
	cfg.StoragePath = t.TempDir()
	cfg.Limits.MaxSeries = 1000
	cfg.MinFreeBytes = 1 << 20
	i, err := New(cfg, nil, nil)
	require.NoError(t, err)
	var free atomic.Uint64
	free.Store(2 << 20)
	i.statDisk = func(string) (diskSpace, error) { return diskSpace{free: free.Load(), total: 1 << 30}, nil }

	other := fmt.Errorf("write to WAL: %w", syscall.EIO)
	require.Equal(t, other, i.noSpace(other), "another write error is returned as it is")
	require.Nil(t, i.diskFull.Load())

	writeErr := fmt.Errorf("write to WAL: %w", syscall.ENOSPC)
	err = i.noSpace(writeErr)
	require.EqualError(t, err, "disk full: writes refused while "+cfg.StoragePath+" has 2097152 bytes (2.0MiB) free, below --storage.min-free-bytes=1048576 bytes (1.0MiB); queries are served (last write error: write to WAL: no space left on device)")
	require.ErrorIs(t, err, syscall.ENOSPC)
	require.Equal(t, err, i.pushWith(t.Context(), nil), "pushes are refused before they touch the TSDB")

	i.checkDisk(nil)
	require.Nil(t, i.diskFull.Load(), "room again")
	free.Store(1 << 10)
	i.checkDisk(nil)
	require.NotNil(t, i.diskFull.Load())
}

func TestMirrorStorage(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	for path, data := range map[string]string{
		"lock":                    "",
		"wal/00000000":            "segment",
		"wal/checkpoint.00001/00": "checkpoint",
		"chunks_head/000001":      "chunks",
	} {
		p := filepath.Join(src, path)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o777))
		require.NoError(t, os.WriteFile(p, []byte(data), 0o666))
	}
	require.NoError(t, mirrorStorage(src, dst))

	for _, path := range []string{"wal/00000000", "wal/checkpoint.00001/00", "chunks_head/000001"} {
		target, err := os.Readlink(filepath.Join(dst, path))
		require.NoError(t, err, path)
		require.Equal(t, filepath.Join(src, path), target)
	}
	st, err := os.Lstat(filepath.Join(dst, "wal/checkpoint.00001"))
	require.NoError(t, err)
	require.True(t, st.IsDir(), "directories are real, as the TSDB lists them with IsDir")
	_, err = os.Lstat(filepath.Join(dst, "lock"))
	require.ErrorIs(t, err, os.ErrNotExist, "the TSDB's lock is not mirrored")

	// Removing in the mirror removes the link, not the file.
	require.NoError(t, os.RemoveAll(filepath.Join(dst, "wal")))
	_, err = os.Stat(filepath.Join(src, "wal/00000000"))
	require.NoError(t, err)
}
