package ring

import (
	"context"
	"encoding/json"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// newTestRing returns a Ring without memberlist whose clock reads *now.
func newTestRing(t testing.TB, id, instanceAddr string, now *time.Time, reg prometheus.Registerer) *Ring {
	t.Helper()
	return newTestRingWith(t, id, instanceAddr, now, reg, func(*Config) {})
}

// newTestRingWith is newTestRing with a config modified by modify.
func newTestRingWith(t testing.TB, id, instanceAddr string, now *time.Time, reg prometheus.Registerer, modify func(*Config)) *Ring {
	t.Helper()
	cfg := Config{
		BindAddress:       "127.0.0.1:0",
		InstanceID:        id,
		ReplicationFactor: 3,
		Tokens:            4,
		Zone:              "z1",
		HeartbeatPeriod:   time.Second,
		HeartbeatTimeout:  10 * time.Second,
		AutoForgetAfter:   60 * time.Second,
		TombstoneTimeout:  30 * time.Second,
	}
	modify(&cfg)
	require.NoError(t, cfg.Validate())
	r := newRing(cfg, id, instanceAddr, nil, reg)
	r.now = func() time.Time { return *now }
	return r
}

// setDesc replaces r's descriptor, as gossip would.
func setDesc(r *Ring, d desc) {
	r.descMtx.Lock()
	defer r.descMtx.Unlock()
	r.desc = d
	r.rebuildLocked()
}

// entry returns r's current entry for id.
func entry(t testing.TB, r *Ring, id string) InstanceDesc {
	t.Helper()
	r.descMtx.Lock()
	defer r.descMtx.Unlock()
	inst, ok := r.desc[id]
	require.True(t, ok, "instance %s is not in the ring", id)
	return inst
}

func TestRing_Register(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	other := InstanceDesc{ID: "other", Addr: "o:9095", Zone: "z1", State: ACTIVE, Tokens: []uint32{1 << 30, 2 << 30, 3 << 30}, Heartbeat: 999_000}
	tests := []struct {
		name           string
		previous       *InstanceDesc // this instance's entry already in the ring
		file           string        // contents of the tokens file; empty: none
		noFile         bool          // TokensFile not configured
		leaving        bool          // SetLeaving was called before registering
		wantState      State
		wantTokens     []uint32 // nil: freshly chosen
		wantHeartbeat  int64
		wantRegistered int64 // 0: now
	}{
		{name: "new instance chooses tokens and joins", wantState: JOINING, wantHeartbeat: 1_000_000},
		{name: "new instance without a tokens file", noFile: true, wantState: JOINING, wantHeartbeat: 1_000_000},
		{
			// [10 20 30 40] would own almost nothing beside "other".
			name:           "a tokens file that does not fit the ring is replaced, its registration time kept",
			file:           `{"tokens":[10,20,30,40],"registered_at":123}`,
			previous:       &InstanceDesc{ID: "self", Addr: "old:9095", State: LEFT, Heartbeat: 990_000},
			wantState:      JOINING,
			wantHeartbeat:  1_000_000,
			wantRegistered: 123,
		},
		{
			name:          "an old tokens file without a registration time that does not fit",
			file:          `{"tokens":[10,20,30,40]}`,
			previous:      &InstanceDesc{ID: "self", Addr: "old:9095", State: LEFT, Heartbeat: 990_000},
			wantState:     JOINING,
			wantHeartbeat: 1_000_000,
		},
		{
			name:          "tokens it owns in the ring win over the tokens file",
			file:          `{"tokens":[10,20,30,40]}`,
			previous:      &InstanceDesc{ID: "self", Addr: "old:9095", State: ACTIVE, Tokens: []uint32{11, 21, 31, 41}, Heartbeat: 990_000},
			wantState:     ACTIVE,
			wantTokens:    []uint32{11, 21, 31, 41},
			wantHeartbeat: 1_000_000,
		},
		{
			name:           "without a file, restart reuses the tokens of the previous incarnation",
			previous:       &InstanceDesc{ID: "self", Addr: "old:9095", State: ACTIVE, Tokens: []uint32{10, 20, 30, 40}, Heartbeat: 990_000, RegisteredAt: 456},
			wantState:      ACTIVE,
			wantTokens:     []uint32{10, 20, 30, 40},
			wantHeartbeat:  1_000_000,
			wantRegistered: 456,
		},
		{
			name:          "heartbeat beats a previous incarnation with a clock ahead",
			previous:      &InstanceDesc{ID: "self", Addr: "old:9095", State: LEAVING, Tokens: []uint32{10, 20, 30, 40}, Heartbeat: 1_005_000},
			wantState:     ACTIVE,
			wantTokens:    []uint32{10, 20, 30, 40},
			wantHeartbeat: 1_005_001,
		},
		{
			name:          "after a tombstone new tokens are chosen",
			previous:      &InstanceDesc{ID: "self", Addr: "old:9095", State: LEFT, Heartbeat: 990_000},
			wantState:     JOINING,
			wantHeartbeat: 1_000_000,
		},
		{
			name:          "a different token count chooses new tokens",
			file:          `{"tokens":[10,20]}`,
			previous:      &InstanceDesc{ID: "self", Addr: "old:9095", State: ACTIVE, Tokens: []uint32{10, 20}, Heartbeat: 990_000},
			wantState:     JOINING,
			wantHeartbeat: 1_000_000,
		},
		{name: "a corrupt tokens file is replaced", file: `{"tokens":[10,`, wantState: JOINING, wantHeartbeat: 1_000_000},
		{name: "unsorted tokens in the file are refused", file: `{"tokens":[40,30,20,10]}`, wantState: JOINING, wantHeartbeat: 1_000_000},
		{name: "SetLeaving before registering", leaving: true, wantState: LEAVING, wantHeartbeat: 1_000_000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tokensFile := filepath.Join(t.TempDir(), "data", "tokens")
			if tc.file != "" {
				require.NoError(t, os.MkdirAll(filepath.Dir(tokensFile), 0o755))
				require.NoError(t, os.WriteFile(tokensFile, []byte(tc.file), 0o644))
			}
			r := newTestRingWith(t, "self", "self:9095", &now, nil, func(c *Config) {
				if !tc.noFile {
					c.TokensFile = tokensFile
				}
			})
			d := desc{"other": other}
			if tc.previous != nil {
				d["self"] = *tc.previous
			}
			setDesc(r, d)
			require.ErrorContains(t, r.Ready(), "not running yet")
			r.started.Store(true)
			require.ErrorContains(t, r.Ready(), "not joined")
			r.joined.Store(true)
			if tc.leaving {
				require.NoError(t, r.SetLeaving(context.Background()))
			}

			joining, err := r.register()
			require.NoError(t, err)
			require.Equal(t, tc.wantState == JOINING, joining)

			self := entry(t, r, "self")
			require.Equal(t, "self:9095", self.Addr)
			require.Equal(t, "z1", self.Zone)
			require.Equal(t, tc.wantState, self.State)
			require.Equal(t, tc.wantHeartbeat, self.Heartbeat)
			wantRegistered := tc.wantRegistered
			if wantRegistered == 0 {
				wantRegistered = 1_000_000
			}
			require.Equal(t, wantRegistered, self.RegisteredAt)
			if tc.wantState == ACTIVE {
				require.NoError(t, r.Ready())
			} else {
				require.ErrorContains(t, r.Ready(), "is "+tc.wantState.String()+" in the ring, not ACTIVE")
			}
			if tc.wantTokens != nil {
				require.Equal(t, tc.wantTokens, self.Tokens)
			} else {
				require.Len(t, self.Tokens, 4)
				require.True(t, slices.IsSorted(self.Tokens))
				for _, tok := range other.Tokens {
					require.NotContains(t, self.Tokens, tok)
				}
				if tc.previous != nil {
					require.NotEqual(t, tc.previous.Tokens, self.Tokens)
				}
			}
			if !tc.noFile {
				saved, err := readTokens(tokensFile)
				require.NoError(t, err)
				require.Equal(t, self.Tokens, saved.Tokens, "the tokens file holds the tokens in use")
				if tc.file == "" || tc.wantTokens == nil {
					require.Equal(t, self.RegisteredAt, saved.RegisteredAt)
				}
			}
			require.Equal(t, []InstanceDesc{other, self}, r.Instances())
			require.Equal(t, 1, r.queue.NumQueued(), "the registration is broadcast")
		})
	}
}

// An ingester whose tokens file cannot be written (a full disk) registers
// all the same: its tokens are in the ring.
func TestRing_RegistersWhenTokensCannotBeSaved(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(blocker, nil, 0o644))
	r := newTestRingWith(t, "self", "self:9095", &now, nil, func(c *Config) {
		c.TokensFile = filepath.Join(blocker, "tokens") // a file is in the way of the directory
	})
	_, err := r.register()
	require.NoError(t, err)
	require.Len(t, r.Instances(), 1)
	require.NotEmpty(t, r.Instances()[0].Tokens)
}

func TestRing_SettleJoin(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	active := InstanceDesc{ID: "a", Addr: "a:9095", Zone: "z1", State: ACTIVE, Tokens: []uint32{1 << 30, 3 << 30}, Heartbeat: 999_000, RegisteredAt: 500_000}

	t.Run("no clash: ACTIVE", func(t *testing.T) {
		r := newTestRing(t, "self", "self:9095", &now, nil)
		r.started.Store(true)
		r.joined.Store(true)
		setDesc(r, desc{"a": active})
		joining, err := r.register()
		require.NoError(t, err)
		require.True(t, joining)
		chosen := entry(t, r, "self").Tokens

		// A younger instance that chose at the same time is not this
		// one's problem, nor is an instance of another zone.
		younger := InstanceDesc{ID: "b", Zone: "z1", State: JOINING, Tokens: chosen, Heartbeat: 1_000_100, RegisteredAt: 1_000_100}
		otherZone := InstanceDesc{ID: "c", Zone: "z2", State: JOINING, Tokens: chosen, Heartbeat: 1_000_000, RegisteredAt: 900_000}
		r.mergeRemote(desc{"b": younger, "c": otherZone}, false)

		now = now.Add(time.Second)
		again, err := r.settleJoin()
		require.NoError(t, err)
		require.False(t, again)
		self := entry(t, r, "self")
		require.Equal(t, ACTIVE, self.State)
		require.Equal(t, chosen, self.Tokens)
		require.Equal(t, int64(1_001_000), self.Heartbeat)
		require.NoError(t, r.Ready())
	})

	t.Run("an older instance chose at the same time: choose again", func(t *testing.T) {
		now := time.UnixMilli(1_000_000)
		path := filepath.Join(t.TempDir(), "tokens")
		r := newTestRingWith(t, "self", "self:9095", &now, nil, func(c *Config) { c.TokensFile = path })
		setDesc(r, desc{"a": active})
		_, err := r.register()
		require.NoError(t, err)
		chosen := entry(t, r, "self").Tokens

		// "b" registered a millisecond earlier, against a ring without
		// this instance, and chose tokens that split the same ranges.
		older := InstanceDesc{ID: "b", Addr: "b:9095", Zone: "z1", State: JOINING, Heartbeat: 999_999, RegisteredAt: 999_999}
		older.Tokens = chooseTokens(joinRand(older), 4, 3, "z1", []InstanceDesc{active})
		r.mergeRemote(desc{"b": older}, false)
		again, err := r.settleJoin()
		require.NoError(t, err)
		require.True(t, again)
		self := entry(t, r, "self")
		require.Equal(t, JOINING, self.State)
		require.NotEqual(t, chosen, self.Tokens)
		require.Equal(t, int64(1_000_000), self.RegisteredAt, "registration time is kept, so the order of the group is stable")
		saved, err := readTokens(path)
		require.NoError(t, err)
		require.Equal(t, tokensFile{Tokens: self.Tokens, RegisteredAt: 1_000_000}, saved)
		// Together the three instances are balanced, as if "b" had
		// joined first and this one after it.
		s := newSnapshot(r.desc, nil)
		require.InDeltaSlice(t, []float64{1.0 / 3, 1.0 / 3, 1.0 / 3}, s.ownership, 0.02)

		// "b" holds the tokens this one plans for it, so both see the
		// same ring: nothing changed, ACTIVE, without waiting for "b".
		again, err = r.settleJoin()
		require.NoError(t, err)
		require.False(t, again)
		require.Equal(t, ACTIVE, entry(t, r, "self").State)
		require.Equal(t, self.Tokens, entry(t, r, "self").Tokens)
	})

	t.Run("an older instance that holds other tokens than planned is waited for", func(t *testing.T) {
		now := time.UnixMilli(1_000_000)
		r := newTestRing(t, "self", "self:9095", &now, nil)
		setDesc(r, desc{"a": active})
		_, err := r.register()
		require.NoError(t, err)

		// "b" is older and still holds tokens that fit no ring: its
		// plan, and so this one's, will change once it takes new ones.
		older := InstanceDesc{ID: "b", Addr: "b:9095", Zone: "z1", State: JOINING, Tokens: []uint32{1, 2, 3, 4}, Heartbeat: 999_999, RegisteredAt: 999_999}
		r.mergeRemote(desc{"b": older}, false)
		for range 3 {
			_, err := r.settleJoin()
			require.NoError(t, err)
			require.Equal(t, JOINING, entry(t, r, "self").State)
		}
		mine := entry(t, r, "self").Tokens

		// "b" takes the tokens of the plan (as it computes it too).
		older.Tokens = r.joiningTokens(r.snap.Load(), older)
		older.Heartbeat++
		r.mergeRemote(desc{"b": older}, false)
		again, err := r.settleJoin()
		require.NoError(t, err)
		require.False(t, again)
		require.Equal(t, ACTIVE, entry(t, r, "self").State)
		require.Equal(t, mine, entry(t, r, "self").Tokens, "this one's plan already counted on the tokens b took")
		s := newSnapshot(r.desc, nil)
		require.InDeltaSlice(t, []float64{1.0 / 3, 1.0 / 3, 1.0 / 3}, s.ownership, 0.02)
	})

	t.Run("an ingester memberlist lists is waited for until its entry arrives", func(t *testing.T) {
		now := time.UnixMilli(1_000_000)
		r := newTestRingWith(t, "self", "self:9095", &now, nil, func(c *Config) { c.AutoForgetAfter = time.Minute })
		setDesc(r, desc{"a": active})
		_, err := r.register()
		require.NoError(t, err)
		// Peers of another zone, and watchers, are not waited for.
		addPeer(r, "c-1", memberMeta{ID: "c", Zone: "z2"})
		addPeer(r, "watcher-1", memberMeta{})
		addPeer(r, "b-1", memberMeta{ID: "b", Zone: "z1"})
		for range 3 {
			joining, err := r.settleJoin()
			require.NoError(t, err)
			require.True(t, joining, "the entry of b is not here yet")
		}
		// A tombstone of b, from a member that missed its heartbeats:
		// b is alive, and registers again.
		r.mergeRemote(desc{"b": {ID: "b", Addr: "b:9095", Zone: "z1", State: LEFT, Heartbeat: 999_000, RegisteredAt: 999_999}}, false)
		joining, err := r.settleJoin()
		require.NoError(t, err)
		require.True(t, joining, "b is only a tombstone here")
		// b registered before this one, against a ring without it.
		older := InstanceDesc{ID: "b", Addr: "b:9095", Zone: "z1", State: JOINING, Heartbeat: 999_999, RegisteredAt: 999_999}
		older.Tokens = chooseTokens(joinRand(older), 4, 3, "z1", []InstanceDesc{active})
		r.mergeRemote(desc{"b": older}, false)
		joining, err = r.settleJoin()
		require.NoError(t, err)
		require.True(t, joining, "chose again, around b")
		joining, err = r.settleJoin()
		require.NoError(t, err)
		require.False(t, joining)
		s := newSnapshot(r.desc, nil)
		require.InDeltaSlice(t, []float64{1.0 / 3, 1.0 / 3, 1.0 / 3}, s.ownership, 0.02)
	})

	t.Run("a listed ingester without an entry for twice AutoForgetAfter is not waited for", func(t *testing.T) {
		now := time.UnixMilli(1_000_000)
		r := newTestRingWith(t, "self", "self:9095", &now, nil, func(c *Config) { c.AutoForgetAfter = time.Minute })
		setDesc(r, desc{"a": active})
		_, err := r.register()
		require.NoError(t, err)
		// A hung ingester: memberlist still lists it, but it was
		// forgotten before this one joined.
		addPeer(r, "hung-1", memberMeta{ID: "hung", Zone: "z1"})
		joining, err := r.settleJoin()
		require.NoError(t, err)
		require.True(t, joining)
		now = now.Add(2*time.Minute - time.Millisecond)
		joining, err = r.settleJoin()
		require.NoError(t, err)
		require.True(t, joining)
		now = now.Add(time.Millisecond)
		joining, err = r.settleJoin()
		require.NoError(t, err)
		require.False(t, joining)
	})

	t.Run("every member computes the same tokens for a group", func(t *testing.T) {
		// Three instances registered at the same time; each member,
		// whichever it is, computes the same tokens for each of them.
		group := []InstanceDesc{
			{ID: "j1", Zone: "z1", State: JOINING, Tokens: make([]uint32, 4), Heartbeat: 1_000_000, RegisteredAt: 1_000_000},
			{ID: "j2", Zone: "z1", State: JOINING, Tokens: make([]uint32, 4), Heartbeat: 1_000_000, RegisteredAt: 1_000_000},
			{ID: "j3", Zone: "z1", State: JOINING, Tokens: make([]uint32, 4), Heartbeat: 1_000_000, RegisteredAt: 1_000_000},
		}
		d := desc{"a": active}
		for _, inst := range group {
			d[inst.ID] = inst
		}
		s := newSnapshot(d, nil)
		want := map[string][]uint32{}
		for _, viewer := range []string{"j1", "j2", "j3", "watcher"} {
			r := newTestRingWith(t, viewer, "", &now, nil, func(c *Config) {})
			for _, inst := range group {
				got := r.joiningTokens(s, inst)
				if want[inst.ID] == nil {
					want[inst.ID] = got
				}
				require.Equal(t, want[inst.ID], got, "%s computed by %s", inst.ID, viewer)
			}
		}
		final := desc{"a": active}
		for _, inst := range group {
			inst.Tokens = want[inst.ID]
			final[inst.ID] = inst
		}
		require.InDeltaSlice(t, []float64{0.25, 0.25, 0.25, 0.25}, newSnapshot(final, nil).ownership, 0.02)
	})

	t.Run("SetLeaving while JOINING wins", func(t *testing.T) {
		r := newTestRing(t, "self", "self:9095", &now, nil)
		_, err := r.register()
		require.NoError(t, err)
		require.NoError(t, r.SetLeaving(context.Background()))
		again, err := r.settleJoin()
		require.NoError(t, err)
		require.False(t, again)
		require.Equal(t, LEAVING, entry(t, r, "self").State)
	})
}

// addPeer lists a memberlist member named name, with the metadata of m
// (none when m.ID is empty), as alive since now.
func addPeer(r *Ring, name string, m memberMeta) {
	n := &memberlist.Node{Name: name, Addr: net.IPv4(127, 0, 0, 1), Port: 7946}
	if m.ID != "" {
		b, err := json.Marshal(m)
		if err != nil {
			panic(err)
		}
		n.Meta = b
	}
	events{r}.NotifyJoin(n)
}

func TestRing_TickAndLeave(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	reg := prometheus.NewPedanticRegistry()
	r := newTestRing(t, "self", "self:9095", &now, reg)
	setDesc(r, desc{
		"gone":  {ID: "gone", State: LEFT, Heartbeat: 1_000_000 - 30_000 - 1}, // older than the tombstone timeout
		"quiet": {ID: "quiet", State: ACTIVE, Tokens: []uint32{1}, Heartbeat: 1_000_000 - 10_001},
	})
	r.joined.Store(true)
	joining, err := r.register()
	require.NoError(t, err)
	require.True(t, joining)
	_, err = r.settleJoin()
	require.NoError(t, err)
	self := entry(t, r, "self")

	now = now.Add(time.Second)
	r.tick()
	self = entry(t, r, "self")
	require.Equal(t, int64(1_001_000), self.Heartbeat)
	require.Equal(t, []string{"quiet", "self"}, ids(r.Instances()), "old tombstone forgotten")
	require.Equal(t, []string{"self"}, ids(r.ReadInstances()), "quiet is unhealthy")
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP census_ring_members Instances in this member's view of the ring by state; instances with a stale heartbeat count as UNHEALTHY unless LEFT.
# TYPE census_ring_members gauge
census_ring_members{state="ACTIVE"} 1
census_ring_members{state="JOINING"} 0
census_ring_members{state="LEAVING"} 0
census_ring_members{state="LEFT"} 0
census_ring_members{state="UNHEALTHY"} 1
`), "census_ring_members"))
	own := testutil.ToFloat64(r.metrics.ownership)
	// quiet's token 1 owns the wrap-around from self's last token.
	require.InDelta(t, 1-float64(uint64(1<<32)-uint64(self.Tokens[3])+1)/(1<<32), own, 1e-12)

	PauseHeartbeats(r)
	now = now.Add(time.Second)
	r.tick()
	require.Equal(t, int64(1_001_000), entry(t, r, "self").Heartbeat, "paused heartbeats")
	r.hooks.heartbeatsPaused.Store(false)

	r.leave()
	self = entry(t, r, "self")
	require.Equal(t, LEFT, self.State)
	require.Empty(t, self.Tokens)
	require.Equal(t, int64(1_002_001), self.Heartbeat, "LEAVING, then LEFT a millisecond later")
	require.Equal(t, []string{"quiet", "self"}, ids(r.Instances()))
	require.Empty(t, r.ReadInstances())
}

func TestRing_AutoForget(t *testing.T) {
	fresh := InstanceDesc{ID: "fresh", Addr: "f:9095", State: ACTIVE, Tokens: []uint32{1}, Heartbeat: 1_000_000}
	unhealthy := InstanceDesc{ID: "unhealthy", Addr: "u:9095", State: ACTIVE, Tokens: []uint32{2}, Heartbeat: 1_000_000 - 59_999, RegisteredAt: 5}
	stale := InstanceDesc{ID: "stale", Addr: "s:9095", Zone: "z2", State: LEAVING, Tokens: []uint32{3}, Heartbeat: 1_000_000 - 60_001, RegisteredAt: 7}
	tomb := InstanceDesc{ID: "stale", Addr: "s:9095", Zone: "z2", State: LEFT, Heartbeat: 1_000_000 - 60_000, RegisteredAt: 7}

	t.Run("tombstone older than the tombstone timeout", func(t *testing.T) {
		now := time.UnixMilli(1_000_000)
		r := newTestRing(t, "watcher", "", &now, nil) // auto-forget 60s, tombstones 30s
		setDesc(r, desc{"fresh": fresh, "unhealthy": unhealthy, "stale": stale})
		r.tick()
		require.Equal(t, []string{"fresh", "unhealthy"}, ids(r.Instances()), "stale is forgotten, and its tombstone expired at once")
		require.Equal(t, unhealthy, entry(t, r, "unhealthy"), "unhealthy, but not for AutoForgetAfter yet")
		require.Zero(t, r.queue.NumQueued(), "an expired tombstone is not gossiped")
		require.InDelta(t, 1, testutil.ToFloat64(r.metrics.forgotten.WithLabelValues(forgetAuto)), 0)

		// A member that has not forgotten it yet gossips the stale entry
		// back: it is dropped.
		r.mergeRemote(desc{"stale": stale, "fresh": fresh}, true)
		require.Equal(t, []string{"fresh", "unhealthy"}, ids(r.Instances()))
		require.Zero(t, r.queue.NumQueued())

		now = now.Add(2 * time.Second)
		r.tick()
		require.Equal(t, []string{"fresh"}, ids(r.Instances()))
		require.InDelta(t, 2, testutil.ToFloat64(r.metrics.forgotten.WithLabelValues(forgetAuto)), 0)
	})

	t.Run("tombstone younger than the tombstone timeout", func(t *testing.T) {
		now := time.UnixMilli(1_000_000)
		r := newTestRingWith(t, "watcher", "", &now, nil, func(c *Config) { c.TombstoneTimeout = 2 * time.Minute })
		setDesc(r, desc{"fresh": fresh, "stale": stale})
		r.tick()
		require.Equal(t, tomb, entry(t, r, "stale"), "the tombstone buries the version seen, no newer one")
		require.Equal(t, 1, r.queue.NumQueued(), "the tombstone is gossiped")

		// The stale entry loses; a newer heartbeat of the instance (it was
		// only cut off from this member) wins.
		r.mergeRemote(desc{"stale": stale}, false)
		require.Equal(t, tomb, entry(t, r, "stale"))
		alive := stale
		alive.Heartbeat = 1_000_000
		r.mergeRemote(desc{"stale": alive}, false)
		require.Equal(t, alive, entry(t, r, "stale"))
		setDesc(r, desc{"fresh": fresh, "stale": tomb})

		// The tombstone expires TombstoneTimeout after its heartbeat.
		now = time.UnixMilli(tomb.Heartbeat + 120_000)
		r.tick()
		require.Contains(t, ids(r.Instances()), "stale")
		now = now.Add(time.Millisecond)
		r.tick()
		require.NotContains(t, ids(r.Instances()), "stale")
		// Nor does gossip bring it back.
		r.mergeRemote(desc{"stale": tomb}, false)
		require.NotContains(t, ids(r.Instances()), "stale")
	})

	t.Run("disabled", func(t *testing.T) {
		now := time.UnixMilli(1_000_000)
		r := newTestRingWith(t, "watcher", "", &now, nil, func(c *Config) { c.AutoForgetAfter = 0 })
		setDesc(r, desc{"stale": stale})
		r.tick()
		require.Equal(t, stale, entry(t, r, "stale"))
	})
}

func TestRing_ForgottenIngesterRegistersAgain(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	r := newTestRing(t, "self", "self:9095", &now, nil)
	_, err := r.register()
	require.NoError(t, err)
	_, err = r.settleJoin()
	require.NoError(t, err)
	tokens := entry(t, r, "self").Tokens

	// Another member, cut off from this one, forgot it a minute later.
	forgotten := entry(t, r, "self")
	forgotten.State, forgotten.Tokens, forgotten.Heartbeat = LEFT, nil, 1_060_000
	r.mergeRemote(desc{"self": forgotten}, true)
	require.Equal(t, LEFT, entry(t, r, "self").State)

	// Its next heartbeat, though its clock is behind, wins.
	now = now.Add(time.Second)
	r.tick()
	self := entry(t, r, "self")
	require.Equal(t, ACTIVE, self.State)
	require.Equal(t, tokens, self.Tokens)
	require.Equal(t, int64(1_060_001), self.Heartbeat)
}

func TestRing_Forget(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	base := desc{
		"healthy":   {ID: "healthy", State: ACTIVE, Tokens: []uint32{1}, Heartbeat: 995_000},
		"unhealthy": {ID: "unhealthy", Addr: "u:9095", State: ACTIVE, Tokens: []uint32{2}, Heartbeat: 989_999, RegisteredAt: 3},
		"left":      {ID: "left", State: LEFT, Heartbeat: 900_000},
	}
	tests := []struct {
		name    string
		id      string
		wantErr error
		wantMsg string
	}{
		{name: "unhealthy", id: "unhealthy"},
		{name: "healthy", id: "healthy", wantErr: errNotForgettable, wantMsg: `forget "healthy": it heartbeated 5s ago, within --ring.heartbeat-timeout (10s)`},
		{name: "tombstone", id: "left", wantErr: errNotForgettable, wantMsg: `forget "left": it is already LEFT`},
		{name: "unknown", id: "nobody", wantErr: errUnknownInstance, wantMsg: `forget "nobody": no such instance in the ring`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRing(t, "watcher", "", &now, nil)
			setDesc(r, maps.Clone(base))
			err := r.Forget(tc.id)
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				require.ErrorContains(t, err, tc.wantMsg)
				require.Zero(t, r.queue.NumQueued())
				return
			}
			require.NoError(t, err)
			require.Equal(t, InstanceDesc{ID: "unhealthy", Addr: "u:9095", State: LEFT, Heartbeat: 990_000, RegisteredAt: 3}, entry(t, r, "unhealthy"))
			require.Equal(t, 1, r.queue.NumQueued())
			require.InDelta(t, 1, testutil.ToFloat64(r.metrics.forgotten.WithLabelValues(forgetManual)), 0)
		})
	}
}

func TestRing_SetLeaving(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	r := newTestRing(t, "self", "self:9095", &now, nil)
	other := InstanceDesc{ID: "other", State: ACTIVE, Tokens: []uint32{1 << 31}, Heartbeat: 1_000_000}
	setDesc(r, desc{"other": other})
	r.started.Store(true)
	r.joined.Store(true)
	_, err := r.register()
	require.NoError(t, err)
	_, err = r.settleJoin()
	require.NoError(t, err)
	require.NoError(t, r.Ready())

	now = now.Add(time.Second)
	require.NoError(t, r.SetLeaving(context.Background()))
	self := entry(t, r, "self")
	require.Equal(t, LEAVING, self.State)
	require.Len(t, self.Tokens, 4, "a LEAVING instance keeps its tokens")
	require.Equal(t, int64(1_001_000), self.Heartbeat)
	require.ErrorContains(t, r.Ready(), "LEAVING")
	require.Equal(t, []string{"other", "self"}, ids(r.ReadInstances()), "readers still ask it")
	for _, tok := range self.Tokens {
		got, err := r.Get(tok, nil)
		require.NoError(t, err)
		require.Equal(t, []string{"other"}, ids(got), "writers skip it")
	}

	// Heartbeats keep it LEAVING, and a second call changes nothing.
	now = now.Add(time.Second)
	r.tick()
	require.Equal(t, LEAVING, entry(t, r, "self").State)
	require.NoError(t, r.SetLeaving(context.Background()))
	require.Equal(t, int64(1_002_000), entry(t, r, "self").Heartbeat)

	watcher := newTestRing(t, "watcher", "", &now, nil)
	require.ErrorContains(t, watcher.SetLeaving(context.Background()), "not an ingester")
}

func TestRing_Status(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	r := newTestRing(t, "watcher", "", &now, nil)
	setDesc(r, desc{
		"ing-1": {ID: "ing-1", Addr: "10.0.0.1:9095", Zone: "z1", State: ACTIVE, Tokens: []uint32{0, 1 << 31}, Heartbeat: 999_500, RegisteredAt: 900_000},
		"ing-2": {ID: "ing-2", Addr: "10.0.0.2:9095", Zone: "z2", State: ACTIVE, Tokens: []uint32{1 << 30}, Heartbeat: 980_000, RegisteredAt: 900_000},
		"ing-3": {ID: "ing-3", Addr: "10.0.0.3:9095", State: LEFT, Heartbeat: 995_000, RegisteredAt: 800_000},
		"ing-4": {ID: "ing-4", Addr: "10.0.0.4:9095", Zone: "z3", State: JOINING, Heartbeat: 999_000, RegisteredAt: 999_000},
	})
	want := []InstanceStatus{
		{ID: "ing-1", Zone: "z1", State: ACTIVE, Addr: "10.0.0.1:9095", Tokens: 2, OwnershipPercent: 75, Heartbeat: 999_500, HeartbeatAgeSeconds: 0.5, RegisteredAt: 900_000, Healthy: true},
		{ID: "ing-2", Zone: "z2", State: ACTIVE, Addr: "10.0.0.2:9095", Tokens: 1, OwnershipPercent: 25, Heartbeat: 980_000, HeartbeatAgeSeconds: 20, RegisteredAt: 900_000, Healthy: false},
		{ID: "ing-3", State: LEFT, Addr: "10.0.0.3:9095", Heartbeat: 995_000, HeartbeatAgeSeconds: 5, RegisteredAt: 800_000, Healthy: false},
		{ID: "ing-4", Zone: "z3", State: JOINING, Addr: "10.0.0.4:9095", Heartbeat: 999_000, HeartbeatAgeSeconds: 1, RegisteredAt: 999_000, Healthy: true},
	}

	t.Run("json", func(t *testing.T) {
		req := httptest.NewRequest(http.MethodGet, "/ring", nil)
		req.Header.Set("Accept", "application/json, text/plain")
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		require.Equal(t, http.StatusOK, rec.Code)
		require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
		var got []InstanceStatus
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &got))
		require.Equal(t, want, got)
		require.Contains(t, rec.Body.String(), `"state":"LEFT"`)
	})

	t.Run("html", func(t *testing.T) {
		req := httptest.NewRequest(http.MethodGet, "/ring", nil)
		req.Header.Set("Accept", "text/html")
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		require.Equal(t, http.StatusOK, rec.Code)
		require.Equal(t, "text/html; charset=utf-8", rec.Header().Get("Content-Type"))
		body := rec.Body.String()
		for _, row := range []string{
			`<tr><td>ing-1</td><td>z1</td><td>ACTIVE</td><td>10.0.0.1:9095</td><td>2</td><td>75.00%</td><td>500ms ago</td><td>healthy</td><td></td></tr>`,
			`<tr class="unhealthy"><td>ing-2</td><td>z2</td><td>ACTIVE</td><td>10.0.0.2:9095</td><td>1</td><td>25.00%</td><td>20s ago</td><td>unhealthy</td><td><form method="post"><input type="hidden" name="forget" value="ing-2"><button type="submit">Forget</button></form></td></tr>`,
			`<tr class="unhealthy"><td>ing-3</td><td></td><td>LEFT</td><td>10.0.0.3:9095</td><td>0</td><td>0.00%</td><td>5s ago</td><td>unhealthy</td><td></td></tr>`,
			`<tr><td>ing-4</td><td>z3</td><td>JOINING</td><td>10.0.0.4:9095</td><td>0</td><td>0.00%</td><td>1s ago</td><td>healthy</td><td></td></tr>`,
			`Replication factor 3; an instance is unhealthy after 10s without a heartbeat and forgotten after 1m0s.`,
		} {
			require.Contains(t, body, row)
		}
		require.Equal(t, 1, strings.Count(body, "<form"), "only unhealthy instances can be forgotten")
	})

	t.Run("forget", func(t *testing.T) {
		tests := []struct {
			name     string
			method   string
			form     url.Values
			wantCode int
			wantBody string
		}{
			{name: "healthy", method: http.MethodPost, form: url.Values{"forget": {"ing-1"}}, wantCode: http.StatusConflict, wantBody: "within --ring.heartbeat-timeout"},
			{name: "unknown", method: http.MethodPost, form: url.Values{"forget": {"ing-9"}}, wantCode: http.StatusNotFound, wantBody: "no such instance"},
			{name: "no id", method: http.MethodPost, form: url.Values{}, wantCode: http.StatusBadRequest, wantBody: "missing form value forget"},
			{name: "wrong method", method: http.MethodDelete, wantCode: http.StatusMethodNotAllowed},
			{name: "unhealthy", method: http.MethodPost, form: url.Values{"forget": {"ing-2"}}, wantCode: http.StatusSeeOther},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				req := httptest.NewRequest(tc.method, "/ring", strings.NewReader(tc.form.Encode()))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				rec := httptest.NewRecorder()
				r.ServeHTTP(rec, req)
				require.Equal(t, tc.wantCode, rec.Code, rec.Body.String())
				require.Contains(t, rec.Body.String(), tc.wantBody)
				if tc.wantCode == http.StatusSeeOther {
					require.Equal(t, "/ring", rec.Header().Get("Location"))
				}
			})
		}
		require.Equal(t, LEFT, entry(t, r, "ing-2").State)
	})
}
