package ring

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestMerge(t *testing.T) {
	a := desc{
		"ing-1": {ID: "ing-1", Addr: "10.0.0.1:9095", State: ACTIVE, Tokens: []uint32{10, 200}, Heartbeat: 1000, RegisteredAt: 900},
		"ing-2": {ID: "ing-2", Addr: "10.0.0.2:9095", State: ACTIVE, Tokens: []uint32{50, 300}, Heartbeat: 1000, RegisteredAt: 900},
	}
	b := desc{
		// A newer heartbeat of ing-1.
		"ing-1": {ID: "ing-1", Addr: "10.0.0.1:9095", State: ACTIVE, Tokens: []uint32{10, 200}, Heartbeat: 1100, RegisteredAt: 900},
		// ing-2 left in the same millisecond as its last heartbeat.
		"ing-2": {ID: "ing-2", Addr: "10.0.0.2:9095", State: LEFT, Heartbeat: 1000, RegisteredAt: 900},
		"ing-3": {ID: "ing-3", Addr: "10.0.0.3:9095", Zone: "b", State: ACTIVE, Tokens: []uint32{70}, Heartbeat: 1200, RegisteredAt: 1150},
	}
	c := desc{
		// Older than b's ing-1, so it loses although LEAVING is a later state.
		"ing-1": {ID: "ing-1", Addr: "10.0.0.1:9095", State: LEAVING, Tokens: []uint32{10, 200}, Heartbeat: 1050, RegisteredAt: 900},
		// Newer than b's ing-3.
		"ing-3": {ID: "ing-3", Addr: "10.0.0.3:9095", Zone: "b", State: LEAVING, Tokens: []uint32{70}, Heartbeat: 1300, RegisteredAt: 1150},
		"ing-4": {ID: "ing-4", Addr: "10.0.0.4:9095", State: ACTIVE, Tokens: []uint32{5}, Heartbeat: 900, RegisteredAt: 800},
	}
	want := desc{
		"ing-1": b["ing-1"],
		"ing-2": b["ing-2"],
		"ing-3": c["ing-3"],
		"ing-4": c["ing-4"],
	}
	require.Equal(t, want, merge(merge(a, b), c))

	// Commutativity: the order two members exchange states in does not matter.
	for _, pair := range [][2]desc{{a, b}, {a, c}, {b, c}} {
		require.Equal(t, merge(pair[0], pair[1]), merge(pair[1], pair[0]))
	}

	// Associativity: neither does how updates are grouped on their way.
	require.Equal(t, merge(merge(a, b), c), merge(a, merge(b, c)))
	require.Equal(t, merge(merge(c, a), b), merge(c, merge(a, b)))

	// Idempotency: receiving the same state again changes nothing.
	for _, d := range []desc{a, b, c, want} {
		require.Equal(t, d, merge(d, d))
	}
	require.Equal(t, merge(a, b), merge(merge(a, b), b))

	// merge leaves its inputs alone.
	require.Len(t, a, 2)
	require.Equal(t, ACTIVE, a["ing-2"].State)
}

func TestDesc_MergeFrom(t *testing.T) {
	base := InstanceDesc{ID: "ing-1", Addr: "10.0.0.1:9095", State: ACTIVE, Tokens: []uint32{1, 2}, Heartbeat: 1000, RegisteredAt: 900}
	with := func(f func(*InstanceDesc)) InstanceDesc {
		d := base
		f(&d)
		return d
	}
	tests := []struct {
		name    string
		local   *InstanceDesc // nil: unknown locally
		in      InstanceDesc
		wantWin bool // in replaces local
	}{
		{name: "unknown instance is added", local: nil, in: base, wantWin: true},
		{name: "newer heartbeat wins", local: &base, in: with(func(d *InstanceDesc) { d.Heartbeat++ }), wantWin: true},
		{name: "older heartbeat loses", local: &base, in: with(func(d *InstanceDesc) { d.Heartbeat-- }), wantWin: false},
		{name: "newer ACTIVE beats older LEFT", local: ptr(with(func(d *InstanceDesc) { d.State, d.Tokens = LEFT, nil })), in: with(func(d *InstanceDesc) { d.Heartbeat++ }), wantWin: true},
		{name: "older LEFT loses to newer ACTIVE", local: &base, in: with(func(d *InstanceDesc) { d.State, d.Tokens, d.Heartbeat = LEFT, nil, 999 }), wantWin: false},
		{name: "LEFT wins an equal heartbeat", local: &base, in: with(func(d *InstanceDesc) { d.State, d.Tokens = LEFT, nil }), wantWin: true},
		{name: "ACTIVE loses an equal heartbeat to LEFT", local: ptr(with(func(d *InstanceDesc) { d.State, d.Tokens = LEFT, nil })), in: base, wantWin: false},
		{name: "LEAVING wins an equal heartbeat over ACTIVE", local: &base, in: with(func(d *InstanceDesc) { d.State = LEAVING }), wantWin: true},
		{name: "ACTIVE wins an equal heartbeat over JOINING", local: ptr(with(func(d *InstanceDesc) { d.State = JOINING })), in: base, wantWin: true},
		{name: "newer JOINING beats older LEFT", local: ptr(with(func(d *InstanceDesc) { d.State, d.Tokens = LEFT, nil })), in: with(func(d *InstanceDesc) { d.State, d.Heartbeat = JOINING, 1001 }), wantWin: true},
		{name: "identical version is no news", local: &base, in: base, wantWin: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := desc{}
			if tc.local != nil {
				d[tc.local.ID] = *tc.local
			}
			changed := d.mergeFrom(desc{tc.in.ID: tc.in})
			if tc.wantWin {
				require.Equal(t, []InstanceDesc{tc.in}, changed)
				require.Equal(t, tc.in, d[tc.in.ID])
			} else {
				require.Empty(t, changed)
				require.Equal(t, *tc.local, d[tc.in.ID])
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestMerge_Laws is the property test of the CRDT: random descriptors,
// each holding random versions of a few instances (few distinct heartbeats,
// so that ties are common, and every state), merged in random orders and
// random groupings, with duplicated deliveries, always give the same
// descriptor: the greatest version of each instance. The laws are also
// checked one by one on random triples, and the rings built from the
// results route every token the same way.
func TestMerge_Laws(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	ids := []string{"ing-a", "ing-b", "ing-c", "ing-d", "ing-e"}
	randomInstance := func(id string) InstanceDesc {
		inst := InstanceDesc{
			ID:           id,
			Heartbeat:    int64(rnd.IntN(4)),
			State:        State(1 + rnd.IntN(4)),
			Addr:         []string{"10.0.0.1:9095", "10.0.0.2:9095"}[rnd.IntN(2)],
			Zone:         []string{"", "z1"}[rnd.IntN(2)],
			RegisteredAt: int64(rnd.IntN(2)),
		}
		if inst.State != LEFT {
			inst.Tokens = [][]uint32{{1, 5}, {2, 6}, {3 << 30}}[rnd.IntN(3)]
		}
		return inst
	}
	randomDesc := func() desc {
		d := desc{}
		for _, id := range ids {
			if rnd.IntN(2) == 0 {
				d[id] = randomInstance(id)
			}
		}
		return d
	}

	for round := range 200 {
		// Commutativity, associativity and idempotency on a random triple.
		a, b, c := randomDesc(), randomDesc(), randomDesc()
		require.Equal(t, merge(a, b), merge(b, a), "round %d: commutative", round)
		require.Equal(t, merge(merge(a, b), c), merge(a, merge(b, c)), "round %d: associative", round)
		require.Equal(t, merge(desc{}, a), merge(a, a), "round %d: idempotent", round)
		require.Equal(t, merge(a, b), merge(merge(a, b), b), "round %d: idempotent", round)

		var updates []desc
		for range 12 {
			updates = append(updates, randomDesc())
		}
		want := desc{}
		for _, u := range updates {
			for id, inst := range u {
				if cur, ok := want[id]; !ok || compareInstances(&inst, &cur) > 0 {
					want[id] = inst
				}
			}
		}
		wantRing := newSnapshot(want, nil)
		for range 10 {
			shuffled := slices.Clone(updates)
			rnd.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			got := mergeTree(rnd, shuffled)
			require.Equal(t, want, got, "round %d", round)
			// Duplicated deliveries change nothing.
			require.Equal(t, want, mergeTree(rnd, append(shuffled, shuffled[:5]...)), "round %d", round)
			// Applying them one by one, as a member does, agrees too.
			one := desc{}
			for _, u := range shuffled {
				one.mergeFrom(u)
			}
			require.Equal(t, want, one, "round %d", round)

			gotRing := newSnapshot(got, nil)
			require.Equal(t, wantRing.tokens, gotRing.tokens)
			for _, tok := range []uint32{0, 2, 4, 6, 1 << 31, ^uint32(0)} {
				w, werr := wantRing.get(tok, 2, 0, nil)
				g, gerr := gotRing.get(tok, 2, 0, nil)
				require.Equal(t, werr, gerr)
				require.Equal(t, w, g)
			}
		}
	}
}

// mergeTree merges ds by splitting them at a random point and merging the
// halves, so each call groups the merges differently.
func mergeTree(rnd *rand.Rand, ds []desc) desc {
	switch len(ds) {
	case 0:
		return desc{}
	case 1:
		return merge(desc{}, ds[0])
	}
	mid := 1 + rnd.IntN(len(ds)-1)
	return merge(mergeTree(rnd, ds[:mid]), mergeTree(rnd, ds[mid:]))
}

func TestDesc_RemoveTombstones(t *testing.T) {
	now := time.UnixMilli(100_000)
	ttl := 10 * time.Second
	d := desc{
		"old-left":    {ID: "old-left", State: LEFT, Heartbeat: 89_999},
		"recent-left": {ID: "recent-left", State: LEFT, Heartbeat: 90_000},
		"old-active":  {ID: "old-active", State: ACTIVE, Tokens: []uint32{1}, Heartbeat: 1},
	}
	require.Equal(t, 1, d.removeTombstones(now, ttl))
	require.Equal(t, []string{"old-active", "recent-left"}, sortedKeys(d))
	require.Equal(t, 0, d.removeTombstones(now, ttl))
}

func sortedKeys(d desc) []string {
	var keys []string
	for _, s := range newSnapshot(d, nil).instances {
		keys = append(keys, s.ID)
	}
	return keys
}

func TestInstanceDesc_Validate(t *testing.T) {
	tests := []struct {
		name    string
		inst    InstanceDesc
		wantErr string
	}{
		{name: "valid", inst: InstanceDesc{ID: "a", State: ACTIVE, Tokens: []uint32{1, 2}}},
		{name: "valid tombstone", inst: InstanceDesc{ID: "a", State: LEFT}},
		{name: "no id", inst: InstanceDesc{State: ACTIVE}, wantErr: "without id"},
		{name: "zero state", inst: InstanceDesc{ID: "a"}, wantErr: "invalid state 0"},
		{name: "tombstone with tokens", inst: InstanceDesc{ID: "a", State: LEFT, Tokens: []uint32{1}}, wantErr: "LEFT but has 1 tokens"},
		{name: "unsorted tokens", inst: InstanceDesc{ID: "a", State: ACTIVE, Tokens: []uint32{2, 1}}, wantErr: "unsorted"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.inst.validate()
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}
