package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	remoteapi "github.com/prometheus/client_golang/exp/api/remote"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage/remote"
	"github.com/stretchr/testify/require"
)

// mountSmallVolume mounts a tmpfs of size bytes at a new directory and
// unmounts it when the test ends; it skips the test where it cannot mount
// (not root, no tmpfs).
func mountSmallVolume(t *testing.T, size int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "volume")
	require.NoError(t, os.Mkdir(dir, 0o777))
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Skipf("cannot mount a %d-byte tmpfs at %s (the test needs root): %v", size, dir, err)
	}
	// Registered before the processes' own clean-ups, so it runs after
	// they killed the children.
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// freeBytes is the space of dir's volume a process may still use.
func freeBytes(t *testing.T, dir string) uint64 {
	t.Helper()
	var s syscall.Statfs_t
	require.NoError(t, syscall.Statfs(dir, &s))
	return s.Bavail * uint64(s.Bsize)
}

// fill writes the file path until its volume has at most leave bytes free,
// or none if leave is 0 (then the last write fails with ENOSPC).
func fill(t *testing.T, path string, leave uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o666)
	require.NoError(t, err)
	defer func() { require.NoError(t, f.Close()) }()
	buf := make([]byte, 64<<10)
	for {
		free := freeBytes(t, filepath.Dir(path))
		if free <= leave || free == 0 {
			return
		}
		n := min(uint64(len(buf)), free-leave)
		if leave == 0 {
			n = uint64(len(buf))
		}
		if _, err := f.Write(buf[:n]); err != nil {
			require.ErrorIs(t, err, syscall.ENOSPC)
			return
		}
	}
}

// requireAlive fails the test if p has exited.
func requireAlive(t *testing.T, p *process) {
	t.Helper()
	select {
	case <-p.done:
		t.Fatalf("%s exited (%v); its log:\n%s", p.name, p.cmd.ProcessState, p.log.String())
	default:
	}
}

// readyAnswer returns the status code and body of p's /ready.
func readyAnswer(t *testing.T, p *process) (int, string) {
	t.Helper()
	body, err := p.get("/ready")
	if err != nil {
		require.NotZero(t, httpCode(err), "GET /ready: %v", err)
		return httpCode(err), string(body)
	}
	return 200, string(body)
}

// TestCluster_IngesterFullDisk runs an ingester on a 20 MiB volume behind a
// distributor and a querier (replication factor 1). Pushed until the volume
// has less than --storage.min-free-bytes free, it refuses pushes with a 503
// naming the volume instead of crashing, says so on /ready and in
// census_ingester_disk_full, and its samples stay queryable; once a file is
// deleted it takes pushes again by itself. Killed with SIGKILL and started
// again on a volume with no byte free, it starts read-only and serves its
// samples, with no crash loop, and reopens for writes once there is room.
func TestCluster_IngesterFullDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	vol := mountSmallVolume(t, 20<<20)
	storage := filepath.Join(vol, "data")
	const minFree = 4 << 20
	ingCfg := roleConfig{id: "ingester", rf: 1, storage: storage, flags: []string{fmt.Sprintf("--storage.min-free-bytes=%d", minFree)}}
	ing := startRole(t, "ingester", ingCfg)
	dist := startRole(t, "distributor", roleConfig{id: "distributor", join: ing, rf: 1})
	q := startRole(t, "querier", roleConfig{id: "querier", join: ing, rf: 1})
	for _, p := range []*process{ing, dist, q} {
		p.waitReady(30 * time.Second)
	}

	start := time.Now().Truncate(time.Second).UnixMilli()
	job := labels.FromStrings("job", "fulldisk")
	require.NoError(t, remoteWrite(t, dist.http, remoteapi.WriteV1MessageType, start, map[string]float64{"probe_value": 1}, job))
	requireProbe := func(ts int64, want float64) {
		t.Helper()
		got, _ := instantValues(t, q, `probe_value{job="fulldisk"}`, "job", ts)
		require.Equal(t, map[string]float64{"fulldisk": want}, got, "probe_value at %d", ts)
	}
	requireProbe(start, 1)

	// Leave 2 MiB above the reserve, then push batches of 200 series until
	// the WAL has eaten them: over 120 samples per series, so the head cuts
	// chunks, which a WAL replay writes to chunks_head.
	filler := filepath.Join(vol, "filler")
	fill(t, filler, minFree+2<<20)
	batch := map[string]float64{}
	for k := range 200 {
		batch[fmt.Sprintf("fill_%04d", k)] = float64(k)
	}
	pushes, refusal := pushUntilRefused(t, dist, start, batch, job)
	t.Logf("refused after %d pushes of %d series, once %d bytes were free: %v", pushes, len(batch), freeBytes(t, vol), refusal)
	require.Greater(t, pushes, 120, "too few samples per series to cut a chunk")
	require.ErrorContains(t, refusal, "503")
	require.ErrorContains(t, refusal, "disk full: writes refused while "+storage+" has ")
	require.ErrorContains(t, refusal, fmt.Sprintf("free, below --storage.min-free-bytes=%d bytes (4.0MiB)", minFree))
	var rec remote.RecoverableError
	require.True(t, errors.As(refusal, &rec), "%v must be retried", refusal)

	requireAlive(t, ing)
	code, body := readyAnswer(t, ing)
	require.Equal(t, 503, code)
	require.Contains(t, body, "ingester: disk full: writes refused while "+storage+" has ")
	full, err := ing.metric("census_ingester_disk_full")
	require.NoError(t, err)
	require.Equal(t, 1.0, full)
	free, err := ing.metric("census_ingester_storage_free_bytes")
	require.NoError(t, err)
	require.Less(t, free, float64(minFree))
	requireProbe(start, 1)

	// Room again: pushes are taken without a restart.
	require.NoError(t, os.Remove(filler))
	require.Eventually(t, func() bool {
		return remoteWrite(t, dist.http, remoteapi.WriteV1MessageType, start+1000, map[string]float64{"probe_value": 2}, job) == nil
	}, 30*time.Second, 100*time.Millisecond, "pushes not taken again")
	ing.waitReady(10 * time.Second)
	requireProbe(start+1000, 2)

	// SIGKILL, and a start on a full volume: 64KiB free, less than the
	// 128KiB the TSDB preallocates for a head chunk file, so a WAL replay
	// into it would fail to write the first chunk and panic. (Not 0 bytes:
	// a restarted ingester may save its ring tokens again, and the ring
	// stops the process when that fails.)
	ing.kill()
	fill(t, filler, 64<<10)
	before := listFiles(t, storage)
	// The old gossip address is gone: join through the distributor.
	ingCfg.join = dist
	ing = startRole(t, "ingester", ingCfg)
	require.Eventually(t, func() bool {
		code, body := readyAnswer(t, ing)
		return code == 503 && strings.Contains(body, "opened read-only at start")
	}, 60*time.Second, 100*time.Millisecond, "the ingester does not report a read-only start; its log:\n%s", ing.log.String())
	code, body = readyAnswer(t, ing)
	require.Contains(t, body, "ingester: disk full: writes refused while "+storage+" has ")
	require.Eventually(t, func() bool {
		got, _, err := queryInstant(q, `probe_value{job="fulldisk"}`, "job", start+1000)
		return err == nil && got["fulldisk"] == 2
	}, 30*time.Second, 100*time.Millisecond, "the read-only ingester does not answer queries")
	requireProbe(start, 1)
	err = remoteWrite(t, dist.http, remoteapi.WriteV1MessageType, start+2000, map[string]float64{"probe_value": 3}, job)
	require.ErrorContains(t, err, "503")
	require.ErrorContains(t, err, "opened read-only at start")
	// No crash loop: still the same process a few disk checks later.
	time.Sleep(3 * time.Second)
	requireAlive(t, ing)
	require.Equal(t, before, listFiles(t, storage), "the read-only ingester wrote to its full volume")

	require.NoError(t, os.Remove(filler))
	require.Eventually(t, func() bool {
		return remoteWrite(t, dist.http, remoteapi.WriteV1MessageType, start+2000, map[string]float64{"probe_value": 3}, job) == nil
	}, 60*time.Second, 100*time.Millisecond, "pushes not taken after the read-only start; log:\n%s", ing.log.String())
	ing.waitReady(10 * time.Second)
	requireProbe(start, 1)
	requireProbe(start+2000, 3)

	for _, p := range []*process{ing, dist, q} {
		require.NoError(t, p.stop(30*time.Second))
	}
}

// pushUntilRefused sends batch at a new timestamp each time until the
// distributor refuses it, and returns how many pushes it took before and
// the refusal.
func pushUntilRefused(t *testing.T, dist *process, start int64, batch map[string]float64, extra labels.Labels) (int, error) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for n := 0; time.Now().Before(deadline); n++ {
		if err := remoteWrite(t, dist.http, remoteapi.WriteV1MessageType, start+1+int64(n), batch, extra); err != nil {
			return n, err
		}
	}
	t.Fatal("pushes still taken after 2 minutes")
	return 0, nil
}

// listFiles returns the size of every file under dir but the ring's tokens
// file, by path.
func listFiles(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	require.NoError(t, filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == "ring-tokens.json" {
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

// TestCluster_FullIngesterIsAFailedReplica runs three ingesters at
// replication factor 3, one of them on a 20 MiB volume filled below its
// --storage.min-free-bytes: its refusals count as failed replicas, so the
// other two make the quorum and pushes are acknowledged (2xx) and
// queryable; once the volume has room it is sent pushes again.
func TestCluster_FullIngesterIsAFailedReplica(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	vol := mountSmallVolume(t, 20<<20)
	ingesters := make([]*process, 3)
	for i := range ingesters {
		cfg := roleConfig{id: fmt.Sprintf("ingester-%d", i), rf: 3}
		if i == 0 {
			cfg.storage = filepath.Join(vol, "data")
			cfg.flags = []string{"--storage.min-free-bytes=4MB"}
		} else {
			cfg.join = ingesters[0]
		}
		ingesters[i] = startRole(t, "ingester", cfg)
	}
	dist := startRole(t, "distributor", roleConfig{id: "distributor", join: ingesters[0], rf: 3})
	q := startRole(t, "querier", roleConfig{id: "querier", join: ingesters[0], rf: 3})
	for _, p := range append(ingesters[:], dist, q) {
		p.waitReady(30 * time.Second)
	}
	for _, p := range []*process{dist, q} {
		require.Eventually(t, func() bool {
			st, err := ringStatus(p)
			return err == nil && len(st) == 3
		}, 30*time.Second, 100*time.Millisecond, "%s sees 3 ingesters", p.name)
	}

	filler := filepath.Join(vol, "filler")
	fill(t, filler, 1<<20)
	full := ingesters[0]
	require.Eventually(t, func() bool {
		code, body := readyAnswer(t, full)
		return code == 503 && strings.Contains(body, "disk full")
	}, 10*time.Second, 100*time.Millisecond, "%s does not report its full disk", full.name)

	samples := func(result string) float64 {
		t.Helper()
		v, err := dist.metric("census_distributor_ingester_samples_total", "ingester", full.name, "result", result)
		if err != nil {
			return 0 // Not counted yet.
		}
		return v
	}
	sentBefore := samples("sent")
	start := time.Now().Truncate(time.Second).UnixMilli()
	job := labels.FromStrings("job", "replica")
	for n := range 5 {
		require.NoError(t, remoteWrite(t, dist.http, remoteapi.WriteV1MessageType, start+int64(n)*1000, map[string]float64{"replica_value": float64(n)}, job),
			"push %d with one replica full", n)
	}
	got, _ := instantValues(t, q, `replica_value{job="replica"}`, "job", start+4000)
	require.Equal(t, map[string]float64{"replica": 4}, got)
	require.Equal(t, sentBefore, samples("sent"), "the full ingester acknowledged nothing")
	require.Eventually(t, func() bool { return samples("failed")+samples("dropped") >= 5 }, 10*time.Second, 100*time.Millisecond,
		"the full ingester's refusals are not counted as failed: failed %v, dropped %v", samples("failed"), samples("dropped"))
	requireAlive(t, full)
	t.Logf("%s: failed %v, dropped %v samples", full.name, samples("failed"), samples("dropped"))

	require.NoError(t, os.Remove(filler))
	full.waitReady(10 * time.Second)
	require.NoError(t, remoteWrite(t, dist.http, remoteapi.WriteV1MessageType, start+5000, map[string]float64{"replica_value": 5}, job))
	require.Eventually(t, func() bool { return samples("sent") > sentBefore }, 10*time.Second, 100*time.Millisecond,
		"%s takes no pushes once it has room", full.name)

	for _, p := range append(ingesters[:], dist, q) {
		require.NoError(t, p.stop(30*time.Second))
	}
}
