package ingester_test

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/census-metrics/census/ingester"
	censuspb "github.com/census-metrics/census/proto"
)

// fakeDisk is a storage volume whose free space a test sets.
type fakeDisk struct{ free atomic.Uint64 }

func newFakeDisk(free uint64) *fakeDisk {
	d := &fakeDisk{}
	d.free.Store(free)
	return d
}

func (d *fakeDisk) setUp(i *ingester.Ingester) {
	ingester.SetStatDisk(i, func(string) (uint64, uint64, error) { return d.free.Load(), 100 << 30, nil })
}

// startIngesterOnDisk runs an ingester on dir whose volume is d, refusing
// writes below 64MiB free, and waits until it serves queries (Ready may
// still say the disk is full).
func startIngesterOnDisk(t *testing.T, dir string, d *fakeDisk) *testIngester {
	t.Helper()
	cfg := testConfig(dir)
	cfg.MinFreeBytes = 64 << 20
	ti := startIngesterSetUp(t, cfg, func(i *ingester.Ingester, ln net.Listener) *ingester.Server { return ingester.NewServer(i, ln) }, d.setUp)
	require.Eventually(t, func() bool {
		err := ti.ing.Ready()
		return err == nil || strings.Contains(err.Error(), "disk full")
	}, 30*time.Second, time.Millisecond, "not serving: %v", ti.ing.Ready())
	return ti
}

func waitDiskFull(t *testing.T, ti *testIngester, full bool) {
	t.Helper()
	require.Eventually(t, func() bool {
		err := ti.ing.Ready()
		return full == (err != nil && strings.Contains(err.Error(), "disk full")) && (full || err == nil)
	}, 10*ingester.DiskCheckInterval+30*time.Second, time.Millisecond, "want disk full %v, Ready says %v", full, ti.ing.Ready())
}

// requirePushRefused pushes ts and wants Unavailable naming the volume,
// its free bytes and the reserve.
func requirePushRefused(t *testing.T, ti *testIngester, dir, free string, ts ...*censuspb.TimeSeries) {
	t.Helper()
	_, err := ti.client.Push(context.Background(), &censuspb.PushRequest{Series: ts})
	st := status.Convert(err)
	require.Equal(t, codes.Unavailable, st.Code(), "push: %v", err)
	require.Contains(t, st.Message(), "disk full: writes refused while "+dir+" has "+free+" free, below --storage.min-free-bytes=67108864 bytes (64.0MiB)")
}

func diskMetrics(free, full int) string {
	return fmt.Sprintf(`
# HELP census_ingester_disk_full 1 while pushes are refused because the --storage.path volume has less free space than census_ingester_storage_min_free_bytes, or the TSDB was opened read-only on a full volume; else 0.
# TYPE census_ingester_disk_full gauge
census_ingester_disk_full %d
# HELP census_ingester_storage_free_bytes Free bytes of the --storage.path volume, read every second.
# TYPE census_ingester_storage_free_bytes gauge
census_ingester_storage_free_bytes %d
# HELP census_ingester_storage_min_free_bytes Free bytes of the --storage.path volume below which pushes are refused (--storage.min-free-bytes, derived from the volume's size when 0).
# TYPE census_ingester_storage_min_free_bytes gauge
census_ingester_storage_min_free_bytes 6.7108864e+07
`, full, free)
}

// TestIngester_DiskFull lets the volume's free space fall below the
// reserve: pushes are refused with Unavailable naming the volume, Ready
// says why, queries go on, and once there is room pushes are taken again
// without a restart.
func TestIngester_DiskFull(t *testing.T) {
	dir := t.TempDir()
	disk := newFakeDisk(1 << 30)
	ti := startIngesterOnDisk(t, dir, disk)
	waitDiskFull(t, ti, false)
	ls := pairs("__name__", "full")
	matcher := labels.MustNewMatcher(labels.MatchEqual, "__name__", "full")
	push(t, ti.client, series(ls, linear(1000, 1000, 10)...))

	disk.free.Store(1 << 20)
	waitDiskFull(t, ti, true)
	require.EqualError(t, ti.ing.Ready(), "disk full: writes refused while "+dir+" has 1048576 bytes (1.0MiB) free, below --storage.min-free-bytes=67108864 bytes (64.0MiB); queries are served")
	requirePushRefused(t, ti, dir, "1048576 bytes (1.0MiB)", series(ls, linear(11_000, 1000, 10)...))
	got, _ := queryStream(t, ti.client, 0, 100_000, matcher)
	require.Equal(t, []streamedSeries{{fmtLabels("__name__", "full"), linear(1000, 1000, 10)}}, got, "queries go on")
	require.NoError(t, testutil.GatherAndCompare(ti.reg, strings.NewReader(diskMetrics(1<<20, 1)),
		"census_ingester_disk_full", "census_ingester_storage_free_bytes", "census_ingester_storage_min_free_bytes"))

	disk.free.Store(1 << 30)
	waitDiskFull(t, ti, false)
	push(t, ti.client, series(ls, linear(11_000, 1000, 10)...))
	got, _ = queryStream(t, ti.client, 0, 100_000, matcher)
	require.Equal(t, []streamedSeries{{fmtLabels("__name__", "full"), linear(1000, 1000, 20)}}, got)
	require.NoError(t, testutil.GatherAndCompare(ti.reg, strings.NewReader(diskMetrics(1<<30, 0)),
		"census_ingester_disk_full", "census_ingester_storage_free_bytes", "census_ingester_storage_min_free_bytes"))
}

// TestIngester_StartsReadOnlyOnFullDisk restarts an ingester on a volume
// below the reserve, after a crash (its directory copied while it ran, so
// no head snapshot) and after a clean stop (a head snapshot, which the
// read-only start does not use): it serves every acknowledged sample
// without writing a byte to its directory, refuses pushes, and once there
// is room reopens for writes by itself.
func TestIngester_StartsReadOnlyOnFullDisk(t *testing.T) {
	for _, tc := range []struct {
		name  string
		clean bool
	}{
		{name: "after a crash"},
		{name: "after a clean stop", clean: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			running := startIngester(t, dir)
			var (
				want     []streamedSeries
				matcher  = labels.MustNewMatcher(labels.MatchEqual, "__name__", "ro")
				fullLine = linear(1000, 1000, 300) // 300 samples: the replay cuts and m-maps chunks.
			)
			for i := range 20 {
				ls := []string{"__name__", "ro", "i", fmt.Sprintf("%02d", i)}
				push(t, running.client, series(pairs(ls...), fullLine...))
				want = append(want, streamedSeries{fmtLabels(ls...), fullLine})
			}
			restartIn := filepath.Join(t.TempDir(), "data")
			if !tc.clean {
				require.NoError(t, copyDir(dir, restartIn))
			}
			running.stop()
			if tc.clean {
				require.NoError(t, copyDir(dir, restartIn))
				snapshots, err := filepath.Glob(filepath.Join(restartIn, "chunk_snapshot.*"))
				require.NoError(t, err)
				require.NotEmpty(t, snapshots)
			}
			before := listFiles(t, restartIn)
			mirrors := readOnlyMirrors(t)

			disk := newFakeDisk(1 << 20)
			ti := startIngesterOnDisk(t, restartIn, disk)
			require.EqualError(t, ti.ing.Ready(), "disk full: writes refused while "+restartIn+" has 1048576 bytes (1.0MiB) free, below --storage.min-free-bytes=67108864 bytes (64.0MiB); queries are served; the TSDB was opened read-only at start and reopens for writes once there is room")
			got, _ := queryStream(t, ti.client, 0, 1_000_000, matcher)
			require.Equal(t, want, got, "every acknowledged sample is served")
			next := series(pairs("__name__", "ro", "i", "00"), linear(301_000, 1000, 5)...)
			requirePushRefused(t, ti, restartIn, "1048576 bytes (1.0MiB)", next)
			require.Equal(t, before, listFiles(t, restartIn), "nothing was written to the full volume")
			require.Len(t, readOnlyMirrors(t), len(mirrors)+1)

			disk.free.Store(1 << 30)
			waitDiskFull(t, ti, false)
			push(t, ti.client, next)
			want[0].Samples = linear(1000, 1000, 305)
			got, _ = queryStream(t, ti.client, 0, 1_000_000, matcher)
			require.Equal(t, want, got)
			require.Equal(t, mirrors, readOnlyMirrors(t), "the mirror is removed once the TSDB reopened")
		})
	}
}

// listFiles returns the size of every file under dir, by path.
func listFiles(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	require.NoError(t, filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		out[path] = info.Size()
		return nil
	}))
	return out
}

// readOnlyMirrors lists the mirrors of read-only TSDBs in the temporary
// directory.
func readOnlyMirrors(t *testing.T) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(os.TempDir(), "census-read-only-tsdb-*"))
	require.NoError(t, err)
	return m
}
