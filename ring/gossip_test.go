package ring_test

import (
	"cmp"
	"context"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/ring"
)

const (
	waitFor = 15 * time.Second // generous: the race detector on 2 shared cores
	tick    = 20 * time.Millisecond
)

// testConfig is a config for members on loopback that converge in seconds.
func testConfig(id string, join ...string) ring.Config {
	return ring.Config{
		BindAddress:       "127.0.0.1:0",
		Join:              join,
		InstanceID:        id,
		ReplicationFactor: 3,
		Tokens:            32,
		HeartbeatPeriod:   100 * time.Millisecond,
		HeartbeatTimeout:  time.Second,
	}
}

type member struct {
	*ring.Ring
	id     string
	reg    *prometheus.Registry
	ctx    context.Context // for run; nil when startMember ran it
	ran    bool
	cancel context.CancelFunc
	done   chan error
}

// startMember creates and runs a member; instanceAddr != "" makes it an
// ingester. Cleanup stops it and waits for Run to return.
func startMember(t testing.TB, cfg ring.Config, instanceAddr string) *member {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	r, err := ring.New(cfg, instanceAddr, nil, reg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{Ring: r, id: cfg.InstanceID, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { m.done <- r.Run(ctx) }()
	t.Cleanup(func() { m.stop(t) })
	return m
}

// stop cancels the member and waits for Run to return nil; it may be called
// more than once. A member that was never run runs now, with its context
// already cancelled, since only Run releases memberlist.
func (m *member) stop(t testing.TB) {
	t.Helper()
	m.cancel()
	if m.ctx != nil && !m.ran {
		m.run()
	}
	select {
	case err, ok := <-m.done:
		if ok {
			require.NoError(t, err)
			close(m.done)
		}
	case <-time.After(waitFor):
		t.Fatalf("member %s did not stop within %s", m.id, waitFor)
	}
}

// view is what a member knows about the instances, without the heartbeats
// that differ from member to member.
func view(r *ring.Ring) []ring.InstanceDesc {
	var out []ring.InstanceDesc
	for _, inst := range r.Instances() {
		inst.Heartbeat = 0
		out = append(out, inst)
	}
	return out
}

func getIDs(t testing.TB, r *ring.Ring, token uint32) []string {
	t.Helper()
	got, err := r.Get(token, make([]ring.InstanceDesc, 0, 3))
	require.NoError(t, err)
	var ids []string
	for _, inst := range got {
		ids = append(ids, inst.ID)
	}
	return ids
}

func TestRing_GossipConverges(t *testing.T) {
	const ingesters = 5
	var members []*member
	join := []string{}
	for i := range ingesters {
		id := fmt.Sprintf("ingester-%d", i)
		m := startMember(t, testConfig(id, join...), fmt.Sprintf("127.0.0.1:%d", 9000+i))
		members = append(members, m)
		// Each member joins through the previous one, so news has to travel
		// through the others to reach everybody.
		join = []string{m.GossipAddr()}
	}
	watcher := startMember(t, testConfig("querier", join...), "")
	all := append(slices.Clone(members), watcher)

	// Everybody sees every ingester ACTIVE with the same tokens.
	require.Eventually(t, func() bool {
		for _, m := range all {
			if m.Ready() != nil {
				return false
			}
			insts := m.ReadInstances()
			if len(insts) != ingesters {
				return false
			}
			for _, inst := range insts {
				if inst.State != ring.ACTIVE || len(inst.Tokens) != 32 {
					return false
				}
			}
			if !slices.EqualFunc(view(m.Ring), view(members[0].Ring), instanceEqual) {
				return false
			}
		}
		return true
	}, waitFor, tick, "members did not converge")
	for i, inst := range watcher.Instances() {
		require.Equal(t, fmt.Sprintf("ingester-%d", i), inst.ID)
		require.Equal(t, fmt.Sprintf("127.0.0.1:%d", 9000+i), inst.Addr)
	}

	// Every member routes every token to the same replicas.
	rnd := rand.New(rand.NewPCG(1, 2))
	tokens := make([]uint32, 500)
	for i := range tokens {
		tokens[i] = rnd.Uint32()
	}
	for _, tok := range tokens {
		want := getIDs(t, watcher.Ring, tok)
		require.Len(t, want, 3)
		for _, m := range members {
			require.Equal(t, want, getIDs(t, m.Ring, tok), "token %d on %s", tok, m.id)
		}
	}
	require.Eventually(t, func() bool {
		return gauge(t, watcher.reg, "census_ring_members", "ACTIVE") == ingesters &&
			counterSum(t, watcher.reg, "census_ring_gossip_messages_received_total") > 0
	}, waitFor, tick)

	// A graceful leave: everybody sees the tombstone, and neither writes
	// nor reads go to it any more.
	leaver := members[4]
	leaver.stop(t)
	require.Error(t, leaver.Ready())
	rest := slices.Concat(members[:4], []*member{watcher})
	require.Eventually(t, func() bool {
		for _, m := range rest {
			i := slices.IndexFunc(m.Instances(), func(inst ring.InstanceDesc) bool { return inst.ID == leaver.id })
			if i < 0 || m.Instances()[i].State != ring.LEFT || len(m.Instances()[i].Tokens) != 0 {
				return false
			}
			if len(m.ReadInstances()) != ingesters-1 {
				return false
			}
		}
		return true
	}, waitFor, tick, "the leave did not spread")
	for _, m := range rest {
		for _, tok := range tokens {
			ids := getIDs(t, m.Ring, tok)
			require.Len(t, ids, 3)
			require.NotContains(t, ids, leaver.id)
		}
	}

	// A hung ingester: still a memberlist member, but its heartbeat goes
	// stale, and after the timeout writes and reads skip it.
	hung := members[3]
	ring.PauseHeartbeats(hung.Ring)
	others := slices.Concat(members[:3], []*member{watcher})
	require.Eventually(t, func() bool {
		for _, m := range others {
			if slices.ContainsFunc(m.ReadInstances(), func(inst ring.InstanceDesc) bool { return inst.ID == hung.id }) {
				return false
			}
		}
		return true
	}, waitFor, tick, "the hung ingester stayed healthy")
	for _, m := range others {
		i := slices.IndexFunc(m.Instances(), func(inst ring.InstanceDesc) bool { return inst.ID == hung.id })
		require.GreaterOrEqual(t, i, 0)
		require.Equal(t, ring.ACTIVE, m.Instances()[i].State, "listed, though unhealthy")
		for _, tok := range tokens {
			// Only three healthy ingesters remain, so they hold everything.
			require.ElementsMatch(t, []string{"ingester-0", "ingester-1", "ingester-2"}, getIDs(t, m.Ring, tok))
		}
	}
	require.Eventually(t, func() bool {
		return gauge(t, watcher.reg, "census_ring_members", "ACTIVE") == 3 &&
			gauge(t, watcher.reg, "census_ring_members", "UNHEALTHY") == 1 &&
			gauge(t, watcher.reg, "census_ring_members", "LEFT") == 1
	}, waitFor, tick)
}

func instanceEqual(a, b ring.InstanceDesc) bool {
	return a.ID == b.ID && a.Addr == b.Addr && a.Zone == b.Zone && a.State == b.State &&
		slices.Equal(a.Tokens, b.Tokens) && a.RegisteredAt == b.RegisteredAt
}

// TestRing_LargeEntriesConverge uses more tokens than fit a UDP packet, so
// heartbeats travel over TCP.
func TestRing_LargeEntriesConverge(t *testing.T) {
	var members []*member
	join := []string{}
	for i := range 3 {
		cfg := testConfig(fmt.Sprintf("ingester-%d", i), join...)
		cfg.Tokens = 1024
		m := startMember(t, cfg, fmt.Sprintf("127.0.0.1:%d", 9000+i))
		members = append(members, m)
		join = []string{m.GossipAddr()}
	}
	require.Eventually(t, func() bool {
		for _, m := range members {
			insts := m.ReadInstances()
			if m.Ready() != nil || len(insts) != 3 || !slices.EqualFunc(view(m.Ring), view(members[0].Ring), instanceEqual) {
				return false
			}
			if counter(t, m.reg, "census_ring_gossip_messages_received_total", "reliable") == 0 {
				return false
			}
		}
		return true
	}, waitFor, tick)
	for _, inst := range members[2].Instances() {
		require.Len(t, inst.Tokens, 1024)
	}
	// Heartbeats keep everybody healthy well past the timeout.
	require.Never(t, func() bool {
		for _, m := range members {
			if len(m.ReadInstances()) != 3 {
				return true
			}
		}
		return false
	}, 2*time.Second, tick)
}

func TestRing_JoinRetriesUntilCancelled(t *testing.T) {
	// Nothing listens on port 1, so every attempt fails.
	m := startMember(t, testConfig("ingester-0", "127.0.0.1:1"), "127.0.0.1:9000")
	require.Eventually(t, func() bool {
		err := m.Ready()
		return err != nil && strings.Contains(err.Error(), "not joined the memberlist cluster yet (peers [127.0.0.1:1])")
	}, waitFor, tick)
	require.Empty(t, m.Instances(), "an ingester registers only once joined")
	start := time.Now()
	m.stop(t)
	require.Less(t, time.Since(start), 2*time.Second, "Run returns promptly while retrying")
	require.ErrorContains(t, m.Ready(), "stopped")
}

func TestRing_SingleIngester(t *testing.T) {
	m := startMember(t, testConfig("ingester-0"), "127.0.0.1:9000")
	require.Eventually(t, func() bool { return m.Ready() == nil }, waitFor, tick)
	require.Equal(t, 3, m.ReplicationFactor())
	require.Regexp(t, `^127\.0\.0\.1:\d+$`, m.GossipAddr())
	require.NotEqual(t, "127.0.0.1:0", m.GossipAddr())
	got, err := m.Get(12345, nil)
	require.NoError(t, err)
	require.Len(t, got, 1, "fewer replicas than RF when fewer instances exist")
	require.Equal(t, "ingester-0", got[0].ID)
	require.Equal(t, "127.0.0.1:9000", got[0].Addr)
	require.Equal(t, ring.ACTIVE, got[0].State)
	require.Len(t, got[0].Tokens, 32)

	req := httptest.NewRequest(http.MethodGet, "/ring", nil)
	rec := httptest.NewRecorder()
	m.ServeHTTP(rec, req)
	require.Contains(t, rec.Body.String(), "<td>ingester-0</td>")
	require.Contains(t, rec.Body.String(), "<td>100.00%</td>")
	require.InDelta(t, 1, gauge(t, m.reg, "census_ring_ownership_ratio", ""), 1e-9)

	m.stop(t)
	require.Equal(t, ring.LEFT, m.Instances()[0].State)
	_, err = m.Get(12345, nil)
	require.ErrorIs(t, err, ring.ErrEmptyRing)
}

func TestNew_Errors(t *testing.T) {
	tests := []struct {
		name         string
		cfg          ring.Config
		instanceAddr string
		wantErr      string
	}{
		{name: "invalid config", cfg: ring.Config{BindAddress: "127.0.0.1:0"}, wantErr: "invalid ring config"},
		{name: "instance address without host", cfg: testConfig("a"), instanceAddr: ":9095", wantErr: "must name a host other members can dial"},
		{name: "unspecified instance address", cfg: testConfig("a"), instanceAddr: "0.0.0.0:9095", wantErr: "must name a host"},
		{name: "instance address without port", cfg: testConfig("a"), instanceAddr: "10.0.0.1", wantErr: "invalid instance address"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ring.New(tc.cfg, tc.instanceAddr, nil, nil)
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

// gauge returns the value of the gauge name with state label state (any
// labels when state is empty).
func gauge(t testing.TB, reg prometheus.Gatherer, name, state string) float64 {
	t.Helper()
	m := findMetric(t, reg, name, "state", state)
	if m == nil {
		return -1
	}
	return m.GetGauge().GetValue()
}

func counter(t testing.TB, reg prometheus.Gatherer, name, kind string) float64 {
	t.Helper()
	m := findMetric(t, reg, name, "kind", kind)
	if m == nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

func counterSum(t testing.TB, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func findMetric(t testing.TB, reg prometheus.Gatherer, name, label, value string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if value == "" {
				return m
			}
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m
				}
			}
		}
	}
	return nil
}

// clusterConfig is testConfig with the timeouts of the lifecycle shortened
// so that unhealthy, forgotten and expired all happen within seconds.
func clusterConfig(id string, join ...string) ring.Config {
	cfg := testConfig(id, join...)
	// Every heartbeat is gossiped to every member several times; with 30
	// members in one process under the race detector, shorter periods
	// saturate two cores.
	cfg.HeartbeatPeriod = 500 * time.Millisecond
	cfg.HeartbeatTimeout = 3 * time.Second
	cfg.AutoForgetAfter = 6 * time.Second
	cfg.TombstoneTimeout = 2 * time.Second
	return cfg
}

// newMember creates a member without running it; configure, if not nil,
// adjusts memberlist's configuration.
func newMember(t testing.TB, cfg ring.Config, instanceAddr string, configure func(*memberlist.Config) error) *member {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	r, err := ring.NewWithMemberlistConfig(cfg, instanceAddr, reg, configure)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{Ring: r, id: cfg.InstanceID, reg: reg, cancel: cancel, done: make(chan error, 1), ctx: ctx}
	t.Cleanup(func() { m.stop(t) })
	return m
}

// run starts Run; the cleanup of newMember stops it.
func (m *member) run() {
	m.ran = true
	go func() { m.done <- m.Run(m.ctx) }()
}

// stopAll stops members at once, so that they leave in parallel rather
// than one cleanup after the other.
func stopAll(t testing.TB, members []*member) {
	t.Helper()
	for _, m := range members {
		m.cancel()
	}
	for _, m := range members {
		m.stop(t)
	}
}

func find(insts []ring.InstanceDesc, id string) (ring.InstanceDesc, bool) {
	i := slices.IndexFunc(insts, func(inst ring.InstanceDesc) bool { return inst.ID == id })
	if i < 0 {
		return ring.InstanceDesc{}, false
	}
	return insts[i], true
}

// sameRing reports whether every member has the same descriptor, heartbeats
// aside.
func sameRing(members []*member) bool {
	for _, m := range members[1:] {
		if ring.Checksum(m.Ring) != ring.Checksum(members[0].Ring) {
			return false
		}
	}
	return true
}

// TestRing_ThirtyMembers gossips 27 ingesters in three zones and 3 watchers
// on loopback, all started at once, each joining a random earlier one. They
// converge to one balanced descriptor; then through a LEAVING ingester,
// two graceful leaves, two joins and a kill they converge again, the killed
// ingester turns unhealthy after the heartbeat timeout and is forgotten
// after auto-forget-after, and the tombstones expire.
func TestRing_ThirtyMembers(t *testing.T) {
	if testing.Short() {
		t.Skip("30 memberlist members take several seconds")
	}
	rnd := rand.New(rand.NewPCG(3, 0))
	zones := []string{"za", "zb", "zc"}
	var members, ingesters []*member
	add := func(id string, ingester bool) *member {
		var join []string
		if len(members) > 0 {
			join = []string{members[rnd.IntN(len(members))].GossipAddr()}
		}
		cfg := clusterConfig(id, join...)
		addr := ""
		if ingester {
			cfg.Zone = zones[len(ingesters)%len(zones)]
			addr = fmt.Sprintf("127.0.0.1:%d", 10000+len(ingesters))
		}
		m := newMember(t, cfg, addr, nil)
		members = append(members, m)
		if ingester {
			ingesters = append(ingesters, m)
		}
		return m
	}
	for i := range 27 {
		add(fmt.Sprintf("ingester-%02d", i), true)
	}
	for i := range 3 {
		add(fmt.Sprintf("watcher-%d", i), false)
	}
	t.Cleanup(func() { stopAll(t, members) })
	start := time.Now()
	for _, m := range members {
		m.run()
	}

	eventually(t, members, 60*time.Second, func() bool {
		for _, m := range members {
			if m.Ready() != nil || len(m.ReadInstances()) != 27 {
				return false
			}
			for _, inst := range m.Instances() {
				if inst.State != ring.ACTIVE {
					return false
				}
			}
		}
		return sameRing(members)
	}, "30 members converge")
	t.Logf("30 members started at once converged in %s", time.Since(start).Round(time.Millisecond))
	watcher := members[len(members)-1]
	require.True(t, watcher.ZoneAwareReads())
	worst := 0.0
	for _, z := range zones {
		worst = max(worst, zoneMaxOverMean(watcher.Instances(), z))
	}
	t.Logf("max/mean share of its zone's token space after a parallel start of 27 ingesters in 3 zones: %.3f", worst)
	// As balanced as one by one: a joiner goes ACTIVE only once it holds
	// the entry of every ingester of its zone memberlist lists and the
	// older ones hold the tokens it plans for them, however slowly the
	// entries spread (join.go).
	require.LessOrEqual(t, worst, 1.10, "a parallel start balances")

	// LEAVING: writers skip it, readers still ask it.
	leaving := ingesters[26]
	setLeaving := time.Now()
	require.NoError(t, leaving.SetLeaving(context.Background()))
	seen := 0
	for _, m := range members {
		if inst, _ := find(m.Instances(), leaving.id); inst.State == ring.LEAVING {
			seen++
		}
	}
	t.Logf("SetLeaving returned after %s, when %d of 30 members saw LEAVING", time.Since(setLeaving).Round(time.Millisecond), seen)
	require.Eventually(t, func() bool {
		for _, m := range members {
			inst, _ := find(m.Instances(), leaving.id)
			if inst.State != ring.LEAVING {
				return false
			}
		}
		return true
	}, waitFor, tick, "LEAVING did not spread")
	for _, m := range members {
		_, ok := find(m.ReadInstances(), leaving.id)
		require.True(t, ok, "readers still ask a LEAVING instance")
		inst, _ := find(m.Instances(), leaving.id)
		for _, tok := range inst.Tokens {
			require.NotContains(t, getIDs(t, m.Ring, tok), leaving.id)
		}
	}

	// Two graceful leaves and two joins at once.
	changed := time.Now()
	leavers := []*member{leaving, ingesters[25]}
	for _, m := range leavers {
		m.cancel()
	}
	var joiners []*member
	for i := range 2 {
		j := add(fmt.Sprintf("ingester-new-%d", i), true)
		j.run()
		joiners = append(joiners, j)
	}
	live := slices.DeleteFunc(slices.Clone(members), func(m *member) bool { return slices.Contains(leavers, m) })
	eventually(t, live, waitFor, func() bool {
		for _, m := range live {
			insts := m.Instances()
			for _, l := range leavers {
				// LEFT, or already forgotten once the tombstone expired.
				if inst, ok := find(insts, l.id); ok && inst.State != ring.LEFT {
					return false
				}
			}
			for _, j := range joiners {
				if inst, _ := find(insts, j.id); inst.State != ring.ACTIVE {
					return false
				}
			}
			if len(m.ReadInstances()) != 27 {
				return false
			}
		}
		return sameRing(live)
	}, "leaves and joins converge")
	t.Logf("converged after two leaves and two joins in %s", time.Since(changed).Round(time.Millisecond))

	// A kill: after the heartbeat timeout the ingester is unhealthy
	// everywhere, still listed, and skipped by writers and readers.
	killed := ingesters[24]
	ring.Kill(killed.Ring)
	killedAt := time.Now()
	live = slices.DeleteFunc(live, func(m *member) bool { return m == killed })
	eventually(t, live, waitFor, func() bool {
		for _, m := range live {
			inst, _ := find(m.Instances(), killed.id)
			if _, healthy := find(m.ReadInstances(), killed.id); healthy || inst.State != ring.ACTIVE {
				return false
			}
		}
		return true
	}, "the killed ingester turns unhealthy")
	t.Logf("the killed ingester was unhealthy everywhere %s after the kill", time.Since(killedAt).Round(time.Millisecond))
	killedInst, _ := find(watcher.Instances(), killed.id)
	require.NotEmpty(t, killedInst.Tokens)
	for _, m := range live {
		for _, tok := range killedInst.Tokens {
			require.NotContains(t, getIDs(t, m.Ring, tok), killed.id, "writers skip an unhealthy instance")
		}
	}
	// Three other replicas each, once every member holds fresh heartbeats
	// of the others: on a loaded machine some arrive late, and for that
	// while a member skips those instances too.
	eventually(t, live, waitFor, func() bool {
		for _, m := range live {
			for _, tok := range killedInst.Tokens {
				if ids := getIDs(t, m.Ring, tok); len(ids) != 3 || slices.Contains(ids, killed.id) {
					return false
				}
			}
		}
		return true
	}, "writers find three replicas besides the killed ingester")

	// Auto-forget: the killed ingester becomes a tombstone everywhere.
	eventually(t, live, waitFor, func() bool {
		for _, m := range live {
			if inst, ok := find(m.Instances(), killed.id); ok && (inst.State != ring.LEFT || len(inst.Tokens) != 0) {
				return false
			}
		}
		return sameRing(live)
	}, "the killed ingester is forgotten")
	t.Logf("the killed ingester was forgotten everywhere %s after the kill", time.Since(killedAt).Round(time.Millisecond))
	forgotten := 0.0
	for _, m := range live {
		forgotten += counterWith(t, m.reg, "census_ring_instances_forgotten_total", "reason", "auto")
	}
	require.GreaterOrEqual(t, forgotten, 1.0)

	// Tombstones expire, everywhere, and stay expired.
	eventually(t, live, waitFor, func() bool {
		for _, m := range live {
			for _, id := range []string{killed.id, leaving.id, ingesters[25].id} {
				if _, ok := find(m.Instances(), id); ok {
					return false
				}
			}
		}
		return sameRing(live)
	}, "tombstones expire")
	require.Never(t, func() bool {
		for _, m := range live {
			if _, ok := find(m.Instances(), killed.id); ok {
				return true
			}
		}
		return false
	}, time.Second, tick, "an expired tombstone came back")

	// Every member routes every token alike (once each has seen the
	// latest heartbeats: health is judged on each member's own view).
	tokens := make([]uint32, 200)
	for i := range tokens {
		tokens[i] = rnd.Uint32()
	}
	eventually(t, live, waitFor, func() bool {
		for _, tok := range tokens {
			want := getIDs(t, watcher.Ring, tok)
			if len(want) != 3 {
				return false
			}
			for _, m := range live {
				if !slices.Equal(want, getIDs(t, m.Ring, tok)) {
					return false
				}
			}
		}
		return true
	}, "every member routes alike")
}

// zoneMaxOverMean returns the largest share of zone's token space that an
// instance of zone owns, over the mean share.
func zoneMaxOverMean(insts []ring.InstanceDesc, zone string) float64 {
	type owned struct {
		token uint32
		owner string
	}
	var tokens []owned
	shares := map[string]float64{}
	for _, inst := range insts {
		if inst.Zone != zone || len(inst.Tokens) == 0 {
			continue
		}
		shares[inst.ID] = 0
		for _, tok := range inst.Tokens {
			tokens = append(tokens, owned{tok, inst.ID})
		}
	}
	slices.SortFunc(tokens, func(a, b owned) int { return cmp.Compare(a.token, b.token) })
	for i, to := range tokens {
		prev := tokens[(i+len(tokens)-1)%len(tokens)].token
		shares[to.owner] += float64(to.token - prev) // wraps around as uint32
	}
	maxShare := 0.0
	for _, s := range shares {
		maxShare = max(maxShare, s)
	}
	return maxShare * float64(len(shares)) / (1 << 32)
}

func counterWith(t testing.TB, reg prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	m := findMetric(t, reg, name, label, value)
	if m == nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// eventually polls cond until it holds or timeout passes, and then fails
// with what and the members' state, which require.Eventually cannot show.
func eventually(t testing.TB, members []*member, timeout time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, m := range members {
				counts := map[string]int{}
				var odd []string
				for _, inst := range m.Instances() {
					counts[inst.State.String()]++
					if inst.State != ring.ACTIVE {
						odd = append(odd, fmt.Sprintf("%s:%s@%d", inst.ID, inst.State, inst.Heartbeat))
					}
				}
				fmt.Fprintf(&b, "\n%s: ready=%v read=%d states=%v checksum=%x %v", m.id, m.Ready(), len(m.ReadInstances()), counts, ring.Checksum(m.Ring), odd)
			}
			t.Fatalf("%s within %s:%s", what, timeout, b.String())
		}
		time.Sleep(tick)
	}
}

// partition cuts gossip between two sides of the members while split: their
// transports drop packets to the other side and refuse connections to it.
type partition struct {
	mu    sync.Mutex // guards the fields below
	side  map[string]int
	split bool
}

func (p *partition) setSplit(split bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.split = split
}

func (p *partition) cut(from, to string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.split && p.side[from] != p.side[to]
}

// configure returns the memberlist hook of a member on side: a transport
// that obeys the partition, and failure detection fast enough that a
// split of seconds outlasts memberlist's own healing (gossip to members it
// believes dead), so that rejoining is what merges the sides.
func (p *partition) configure(side int) func(*memberlist.Config) error {
	return func(c *memberlist.Config) error {
		nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{c.BindAddr}, BindPort: c.BindPort, Logger: c.Logger})
		if err != nil {
			return err
		}
		port := nt.GetAutoBindPort()
		c.BindPort, c.AdvertisePort = port, port
		self := net.JoinHostPort(c.BindAddr, strconv.Itoa(port))
		p.mu.Lock()
		p.side[self] = side
		p.mu.Unlock()
		c.Transport = &partitionedTransport{NetTransport: nt, self: self, p: p}
		c.ProbeInterval = 200 * time.Millisecond
		c.ProbeTimeout = 100 * time.Millisecond
		c.SuspicionMult = 2
		c.GossipToTheDeadTime = 500 * time.Millisecond
		return nil
	}
}

// partitionedTransport is memberlist's UDP/TCP transport with a partition
// in front of it.
type partitionedTransport struct {
	*memberlist.NetTransport
	self string
	p    *partition
}

var _ memberlist.NodeAwareTransport = (*partitionedTransport)(nil)

func (t *partitionedTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.p.cut(t.self, addr) {
		return time.Now(), nil // lost on the way
	}
	return t.NetTransport.WriteTo(b, addr)
}

func (t *partitionedTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.p.cut(t.self, a.Addr) {
		return time.Now(), nil
	}
	return t.NetTransport.WriteToAddress(b, a)
}

func (t *partitionedTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.p.cut(t.self, addr) {
		return nil, fmt.Errorf("dial %s: network is partitioned", addr)
	}
	return t.NetTransport.DialTimeout(addr, timeout)
}

func (t *partitionedTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.p.cut(t.self, a.Addr) {
		return nil, fmt.Errorf("dial %s: network is partitioned", a.Addr)
	}
	return t.NetTransport.DialAddressTimeout(a, timeout)
}

// TestRing_NetworkSplitHeals splits ten members into two halves for longer
// than it takes each half to declare the other dead and forget its
// ingesters; one half loses an ingester meanwhile and the other gains one.
// Once the split ends, the halves rejoin and every member ends up with the
// same descriptor: the forgotten ingesters, alive all along, registered
// again, the leaver gone and the joiner known everywhere.
func TestRing_NetworkSplitHeals(t *testing.T) {
	if testing.Short() {
		t.Skip("the split lasts seconds")
	}
	p := &partition{side: map[string]int{}}
	var members []*member
	for i := range 10 {
		var join []string
		if i > 0 {
			// A chain: only member 5 has a join address on the other side.
			join = []string{members[i-1].GossipAddr()}
		}
		addr := ""
		if i%5 != 4 {
			addr = fmt.Sprintf("127.0.0.1:%d", 11000+i)
		}
		m := newMember(t, clusterConfig(fmt.Sprintf("member-%d", i), join...), addr, p.configure(i/5))
		members = append(members, m)
	}
	t.Cleanup(func() { stopAll(t, members) })
	for _, m := range members {
		m.run()
	}
	sideA, sideB := members[:5], members[5:]
	eventually(t, members, waitFor, func() bool {
		for _, m := range members {
			if m.Ready() != nil || len(m.ReadInstances()) != 8 {
				return false
			}
		}
		return sameRing(members)
	}, "members converge before the split")

	p.setSplit(true)
	split := time.Now()
	// Each side forgets the other's ingesters.
	eventually(t, members, 30*time.Second, func() bool {
		for _, side := range [][]*member{sideA, sideB} {
			for _, m := range side {
				if len(m.ReadInstances()) != 4 {
					return false
				}
			}
		}
		// Forgotten: a tombstone, or already nothing.
		for _, m := range sideA {
			if inst, ok := find(m.Instances(), sideB[0].id); ok && inst.State != ring.LEFT {
				return false
			}
		}
		for _, m := range sideB {
			if inst, ok := find(m.Instances(), sideA[0].id); ok && inst.State != ring.LEFT {
				return false
			}
		}
		return true
	}, "each side forgets the other")
	t.Logf("each side forgot the other's ingesters %s into the split", time.Since(split).Round(time.Millisecond))

	// Meanwhile side A loses an ingester and side B gains one.
	leaver := sideA[0]
	leaver.stop(t)
	joiner := newMember(t, clusterConfig("member-new", sideB[1].GossipAddr()), "127.0.0.1:11010", p.configure(1))
	joiner.run()
	t.Cleanup(func() { joiner.stop(t) })
	live := slices.Concat(sideA[1:], sideB, []*member{joiner})
	eventually(t, live, waitFor, func() bool { return joiner.Ready() == nil && sameRing(sideB) && sameRing(sideA[1:]) }, "each side settles")

	p.setSplit(false)
	healed := time.Now()
	eventually(t, live, 30*time.Second, func() bool {
		for _, m := range live {
			if len(m.ReadInstances()) != 8 {
				return false // 4+4 ingesters, less the leaver, plus the joiner
			}
			if inst, ok := find(m.Instances(), leaver.id); ok && inst.State != ring.LEFT {
				return false
			}
			if inst, _ := find(m.Instances(), joiner.id); inst.State != ring.ACTIVE {
				return false
			}
		}
		return sameRing(live)
	}, "the split heals")
	t.Logf("the split of %s healed in %s", healed.Sub(split).Round(time.Millisecond), time.Since(healed).Round(time.Millisecond))
	for _, m := range live {
		for _, inst := range m.ReadInstances() {
			require.Equal(t, ring.ACTIVE, inst.State)
		}
	}
}

// freePort returns a loopback port that is free for both UDP and TCP now,
// for a member that must be known before it starts.
func freePort(t testing.TB) int {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		require.NoError(t, ln.Close())
		if err == nil {
			require.NoError(t, pc.Close())
			return port
		}
	}
	t.Fatal("no port free for both UDP and TCP")
	return 0
}

// TestRing_JoinInAnyOrder starts members whose join addresses are not up
// yet: each joins the next one, started after it, and the last joins the
// first through "localhost", a name that resolves to more than one
// address. They retry until a peer answers and converge.
func TestRing_JoinInAnyOrder(t *testing.T) {
	const n = 4
	ports := make([]int, n)
	for i := range ports {
		ports[i] = freePort(t)
	}
	start := func(i int) *member {
		join := fmt.Sprintf("127.0.0.1:%d", ports[(i+1)%n])
		if i == n-1 {
			join = fmt.Sprintf("localhost:%d", ports[0])
		}
		cfg := testConfig(fmt.Sprintf("ingester-%d", i), join)
		cfg.BindAddress = fmt.Sprintf("127.0.0.1:%d", ports[i])
		m := newMember(t, cfg, fmt.Sprintf("127.0.0.1:%d", 12000+i), nil)
		m.run()
		return m
	}
	// Member 0's join address is not bound yet: it retries.
	members := []*member{start(0)}
	require.Eventually(t, func() bool {
		err := members[0].Ready()
		return err != nil && strings.Contains(err.Error(), "not joined")
	}, waitFor, tick)
	for i := 1; i < n; i++ {
		members = append(members, start(i))
	}
	t.Cleanup(func() { stopAll(t, members) })
	eventually(t, members, waitFor, func() bool {
		for _, m := range members {
			if m.Ready() != nil || len(m.ReadInstances()) != n {
				return false
			}
		}
		return sameRing(members)
	}, "members started in any order converge")
}

// TestRing_SecretKey encrypts gossip with a key: members with the key,
// raw or base64, form a cluster; a member without a key and one with
// another key cannot join it, and the cluster never hears of them.
func TestRing_SecretKey(t *testing.T) {
	dir := t.TempDir()
	key := []byte("0123456789abcdef0123456789abcdef")
	base64File := filepath.Join(dir, "key.b64")
	require.NoError(t, os.WriteFile(base64File, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600))
	rawFile := filepath.Join(dir, "key.raw")
	require.NoError(t, os.WriteFile(rawFile, key, 0o600))
	otherFile := filepath.Join(dir, "other.raw")
	require.NoError(t, os.WriteFile(otherFile, []byte("fedcba9876543210"), 0o600))

	withKey := func(cfg ring.Config, file string) ring.Config {
		cfg.SecretKeyFile = file
		return cfg
	}
	a := newMember(t, withKey(testConfig("ingester-a"), base64File), "127.0.0.1:13000", nil)
	b := newMember(t, withKey(testConfig("ingester-b", a.GossipAddr()), rawFile), "127.0.0.1:13001", nil)
	noKey := newMember(t, testConfig("ingester-nokey", a.GossipAddr()), "127.0.0.1:13002", nil)
	otherKey := newMember(t, withKey(testConfig("ingester-otherkey", a.GossipAddr()), otherFile), "127.0.0.1:13003", nil)
	members := []*member{a, b, noKey, otherKey}
	t.Cleanup(func() { stopAll(t, members) })
	for _, m := range members {
		m.run()
	}

	eventually(t, members[:2], waitFor, func() bool {
		return a.Ready() == nil && b.Ready() == nil && len(a.ReadInstances()) == 2 && sameRing(members[:2])
	}, "members with the key form a cluster")
	require.Never(t, func() bool {
		for _, m := range []*member{a, b} {
			for _, id := range []string{noKey.id, otherKey.id} {
				if _, ok := find(m.Instances(), id); ok {
					return true
				}
			}
		}
		return noKey.Ready() == nil || otherKey.Ready() == nil
	}, 2*time.Second, tick, "a member without the key joined")
	for _, m := range []*member{noKey, otherKey} {
		require.ErrorContains(t, m.Ready(), "not joined the memberlist cluster yet")
		require.Empty(t, m.Instances())
	}
}

// TestRing_UnwritableTokensFileDoesNotStopTheIngester: an ingester whose
// tokens file cannot be written (a full disk) still joins and goes ACTIVE,
// its tokens kept in the ring.
func TestRing_UnwritableTokensFileDoesNotStopTheIngester(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "not-a-dir")
	require.NoError(t, os.WriteFile(blocker, nil, 0o644))
	cfg := testConfig("ingester-a")
	cfg.ReplicationFactor = 1
	cfg.TokensFile = filepath.Join(blocker, "ring-tokens.json")
	m := startMember(t, cfg, "127.0.0.1:9095")
	require.Eventually(t, func() bool { return m.Ready() == nil }, waitFor, 10*time.Millisecond, "ready: %v", m.Ready())
	insts := m.Instances()
	require.Len(t, insts, 1)
	require.Equal(t, ring.ACTIVE, insts[0].State)
	require.Len(t, insts[0].Tokens, cfg.Tokens)
}
