package ring

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestGenerateTokens(t *testing.T) {
	first := generateTokens(rand.New(rand.NewPCG(7, 7)), 1000, nil)
	require.Len(t, first, 1000)
	require.True(t, slices.IsSorted(first))
	require.Len(t, slices.Compact(slices.Clone(first)), 1000, "tokens are distinct")

	// The same draws again, but half of them are taken: they are re-drawn.
	taken := map[uint32]struct{}{}
	for _, tok := range first[:500] {
		taken[tok] = struct{}{}
	}
	second := generateTokens(rand.New(rand.NewPCG(7, 7)), 1000, taken)
	require.Len(t, second, 1000)
	require.True(t, slices.IsSorted(second))
	require.Len(t, slices.Compact(slices.Clone(second)), 1000)
	for _, tok := range second {
		require.NotContains(t, taken, tok)
	}
}

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
