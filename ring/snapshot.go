package ring

import (
	"cmp"
	"encoding/binary"
	"hash/fnv"
	"slices"
	"strings"
)

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

	// writableHeartbeats holds, ascending, the heartbeats of the instances
	// with tokens that writers may pick (JOINING or ACTIVE), so that get
	// knows in O(log n) how many replicas it can find.
	writableHeartbeats []int64
	// zones lists the distinct zones of those instances; zoneOf[i] is the
	// index in zones of instances[i]'s zone (-1 for the others), and
	// zoneHeartbeats[z] the newest heartbeat in zone z.
	zones          []string
	zoneOf         []int32
	zoneHeartbeats []int64

	// checksum identifies the descriptor without its heartbeats: members
	// that agree on every instance's state, tokens, address and zone have
	// the same checksum, whatever heartbeats they have seen.
	checksum uint64
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
	s.indexHealth()

	if prev != nil && sameButHeartbeats(prev.instances, s.instances) {
		s.checksum = prev.checksum
		s.tokens, s.owners, s.ownership = prev.tokens, prev.owners, prev.ownership
		return s
	}
	s.checksum = checksum(s.instances)
	if prev != nil && sameTokenOwners(prev.instances, s.instances) {
		s.tokens, s.owners, s.ownership = prev.tokens, prev.owners, prev.ownership
		return s
	}

	type indexedToken struct {
		token uint32
		owner int32
	}
	var all []indexedToken
	for i, inst := range s.instances {
		for _, t := range inst.Tokens {
			all = append(all, indexedToken{token: t, owner: int32(i)})
		}
	}
	slices.SortFunc(all, func(a, b indexedToken) int {
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
	for i := range s.tokens {
		var size uint64
		if i == 0 {
			size = uint64(s.tokens[0]) + tokenSpace - uint64(s.tokens[len(s.tokens)-1])
		} else {
			size = uint64(s.tokens[i]) - uint64(s.tokens[i-1])
		}
		s.ownership[s.owners[i]] += float64(size) / tokenSpace
	}
	return s
}

// indexHealth fills the fields get uses to bound its walk.
func (s *snapshot) indexHealth() {
	s.zoneOf = make([]int32, len(s.instances))
	for i := range s.instances {
		inst := &s.instances[i]
		s.zoneOf[i] = -1
		if !inst.State.writable() || len(inst.Tokens) == 0 {
			continue
		}
		s.writableHeartbeats = append(s.writableHeartbeats, inst.Heartbeat)
		z := slices.Index(s.zones, inst.Zone)
		if z < 0 {
			z = len(s.zones)
			s.zones = append(s.zones, inst.Zone)
			s.zoneHeartbeats = append(s.zoneHeartbeats, inst.Heartbeat)
		}
		s.zoneOf[i] = int32(z)
		s.zoneHeartbeats[z] = max(s.zoneHeartbeats[z], inst.Heartbeat)
	}
	slices.Sort(s.writableHeartbeats)
}

// checksum hashes instances (sorted by ID) without their heartbeats.
func checksum(instances []InstanceDesc) uint64 {
	h := fnv.New64a()
	var b []byte
	for i := range instances {
		b = appendVersion(b[:0], &instances[i])
		_, _ = h.Write(b)
	}
	return h.Sum64()
}

// version hashes inst without its heartbeat: two entries of an instance
// with the same version differ in their heartbeats only.
func version(inst *InstanceDesc) uint64 {
	h := fnv.New64a()
	_, _ = h.Write(appendVersion(make([]byte, 0, 64+4*len(inst.Tokens)), inst))
	return h.Sum64()
}

// appendVersion appends to b every field of inst but its heartbeat.
func appendVersion(b []byte, inst *InstanceDesc) []byte {
	for _, str := range []string{inst.ID, inst.Addr, inst.Zone} {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(str)))
		b = append(b, str...)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(inst.State))
	b = binary.LittleEndian.AppendUint64(b, uint64(inst.RegisteredAt))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(inst.Tokens)))
	for _, t := range inst.Tokens {
		b = binary.LittleEndian.AppendUint32(b, t)
	}
	return b
}

// sameTokenOwners reports whether a and b (both sorted by ID) list the same
// instances in the same states with the same tokens.
func sameTokenOwners(a, b []InstanceDesc) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].ID != b[i].ID || a[i].State != b[i].State || !sameTokens(a[i].Tokens, b[i].Tokens) {
			return false
		}
	}
	return true
}

// sameButHeartbeats reports whether a and b (both sorted by ID) differ in
// heartbeats only, which is what most gossip brings.
func sameButHeartbeats(a, b []InstanceDesc) bool {
	if !sameTokenOwners(a, b) {
		return false
	}
	for i := range a {
		if a[i].Addr != b[i].Addr || a[i].Zone != b[i].Zone || a[i].RegisteredAt != b[i].RegisteredAt {
			return false
		}
	}
	return true
}

// sameTokens is slices.Equal with a shortcut for the common case of a
// shared slice (see desc.mergeFrom).
func sameTokens(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	return slices.Equal(a, b)
}

// zoneAware reports whether get places the rf replicas of a token in
// distinct zones: when the instances writers may pick span at least rf
// zones (instances without a zone count as one zone).
func (s *snapshot) zoneAware(rf int) bool {
	return rf > 1 && len(s.zones) >= rf
}

// maxReplicas returns how many replicas get can find: no more than rf, the
// healthy writable instances, and, when zone-aware, the zones that have
// one.
func (s *snapshot) maxReplicas(rf int, minHeartbeat int64) int {
	stale, _ := slices.BinarySearch(s.writableHeartbeats, minHeartbeat)
	n := min(rf, len(s.writableHeartbeats)-stale)
	if s.zoneAware(rf) {
		zones := 0
		for _, hb := range s.zoneHeartbeats {
			if hb >= minHeartbeat {
				zones++
			}
		}
		n = min(n, zones)
	}
	return n
}

// get appends to buf[:0] up to rf distinct instances that are JOINING or
// ACTIVE and heartbeated at or after minHeartbeat, walking clockwise from
// the first token >= token, and, when zone-aware, skipping instances of a
// zone already picked. It allocates nothing when buf has room for rf
// descriptors and rf is at most maxFastReplicas.
func (s *snapshot) get(token uint32, rf int, minHeartbeat int64, buf []InstanceDesc) ([]InstanceDesc, error) {
	out := buf[:0]
	n := len(s.tokens)
	// Stopping once every replica that exists is found, rather than when
	// the walk is back at its start, keeps get fast while instances or a
	// whole zone are down.
	want := s.maxReplicas(rf, minHeartbeat)
	if n == 0 || want == 0 {
		return out, ErrEmptyRing
	}
	zoneAware := s.zoneAware(rf)
	var pickedArr [maxFastReplicas]int32
	picked := pickedArr[:0] // indexes in instances of out's elements
	start, _ := slices.BinarySearch(s.tokens, token)
	for step := 0; step < n && len(out) < want; step++ {
		i := start + step
		if i >= n {
			i -= n
		}
		o := s.owners[i]
		inst := &s.instances[o]
		if !inst.State.writable() || !inst.healthy(minHeartbeat) || slices.Contains(picked, o) {
			continue
		}
		if zoneAware && s.zoneTaken(picked, s.zoneOf[o]) {
			continue
		}
		picked = append(picked, o)
		out = append(out, *inst)
	}
	return out, nil
}

// maxFastReplicas is the replication factor up to which get needs no heap.
const maxFastReplicas = 8

func (s *snapshot) zoneTaken(picked []int32, zone int32) bool {
	for _, p := range picked {
		if s.zoneOf[p] == zone {
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
