package ring

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"strings"
)

// generateTokens returns n distinct random tokens in ascending order, none of
// which is in taken. Re-drawing collisions keeps every token position owned
// by one instance, as far as this member knows the ring.
func generateTokens(rnd *rand.Rand, n int, taken map[uint32]struct{}) []uint32 {
	seen := make(map[uint32]struct{}, n)
	tokens := make([]uint32, 0, n)
	for len(tokens) < n {
		t := rnd.Uint32()
		if _, ok := taken[t]; ok {
			continue
		}
		if _, ok := seen[t]; ok {
			continue
		}
		seen[t] = struct{}{}
		tokens = append(tokens, t)
	}
	slices.Sort(tokens)
	return tokens
}

// snapshot is an immutable view of the ring built from one version of the
// descriptor, shared by all readers without locks. Nothing in it, including
// the descriptors' Tokens, is modified after newSnapshot returns.
type snapshot struct {
	// instances holds every known instance, sorted by ID.
	instances []InstanceDesc
	// tokens holds the tokens of every instance that has any, ascending;
	// equal tokens of different instances are ordered by owner so that all
	// members walk the ring identically.
	tokens []uint32
	// owners[i] is the index in instances of the owner of tokens[i].
	owners []int32
	// ownership[i] is the fraction of the token space for which
	// instances[i] is the first instance clockwise.
	ownership []float64
}

// newSnapshot builds the view of d. When prev has the same instances with
// the same states and tokens (the common case: only heartbeats moved), it
// reuses prev's token index instead of sorting again.
func newSnapshot(d desc, prev *snapshot) *snapshot {
	s := &snapshot{instances: make([]InstanceDesc, 0, len(d))}
	for _, inst := range d {
		s.instances = append(s.instances, inst)
	}
	slices.SortFunc(s.instances, func(a, b InstanceDesc) int { return strings.Compare(a.ID, b.ID) })

	if prev != nil && sameTokenOwners(prev.instances, s.instances) {
		s.tokens, s.owners, s.ownership = prev.tokens, prev.owners, prev.ownership
		return s
	}

	type tokenOwner struct {
		token uint32
		owner int32
	}
	var all []tokenOwner
	for i, inst := range s.instances {
		for _, t := range inst.Tokens {
			all = append(all, tokenOwner{token: t, owner: int32(i)})
		}
	}
	slices.SortFunc(all, func(a, b tokenOwner) int {
		return cmp.Or(cmp.Compare(a.token, b.token), cmp.Compare(a.owner, b.owner))
	})
	s.tokens = make([]uint32, len(all))
	s.owners = make([]int32, len(all))
	for i, to := range all {
		s.tokens[i], s.owners[i] = to.token, to.owner
	}

	// A key goes to the first token >= key, so tokens[i] owns the keys in
	// (tokens[i-1], tokens[i]], and tokens[0] also owns the wrap-around
	// above the last token.
	s.ownership = make([]float64, len(s.instances))
	const space = 1 << 32
	for i := range s.tokens {
		var size uint64
		if i == 0 {
			size = uint64(s.tokens[0]) + space - uint64(s.tokens[len(s.tokens)-1])
		} else {
			size = uint64(s.tokens[i]) - uint64(s.tokens[i-1])
		}
		s.ownership[s.owners[i]] += float64(size) / space
	}
	return s
}

// sameTokenOwners reports whether a and b (both sorted by ID) list the same
// instances in the same states with the same tokens.
func sameTokenOwners(a, b []InstanceDesc) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].ID != b[i].ID || a[i].State != b[i].State || !slices.Equal(a[i].Tokens, b[i].Tokens) {
			return false
		}
	}
	return true
}

// get appends to buf[:0] up to rf distinct instances that are ACTIVE and
// heartbeated at or after minHeartbeat, walking clockwise from the first
// token >= token. It allocates nothing when buf has room for rf descriptors.
func (s *snapshot) get(token uint32, rf int, minHeartbeat int64, buf []InstanceDesc) ([]InstanceDesc, error) {
	out := buf[:0]
	n := len(s.tokens)
	if n == 0 {
		return out, ErrEmptyRing
	}
	start, _ := slices.BinarySearch(s.tokens, token)
	// The walk visits every token at most once, so it ends even when fewer
	// than rf instances are eligible.
	for step := 0; step < n && len(out) < rf; step++ {
		i := start + step
		if i >= n {
			i -= n
		}
		inst := &s.instances[s.owners[i]]
		if inst.State != ACTIVE || !inst.healthy(minHeartbeat) || containsID(out, inst.ID) {
			continue
		}
		out = append(out, *inst)
	}
	if len(out) == 0 {
		return out, ErrEmptyRing
	}
	return out, nil
}

func containsID(insts []InstanceDesc, id string) bool {
	for i := range insts {
		if insts[i].ID == id {
			return true
		}
	}
	return false
}

// index returns the position of the instance with the given ID in
// s.instances.
func (s *snapshot) index(id string) (int, bool) {
	return slices.BinarySearchFunc(s.instances, id, func(inst InstanceDesc, id string) int {
		return strings.Compare(inst.ID, id)
	})
}
