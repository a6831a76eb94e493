package ring

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
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

// TestChooseTokens_Balance adds ingesters one by one, each choosing its
// 128 tokens with chooseTokens against the ring so far, and requires the
// most loaded one to own at most 1.10 times the mean share of the token
// space at every size from 3 to 60 (random tokens reach 1.25). It logs the
// curve, and the same ratio for the data each ingester holds as one of RF 3
// replicas.
func TestChooseTokens_Balance(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	d := desc{}
	for n := 1; n <= 60; n++ {
		id := fmt.Sprintf("ingester-%d", n)
		d[id] = InstanceDesc{ID: id, State: ACTIVE, Tokens: chooseTokens(rnd, 128, 3, "", slices.Collect(maps.Values(d))), Heartbeat: 1}
		s := newSnapshot(d, nil)
		require.Len(t, s.tokens, 128*n)
		require.Len(t, slices.Compact(slices.Clone(s.tokens)), 128*n, "tokens are distinct")
		if n < 3 {
			continue
		}
		primary := maxOverMean(s.ownership)
		replica := maxOverMean(replicaOwnership(s, 3))
		t.Logf("ingesters=%d max/mean=%.4f rf3-replica max/mean=%.4f", n, primary, replica)
		require.LessOrEqual(t, primary, 1.10, "ring of %d ingesters", n)
		// Not the requirement, but what random tokens reach (1.10 to 1.14
		// on these sizes): a choice that balanced primaries at the
		// expense of replicas would be no gain.
		require.LessOrEqual(t, replica, 1.15, "ring of %d ingesters", n)
	}
}

func maxOverMean(shares []float64) float64 {
	return slices.Max(shares) * float64(len(shares)) / sum(shares)
}

func sum(xs []float64) float64 {
	total := 0.0
	for _, x := range xs {
		total += x
	}
	return total
}

// replicaOwnership returns the share of the token space each instance of s
// holds a replica of, with rf replicas per key.
func replicaOwnership(s *snapshot, rf int) []float64 {
	out := make([]float64, len(s.instances))
	buf := make([]InstanceDesc, 0, rf)
	for i, tok := range s.tokens {
		prev := s.tokens[(i+len(s.tokens)-1)%len(s.tokens)]
		size := float64((uint64(tok)-uint64(prev))%tokenSpace) / tokenSpace
		buf, _ = s.get(tok, rf, 0, buf)
		for _, inst := range buf {
			idx, _ := s.index(inst.ID)
			out[idx] += size
		}
	}
	return out
}

// TestChooseTokens_BalancePerZone adds 60 ingesters in three zones, one
// zone after the other: within each zone the shares stay level, and with
// zone-aware replication so does the data each ingester holds once the
// zones are of equal size.
func TestChooseTokens_BalancePerZone(t *testing.T) {
	rnd := rand.New(rand.NewPCG(5, 6))
	zones := []string{"za", "zb", "zc"}
	d := desc{}
	for n := 1; n <= 60; n++ {
		zone := zones[n%3]
		id := fmt.Sprintf("ingester-%d", n)
		d[id] = InstanceDesc{ID: id, Zone: zone, State: ACTIVE, Tokens: chooseTokens(rnd, 128, 3, zone, slices.Collect(maps.Values(d))), Heartbeat: 1}
		if n < 9 {
			continue
		}
		worst := 0.0
		for _, z := range zones {
			zd := maps.Clone(d)
			maps.DeleteFunc(zd, func(_ string, inst InstanceDesc) bool { return inst.Zone != z })
			worst = max(worst, maxOverMean(newSnapshot(zd, nil).ownership))
		}
		require.LessOrEqual(t, worst, 1.10, "ring of %d ingesters", n)
		if n%3 != 0 {
			continue // zones of unequal sizes hold unequal loads whatever the tokens
		}
		s := newSnapshot(d, nil)
		require.True(t, s.zoneAware(3))
		replica := maxOverMean(replicaOwnership(s, 3))
		require.LessOrEqual(t, replica, 1.10, "ring of %d ingesters", n)
		t.Logf("ingesters=%d zone max/mean=%.4f rf3-replica max/mean=%.4f", n, worst, replica)
	}
}

func TestChooseTokens(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 1))
	t.Run("empty ring: evenly spaced", func(t *testing.T) {
		tokens := chooseTokens(rnd, 4, 3, "", nil)
		require.Len(t, tokens, 4)
		for i := 1; i < 4; i++ {
			require.Equal(t, uint32(1<<30), tokens[i]-tokens[i-1])
		}
	})
	t.Run("LEAVING and LEFT instances are ignored", func(t *testing.T) {
		tokens := chooseTokens(rnd, 4, 3, "", []InstanceDesc{
			{ID: "leaving", State: LEAVING, Tokens: []uint32{1, 2, 3}},
			{ID: "left", State: LEFT},
		})
		for i := 1; i < 4; i++ {
			require.Equal(t, uint32(1<<30), tokens[i]-tokens[i-1], "as on an empty ring")
		}
	})
	t.Run("halves a single instance", func(t *testing.T) {
		one := InstanceDesc{ID: "one", State: ACTIVE, Tokens: []uint32{0, 1 << 30, 2 << 30, 3 << 30}}
		tokens := chooseTokens(rnd, 4, 3, "", []InstanceDesc{one})
		s := newSnapshot(desc{"one": one, "two": {ID: "two", State: JOINING, Tokens: tokens}}, nil)
		require.InDeltaSlice(t, []float64{0.5, 0.5}, s.ownership, 1e-9)
	})
	t.Run("more tokens than ranges", func(t *testing.T) {
		one := InstanceDesc{ID: "one", State: ACTIVE, Tokens: []uint32{7}}
		tokens := chooseTokens(rnd, 16, 3, "", []InstanceDesc{one})
		require.Len(t, tokens, 16)
		require.Len(t, slices.Compact(slices.Clone(tokens)), 16)
		require.NotContains(t, tokens, uint32(7))
		s := newSnapshot(desc{"one": one, "two": {ID: "two", State: JOINING, Tokens: tokens}}, nil)
		require.InDeltaSlice(t, []float64{0.5, 0.5}, s.ownership, 1e-6)
	})
	t.Run("ranges too small to split", func(t *testing.T) {
		crowded := InstanceDesc{ID: "crowded", State: ACTIVE}
		for i := range uint32(64) {
			crowded.Tokens = append(crowded.Tokens, i*(1<<26))
		}
		// Every range is 2^26 keys; asking for more tokens than fit is
		// absurd, but must still give distinct tokens no one owns.
		tokens := chooseTokens(rnd, 4096, 3, "", []InstanceDesc{crowded})
		require.Len(t, slices.Compact(slices.Clone(tokens)), 4096)
		for _, tok := range crowded.Tokens {
			require.NotContains(t, tokens, tok)
		}
	})
	t.Run("balances against its own zone", func(t *testing.T) {
		a := InstanceDesc{ID: "a", Zone: "za", State: ACTIVE, Tokens: []uint32{0, 1 << 31}}
		b := InstanceDesc{ID: "b", Zone: "zb", State: ACTIVE, Tokens: []uint32{1 << 30, 3 << 30}}
		tokens := chooseTokens(rnd, 2, 3, "zb", []InstanceDesc{a, b})
		s := newSnapshot(desc{"b": b, "c": {ID: "c", Zone: "zb", State: JOINING, Tokens: tokens}}, nil)
		require.InDeltaSlice(t, []float64{0.5, 0.5}, s.ownership, 1e-9, "zone zb is split in half")
	})
}

func TestTokensFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "tokens")
	got, err := readTokens(path)
	require.NoError(t, err)
	require.Nil(t, got.Tokens, "no file yet")

	require.NoError(t, writeTokens(path, tokensFile{Tokens: []uint32{1, 2, 3}, RegisteredAt: 7}))
	got, err = readTokens(path)
	require.NoError(t, err)
	require.Equal(t, tokensFile{Tokens: []uint32{1, 2, 3}, RegisteredAt: 7}, got)

	require.NoError(t, writeTokens(path, tokensFile{Tokens: []uint32{4, 5}, RegisteredAt: 8}))
	got, err = readTokens(path)
	require.NoError(t, err)
	require.Equal(t, tokensFile{Tokens: []uint32{4, 5}, RegisteredAt: 8}, got)
	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file is left behind")
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	require.JSONEq(t, `{"tokens":[4,5],"registered_at":8}`, string(raw))

	for content, wantErr := range map[string]string{
		`{"tokens":[]}`:    "holds no tokens",
		`{"tokens":[2,2]}`: "not strictly ascending at position 1",
		`[1,2]`:            "decode tokens file",
	} {
		require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
		_, err := readTokens(path)
		require.ErrorContains(t, err, wantErr, content)
	}
}
