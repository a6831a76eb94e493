package ring

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"time"
)

// State is an instance's lifecycle state in the ring. The zero value is not a
// valid state: it marks a descriptor that was never filled in, and gossip
// drops entries that carry it.
type State int

// The numeric order is the lifecycle order, and it matters: at equal
// heartbeats the later state wins the merge (see compareInstances). States
// travel by name (MarshalText), never by number.
const (
	// JOINING instances have claimed their tokens and receive writes, but
	// may still move their tokens when an instance that registered before
	// them shows up late (see Ring.joiningTokens). Readers ask them, since
	// they hold whatever they were written.
	JOINING State = iota + 1
	// ACTIVE instances own their tokens and receive writes.
	ACTIVE
	// LEAVING instances are shutting down: they no longer receive writes but
	// may still hold data, so readers still ask them.
	LEAVING
	// LEFT instances are tombstones: they hold no tokens, and the entry only
	// exists so that gossip does not resurrect the instance's older states.
	LEFT
)

// String returns the state's name, as used on the wire and on the /ring page.
func (s State) String() string {
	switch s {
	case JOINING:
		return "JOINING"
	case ACTIVE:
		return "ACTIVE"
	case LEAVING:
		return "LEAVING"
	case LEFT:
		return "LEFT"
	default:
		return fmt.Sprintf("State(%d)", int(s))
	}
}

// MarshalText encodes the state as its name; it fails for invalid states so
// that they never reach the wire.
func (s State) MarshalText() ([]byte, error) {
	if !s.valid() {
		return nil, fmt.Errorf("invalid ring state %d", int(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText decodes a state name written by MarshalText.
func (s *State) UnmarshalText(text []byte) error {
	switch string(text) {
	case "JOINING":
		*s = JOINING
	case "ACTIVE":
		*s = ACTIVE
	case "LEAVING":
		*s = LEAVING
	case "LEFT":
		*s = LEFT
	default:
		return fmt.Errorf("invalid ring state %q", text)
	}
	return nil
}

func (s State) valid() bool { return s >= JOINING && s <= LEFT }

// writable reports whether writers route series to instances in state s.
func (s State) writable() bool { return s == JOINING || s == ACTIVE }

// readable reports whether instances in state s may hold data readers need.
func (s State) readable() bool { return s == JOINING || s == ACTIVE || s == LEAVING }

// InstanceDesc is one ingester as the ring gossips it. Descriptors are values
// shared between goroutines: nobody modifies Tokens after the descriptor was
// built.
type InstanceDesc struct {
	ID        string   `json:"id"`
	Addr      string   `json:"addr"` // gRPC address writers and readers dial
	Zone      string   `json:"zone,omitempty"`
	State     State    `json:"state"`
	Tokens    []uint32 `json:"tokens"`    // sorted ascending; empty for LEFT tombstones
	Heartbeat int64    `json:"heartbeat"` // unix milliseconds of the last heartbeat
	// RegisteredAt is when the instance registered with its tokens (unix
	// milliseconds); a restart that reuses them keeps it.
	RegisteredAt int64 `json:"registered_at"`
}

// healthy reports whether the instance heartbeated at or after minHeartbeat
// (unix milliseconds). A heartbeat from the future (clock skew) is healthy.
func (d *InstanceDesc) healthy(minHeartbeat int64) bool {
	return d.Heartbeat >= minHeartbeat
}

// validate rejects descriptors that no correct member writes, so a bad
// gossip message cannot corrupt the snapshot Get relies on.
func (d *InstanceDesc) validate() error {
	if d.ID == "" {
		return fmt.Errorf("instance without id")
	}
	if !d.State.valid() {
		return fmt.Errorf("instance %q has invalid state %d", d.ID, int(d.State))
	}
	if d.State == LEFT && len(d.Tokens) > 0 {
		return fmt.Errorf("instance %q is LEFT but has %d tokens", d.ID, len(d.Tokens))
	}
	if !slices.IsSorted(d.Tokens) {
		return fmt.Errorf("instance %q has unsorted tokens", d.ID)
	}
	return nil
}

// compareInstances orders two versions of the same instance: the result is
// positive when a supersedes b. The newer heartbeat wins; at equal heartbeats
// the later lifecycle state wins (LEFT over LEAVING over ACTIVE over
// JOINING), so a tombstone beats the entry it buries. The remaining fields
// only break ties that a correct writer never produces (it bumps the
// heartbeat on every change), but they make the order total, which is what
// makes merge commutative: both sides pick the same winner whatever order
// they see the versions in.
func compareInstances(a, b *InstanceDesc) int {
	return cmp.Or(
		cmp.Compare(a.Heartbeat, b.Heartbeat),
		cmp.Compare(a.State, b.State),
		cmp.Compare(a.RegisteredAt, b.RegisteredAt),
		cmp.Compare(a.Addr, b.Addr),
		cmp.Compare(a.Zone, b.Zone),
		slices.Compare(a.Tokens, b.Tokens),
		cmp.Compare(a.ID, b.ID),
	)
}

// desc is the gossiped ring state: every known instance by ID. It is a
// state-based CRDT: merge is commutative, associative and idempotent, so
// members converge whatever order deltas and push/pulls arrive in. Gossip
// carries deltas (the changed entries, or only the new heartbeat of an
// entry otherwise unchanged: see wireBeat) and periodic push/pulls of the
// whole descriptor, which heal whatever a member missed. A desc is not safe
// for concurrent use; the Ring guards its own with a mutex.
type desc map[string]InstanceDesc

// mergeFrom folds other into d and returns the entries of other that changed
// d, in ID order: exactly the news worth passing on to other members.
func (d desc) mergeFrom(other desc) []InstanceDesc {
	var changed []InstanceDesc
	for _, id := range slices.Sorted(maps.Keys(other)) {
		in := other[id]
		cur, ok := d[id]
		if ok && compareInstances(&in, &cur) <= 0 {
			continue
		}
		if ok && slices.Equal(in.Tokens, cur.Tokens) {
			// Most news is a heartbeat: keep sharing the tokens already
			// held, so that the snapshot sees them unchanged at a glance.
			in.Tokens = cur.Tokens
		}
		d[id] = in
		changed = append(changed, in)
	}
	return changed
}

// merge returns the least upper bound of a and b without modifying either.
func merge(a, b desc) desc {
	out := maps.Clone(a)
	if out == nil {
		out = desc{}
	}
	out.mergeFrom(b)
	return out
}

// removeTombstones deletes LEFT entries whose heartbeat is older than
// now-ttl and returns how many it deleted. Every member measures the age from
// the same tombstone heartbeat, so they all forget it at about the same time,
// and Ring.mergeRemote drops expired tombstones that gossip brings back.
func (d desc) removeTombstones(now time.Time, ttl time.Duration) int {
	limit := now.Add(-ttl).UnixMilli()
	n := 0
	for id, inst := range d {
		if inst.State == LEFT && inst.Heartbeat < limit {
			delete(d, id)
			n++
		}
	}
	return n
}
