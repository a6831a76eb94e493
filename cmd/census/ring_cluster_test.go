package main

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/ring"
)

// TestCluster_RingLifecycle starts three ingesters by hand, as an operator
// would, and follows them on a querier's /ring page: three ACTIVE
// instances; after kill -9 of one it turns unhealthy once the heartbeat
// timeout passed, and is forgotten later; after a graceful stop of another
// it is LEFT. The ingesters restart with the tokens they had.
func TestCluster_RingLifecycle(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	// Every role keeps the default replication factor, 3.
	role := func(id string, join *process, storage string) roleConfig {
		return roleConfig{id: id, join: join, heartbeatTimeout: 2 * time.Second, storage: storage,
			flags: []string{"--ring.auto-forget-after=5s", "--ring.tombstone-timeout=1m"}}
	}
	dirs := make([]string, 3)
	ingesters := make([]*process, 3)
	for i := range ingesters {
		dirs[i] = filepath.Join(t.TempDir(), "data")
		var join *process
		if i > 0 {
			join = ingesters[0]
		}
		ingesters[i] = startRole(t, "ingester", role(fmt.Sprintf("ingester-%d", i), join, dirs[i]))
	}
	q := startRole(t, "querier", role("querier", ingesters[0], ""))

	var before map[string]ring.InstanceStatus
	require.Eventually(t, func() bool {
		st, err := ringStatus(q)
		if err != nil || len(st) != 3 {
			return false
		}
		for _, s := range st {
			if s.State != ring.ACTIVE || !s.Healthy || s.Tokens != 128 {
				return false
			}
		}
		before = st
		return true
	}, 30*time.Second, 100*time.Millisecond, "three ACTIVE, healthy ingesters")
	total := 0.0
	for _, s := range before {
		total += s.OwnershipPercent
		require.InDelta(t, 100.0/3, s.OwnershipPercent, 5, "balanced ownership of %s", s.ID)
	}
	require.InDelta(t, 100, total, 0.01)

	// kill -9: unhealthy after the heartbeat timeout, then forgotten.
	ingesters[1].kill()
	killed := time.Now()
	require.Eventually(t, func() bool {
		st, err := ringStatus(q)
		return err == nil && !st["ingester-1"].Healthy && st["ingester-1"].State == ring.ACTIVE
	}, 10*time.Second, 50*time.Millisecond, "killed ingester unhealthy")
	require.GreaterOrEqual(t, time.Since(killed), 1500*time.Millisecond, "not unhealthy before the timeout")
	require.Eventually(t, func() bool {
		st, err := ringStatus(q)
		if err != nil {
			return false
		}
		s, ok := st["ingester-1"]
		return !ok || s.State == ring.LEFT
	}, 20*time.Second, 100*time.Millisecond, "killed ingester auto-forgotten")

	// A restart on the same data directory takes the same tokens back.
	ingesters[1] = startRole(t, "ingester", role("ingester-1", ingesters[0], dirs[1]))
	require.Eventually(t, func() bool {
		st, err := ringStatus(q)
		s := st["ingester-1"]
		return err == nil && s.State == ring.ACTIVE && s.Healthy
	}, 30*time.Second, 100*time.Millisecond, "restarted ingester ACTIVE")
	after, err := ringStatus(q)
	require.NoError(t, err)
	require.InDelta(t, before["ingester-1"].OwnershipPercent, after["ingester-1"].OwnershipPercent, 1e-9, "same tokens after a restart")

	// Graceful stop: LEFT.
	require.NoError(t, ingesters[2].stop(30*time.Second))
	require.Eventually(t, func() bool {
		st, err := ringStatus(q)
		if err != nil {
			return false
		}
		s, ok := st["ingester-2"]
		return !ok || (s.State == ring.LEFT && s.Tokens == 0)
	}, 10*time.Second, 50*time.Millisecond, "stopped ingester LEFT")
}
