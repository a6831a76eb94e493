package ring

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// testDesc is a ring with literal tokens:
//
//	100:a 200:b 300:c 350:d 400:a 500:b 600:c
//
// where d is LEAVING and e a LEFT tombstone.
func testDesc() desc {
	return desc{
		"a": {ID: "a", Addr: "a:9095", State: ACTIVE, Tokens: []uint32{100, 400}, Heartbeat: 10_000},
		"b": {ID: "b", Addr: "b:9095", State: ACTIVE, Tokens: []uint32{200, 500}, Heartbeat: 10_000},
		"c": {ID: "c", Addr: "c:9095", State: ACTIVE, Tokens: []uint32{300, 600}, Heartbeat: 10_000},
		"d": {ID: "d", Addr: "d:9095", State: LEAVING, Tokens: []uint32{350}, Heartbeat: 10_000},
		"e": {ID: "e", Addr: "e:9095", State: LEFT, Heartbeat: 10_000},
	}
}

func TestNewSnapshot(t *testing.T) {
	s := newSnapshot(testDesc(), nil)
	require.Equal(t, []string{"a", "b", "c", "d", "e"}, ids(s.instances))
	require.Equal(t, []uint32{100, 200, 300, 350, 400, 500, 600}, s.tokens)
	require.Equal(t, []int32{0, 1, 2, 3, 0, 1, 2}, s.owners)

	// tokens[i] owns (tokens[i-1], tokens[i]]; 100 also owns the wrap
	// around above 600.
	const space = float64(1 << 32)
	require.InDeltaSlice(t, []float64{
		(space - 600 + 100 + 50) / space, // a: 100 with the wrap, and 400
		200.0 / space,                    // b: 200 and 500
		200.0 / space,                    // c: 300 and 600
		50.0 / space,                     // d: 350
		0,                                // e: no tokens
	}, s.ownership, 1e-15)

	one := newSnapshot(desc{"x": {ID: "x", State: ACTIVE, Tokens: []uint32{5}}}, nil)
	require.Equal(t, []float64{1}, one.ownership)

	empty := newSnapshot(desc{}, nil)
	require.Empty(t, empty.tokens)
	require.Empty(t, empty.instances)
}

func TestNewSnapshot_EqualTokensOrderedByOwner(t *testing.T) {
	d := desc{
		"y": {ID: "y", State: ACTIVE, Tokens: []uint32{100}, Heartbeat: 1},
		"x": {ID: "x", State: ACTIVE, Tokens: []uint32{100, 200}, Heartbeat: 1},
	}
	s := newSnapshot(d, nil)
	require.Equal(t, []uint32{100, 100, 200}, s.tokens)
	require.Equal(t, []int32{0, 1, 0}, s.owners) // x before y on the tie
	got, err := s.get(50, 1, 0, nil)
	require.NoError(t, err)
	require.Equal(t, []string{"x"}, ids(got))
}

func TestNewSnapshot_ReusesTokenIndex(t *testing.T) {
	d := testDesc()
	prev := newSnapshot(d, nil)

	// Only a heartbeat moved: the token index is shared.
	a := d["a"]
	a.Heartbeat++
	d["a"] = a
	s := newSnapshot(d, prev)
	require.Same(t, &prev.tokens[0], &s.tokens[0])
	require.Equal(t, int64(10_001), s.instances[0].Heartbeat)

	// A state change rebuilds it.
	a.State = LEAVING
	d["a"] = a
	s2 := newSnapshot(d, s)
	require.NotSame(t, &s.tokens[0], &s2.tokens[0])
	require.Equal(t, s.tokens, s2.tokens)

	// So does a new instance.
	d["f"] = InstanceDesc{ID: "f", State: ACTIVE, Tokens: []uint32{1}, Heartbeat: 10_000}
	s3 := newSnapshot(d, s2)
	require.Equal(t, uint32(1), s3.tokens[0])
}

func TestSnapshot_Get(t *testing.T) {
	const fresh = 9_000 // minHeartbeat that every testDesc heartbeat meets
	stale := func(ids ...string) desc {
		d := testDesc()
		for _, id := range ids {
			inst := d[id]
			inst.Heartbeat = fresh - 1
			d[id] = inst
		}
		return d
	}
	withState := func(id string, st State) desc {
		d := testDesc()
		inst := d[id]
		inst.State = st
		d[id] = inst
		return d
	}
	tests := []struct {
		name    string
		d       desc
		token   uint32
		rf      int
		want    []string
		wantErr error
	}{
		{name: "below the first token", d: testDesc(), token: 0, rf: 3, want: []string{"a", "b", "c"}},
		{name: "exactly on a token", d: testDesc(), token: 100, rf: 3, want: []string{"a", "b", "c"}},
		{name: "skips LEAVING", d: testDesc(), token: 101, rf: 3, want: []string{"b", "c", "a"}},
		{name: "starts at a LEAVING token", d: testDesc(), token: 340, rf: 3, want: []string{"a", "b", "c"}},
		{name: "wraps around", d: testDesc(), token: 450, rf: 3, want: []string{"b", "c", "a"}},
		{name: "above the last token", d: testDesc(), token: 601, rf: 3, want: []string{"a", "b", "c"}},
		{name: "max token", d: testDesc(), token: ^uint32(0), rf: 3, want: []string{"a", "b", "c"}},
		{name: "RF 1", d: testDesc(), token: 250, rf: 1, want: []string{"c"}},
		{name: "RF 2", d: testDesc(), token: 550, rf: 2, want: []string{"c", "a"}},
		{name: "fewer instances than RF", d: testDesc(), token: 250, rf: 5, want: []string{"c", "a", "b"}},
		{name: "skips unhealthy", d: stale("b"), token: 101, rf: 3, want: []string{"c", "a"}},
		{name: "JOINING receives writes", d: withState("d", JOINING), token: 340, rf: 3, want: []string{"d", "a", "b"}},
		{name: "a JOINING entry without tokens is never picked", d: withState("e", JOINING), token: 0, rf: 5, want: []string{"a", "b", "c"}},
		{name: "next clockwise replaces unhealthy", d: stale("a"), token: 50, rf: 2, want: []string{"b", "c"}},
		{name: "one healthy left", d: stale("a", "b"), token: 0, rf: 3, want: []string{"c"}},
		{name: "all unhealthy", d: stale("a", "b", "c"), token: 0, rf: 3, wantErr: ErrEmptyRing},
		{name: "only tombstones", d: desc{"e": testDesc()["e"]}, token: 0, rf: 3, wantErr: ErrEmptyRing},
		{name: "empty ring", d: desc{}, token: 0, rf: 3, wantErr: ErrEmptyRing},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSnapshot(tc.d, nil)
			buf := make([]InstanceDesc, 1, 8)
			buf[0] = InstanceDesc{ID: "garbage"}
			got, err := s.get(tc.token, tc.rf, fresh, buf)
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				require.Empty(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, ids(got))
			for _, inst := range got {
				require.Equal(t, tc.d[inst.ID], inst)
			}
		})
	}
}

func TestSnapshot_GetDoesNotAllocate(t *testing.T) {
	s := newSnapshot(testDesc(), nil)
	buf := make([]InstanceDesc, 0, 3)
	allocs := testing.AllocsPerRun(100, func() {
		var err error
		buf, err = s.get(450, 3, 0, buf)
		if err != nil || len(buf) != 3 {
			t.Fatalf("get: %v, %d replicas", err, len(buf))
		}
	})
	require.Zero(t, allocs)
}

func ids(insts []InstanceDesc) []string {
	out := []string{}
	for _, inst := range insts {
		out = append(out, inst.ID)
	}
	return out
}

// zoneDesc is a ring with literal tokens in three zones:
//
//	100:a1 200:a2 300:b1 400:c1 500:b2 600:c2
func zoneDesc() desc {
	d := desc{}
	for _, inst := range []InstanceDesc{
		{ID: "a1", Zone: "za", Tokens: []uint32{100}},
		{ID: "a2", Zone: "za", Tokens: []uint32{200}},
		{ID: "b1", Zone: "zb", Tokens: []uint32{300}},
		{ID: "c1", Zone: "zc", Tokens: []uint32{400}},
		{ID: "b2", Zone: "zb", Tokens: []uint32{500}},
		{ID: "c2", Zone: "zc", Tokens: []uint32{600}},
	} {
		inst.State, inst.Heartbeat = ACTIVE, 10_000
		d[inst.ID] = inst
	}
	return d
}

func TestSnapshot_GetZoneAware(t *testing.T) {
	const fresh = 9_000
	modify := func(f func(d desc)) desc {
		d := zoneDesc()
		f(d)
		return d
	}
	stale := func(ids ...string) desc {
		return modify(func(d desc) {
			for _, id := range ids {
				inst := d[id]
				inst.Heartbeat = fresh - 1
				d[id] = inst
			}
		})
	}
	tests := []struct {
		name          string
		d             desc
		token         uint32
		rf            int
		wantZoneAware bool
		want          []string
		wantErr       error
	}{
		{name: "skips a zone already used", d: zoneDesc(), token: 0, rf: 3, wantZoneAware: true, want: []string{"a1", "b1", "c1"}},
		{name: "from the second token", d: zoneDesc(), token: 150, rf: 3, wantZoneAware: true, want: []string{"a2", "b1", "c1"}},
		{name: "wraps around", d: zoneDesc(), token: 350, rf: 3, wantZoneAware: true, want: []string{"c1", "b2", "a1"}},
		{name: "RF 2 with three zones", d: zoneDesc(), token: 150, rf: 2, wantZoneAware: true, want: []string{"a2", "b1"}},
		{name: "an unhealthy instance is replaced within its zone", d: stale("a1"), token: 0, rf: 3, wantZoneAware: true, want: []string{"a2", "b1", "c1"}},
		{name: "a whole zone down leaves RF-1 replicas in the others", d: stale("c1", "c2"), token: 350, rf: 3, wantZoneAware: true, want: []string{"b2", "a1"}},
		{name: "two zones down", d: stale("b1", "b2", "c1", "c2"), token: 350, rf: 3, wantZoneAware: true, want: []string{"a1"}},
		{name: "every zone down", d: stale("a1", "a2", "b1", "b2", "c1", "c2"), token: 350, rf: 3, wantZoneAware: true, wantErr: ErrEmptyRing},
		{
			name: "fewer zones than RF: not zone-aware",
			d: modify(func(d desc) {
				delete(d, "c1")
				delete(d, "c2")
			}),
			token: 0, rf: 3, want: []string{"a1", "a2", "b1"},
		},
		{
			name: "LEAVING instances do not count towards the zones",
			d: modify(func(d desc) {
				for _, id := range []string{"c1", "c2"} {
					inst := d[id]
					inst.State = LEAVING
					d[id] = inst
				}
			}),
			token: 0, rf: 3, want: []string{"a1", "a2", "b1"},
		},
		{
			name: "instances without a zone are one zone",
			d: modify(func(d desc) {
				for _, id := range []string{"c1", "c2"} {
					inst := d[id]
					inst.Zone = ""
					d[id] = inst
				}
			}),
			token: 350, rf: 3, wantZoneAware: true, want: []string{"c1", "b2", "a1"},
		},
		{name: "RF 1 is never zone-aware", d: zoneDesc(), token: 150, rf: 1, want: []string{"a2"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSnapshot(tc.d, nil)
			require.Equal(t, tc.wantZoneAware, s.zoneAware(tc.rf))
			got, err := s.get(tc.token, tc.rf, fresh, make([]InstanceDesc, 0, 3))
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				require.Empty(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, ids(got))
		})
	}
}

func TestSnapshot_GetZoneAwareDoesNotAllocate(t *testing.T) {
	s := newSnapshot(zoneDesc(), nil)
	buf := make([]InstanceDesc, 0, 3)
	allocs := testing.AllocsPerRun(100, func() {
		var err error
		buf, err = s.get(350, 3, 0, buf)
		if err != nil || len(buf) != 3 {
			t.Fatalf("get: %v, %d replicas", err, len(buf))
		}
	})
	require.Zero(t, allocs)
}

func TestSnapshot_MaxReplicas(t *testing.T) {
	d := zoneDesc()
	for id, hb := range map[string]int64{"a1": 1, "a2": 2, "b1": 3, "b2": 4, "c1": 5, "c2": 6} {
		inst := d[id]
		inst.Heartbeat = hb
		d[id] = inst
	}
	s := newSnapshot(d, nil)
	tests := []struct {
		minHeartbeat int64
		rf           int
		want         int
	}{
		{minHeartbeat: 0, rf: 3, want: 3},
		{minHeartbeat: 0, rf: 8, want: 6}, // fewer zones than RF: not zone-aware, six instances
		{minHeartbeat: 3, rf: 3, want: 2}, // zone za is down
		{minHeartbeat: 5, rf: 3, want: 1}, // only zone zc is up
		{minHeartbeat: 6, rf: 2, want: 1},
		{minHeartbeat: 7, rf: 3, want: 0},
	}
	for _, tc := range tests {
		require.Equal(t, tc.want, s.maxReplicas(tc.rf, tc.minHeartbeat), "minHeartbeat %d rf %d", tc.minHeartbeat, tc.rf)
	}
}

func TestSnapshot_Checksum(t *testing.T) {
	base := newSnapshot(zoneDesc(), nil).checksum

	d := zoneDesc()
	inst := d["b1"]
	inst.Heartbeat += 5000
	d["b1"] = inst
	require.Equal(t, base, newSnapshot(d, nil).checksum, "heartbeats do not count")

	for name, change := range map[string]func(*InstanceDesc){
		"state":      func(i *InstanceDesc) { i.State = LEAVING },
		"tokens":     func(i *InstanceDesc) { i.Tokens = []uint32{301} },
		"address":    func(i *InstanceDesc) { i.Addr = "elsewhere:9095" },
		"zone":       func(i *InstanceDesc) { i.Zone = "zz" },
		"registered": func(i *InstanceDesc) { i.RegisteredAt = 1 },
	} {
		d := zoneDesc()
		inst := d["b1"]
		change(&inst)
		d["b1"] = inst
		require.NotEqual(t, base, newSnapshot(d, nil).checksum, name)
	}
	d = zoneDesc()
	delete(d, "b1")
	require.NotEqual(t, base, newSnapshot(d, nil).checksum, "an instance fewer")
}
