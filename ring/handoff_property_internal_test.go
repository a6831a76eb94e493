package ring

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
)

// This is a property test of the decommission hand-off (see
// ingester/decommission.go) on the ring's placement: random rings, with and
// without zones, from which random sets of ingesters leave at once, each
// seeing the others' LEAVING state late, as gossip brings it. It models the
// hand-off protocol step by step:
//
//   - a leaver freezes the blocks it holds when it starts, and from then on
//     refuses the blocks others send it;
//   - in passes until one succeeds, it plans every block afresh (each series
//     to its replicas in the leaver's view of the ring, itself excluded) and
//     sends each target its part, unless the journal lists (block, target)
//     as acknowledged from an earlier pass;
//   - a target that has started leaving refuses, and the leaver then knows it
//     is LEAVING; one that has not stores the part as a block of its own, and
//     hands it off in turn if it leaves later.
//
// After every leaver is done, each series must be on every one of its
// replicas in the final ring, which is more than the quorum that reads
// need. Naming a journal entry by (block, target) alone, without the part's
// series, fails this within a few seeds.
func TestHandOffProperty_ConcurrentLeavesLeaveEverySeriesOnItsNewOwners(t *testing.T) {
	trials := 200
	if testing.Short() {
		trials = 40
	}
	for seed := range uint64(trials) {
		sim := newHandOffSim(seed)
		sim.run()
		if msg := sim.check(); msg != "" {
			t.Fatalf("seed %d (%s): %s", seed, sim, msg)
		}
	}
}

// handOffSim is one trial: a ring, its leavers and who holds what.
type handOffSim struct {
	rnd     *rand.Rand
	rf      int
	zones   int
	ring    desc     // every instance ACTIVE: the ring before the scale-down
	ids     []string // sorted
	series  []uint32 // the series' tokens
	leavers map[string]*simLeaver
	// blocks holds, by instance, the blocks it stores: series indexes.
	blocks map[string][][]int
}

// simLeaver is the hand-off state of one leaving ingester.
type simLeaver struct {
	id      string
	started bool
	done    bool
	frozen  [][]int              // its blocks when it started
	journal map[[3]string]bool   // (block, target) acknowledged
	knows   map[string]bool      // instances it has seen LEAVING
	pending []int                // blocks of the current pass not yet tried
	failed  bool                 // a target of the current pass refused
	views   map[string]*snapshot // cache, by the set it knows
}

func newHandOffSim(seed uint64) *handOffSim {
	rnd := rand.New(rand.NewPCG(seed, 0x5ca1ed))
	s := &handOffSim{rnd: rnd, ring: desc{}, leavers: map[string]*simLeaver{}, blocks: map[string][][]int{}}
	n := 2 + rnd.IntN(11)
	s.zones = []int{0, 0, 2, 3, 3, 4}[rnd.IntN(6)]
	s.rf = []int{1, 2, 3, 3, 3, 5}[rnd.IntN(6)]
	var insts []InstanceDesc
	for i := range n {
		inst := InstanceDesc{ID: fmt.Sprintf("ingester-%02d", i), State: ACTIVE, Heartbeat: 1}
		if s.zones > 0 {
			inst.Zone = fmt.Sprintf("zone-%c", 'a'+i%s.zones)
		}
		inst.Tokens = chooseTokens(rnd, 32, s.rf, inst.Zone, insts)
		insts = append(insts, inst)
		s.ring[inst.ID] = inst
	}
	s.ids = slices.Sorted(maps.Keys(s.ring))

	// At least one ingester leaves and at least one stays.
	leaving := 1 + rnd.IntN(n-1)
	for _, i := range rnd.Perm(n)[:leaving] {
		id := s.ids[i]
		s.leavers[id] = &simLeaver{id: id, journal: map[[3]string]bool{}, knows: map[string]bool{id: true}, views: map[string]*snapshot{}}
	}

	// The series were written to their replicas in the full ring, into a
	// few blocks per ingester.
	s.series = make([]uint32, 1000)
	for i := range s.series {
		s.series[i] = rnd.Uint32()
	}
	full := newSnapshot(s.ring, nil)
	perBlock := map[string]map[int][]int{}
	for i, tok := range s.series {
		owners, err := full.get(tok, s.rf, 0, nil)
		if err != nil {
			panic(err)
		}
		for _, o := range owners {
			if perBlock[o.ID] == nil {
				perBlock[o.ID] = map[int][]int{}
			}
			b := rnd.IntN(3)
			perBlock[o.ID][b] = append(perBlock[o.ID][b], i)
		}
	}
	for id, bs := range perBlock {
		for _, b := range slices.Sorted(maps.Keys(bs)) {
			s.blocks[id] = append(s.blocks[id], bs[b])
		}
	}
	return s
}

func (s *handOffSim) String() string {
	return fmt.Sprintf("%d ingesters, %d zones, RF %d, %d leaving: %v", len(s.ids), s.zones, s.rf, len(s.leavers), slices.Sorted(maps.Keys(s.leavers)))
}

// run moves random leavers one step at a time until every one is done: a
// leaver starts, or tries one block of its pass, or begins another pass.
func (s *handOffSim) run() {
	for steps := 0; ; steps++ {
		if steps > 1_000_000 {
			panic("the hand-off does not end")
		}
		var active []*simLeaver
		for _, id := range slices.Sorted(maps.Keys(s.leavers)) {
			if l := s.leavers[id]; !l.done {
				active = append(active, l)
			}
		}
		if len(active) == 0 {
			return
		}
		s.step(active[s.rnd.IntN(len(active))])
	}
}

func (s *handOffSim) step(l *simLeaver) {
	if !l.started {
		l.started = true
		l.frozen = slices.Clone(s.blocks[l.id])
		l.pending = blockIndexes(len(l.frozen))
		return
	}
	// Gossip brings each other leaver's state some time after it started.
	for id, other := range s.leavers {
		if other.started && !l.knows[id] && s.rnd.IntN(4) == 0 {
			l.knows[id] = true
		}
	}
	if len(l.pending) == 0 {
		if !l.failed {
			l.done = true
			return
		}
		l.failed = false
		l.pending = blockIndexes(len(l.frozen))
		return
	}
	b := l.pending[0]
	l.pending = l.pending[1:]
	s.sendBlock(l, b)
}

// sendBlock plans block b of l in l's view of the ring and sends each target
// that has not acknowledged it its part.
func (s *handOffSim) sendBlock(l *simLeaver, b int) {
	view := s.view(l)
	parts := map[string][]int{}
	for _, i := range l.frozen[b] {
		owners, err := view.get(s.series[i], s.rf, 0, nil)
		if err != nil {
			panic(fmt.Sprintf("%s sees no owner of a series: %v", l.id, err))
		}
		for _, o := range owners {
			if o.ID != l.id {
				parts[o.ID] = append(parts[o.ID], i)
			}
		}
	}
	for _, target := range slices.Sorted(maps.Keys(parts)) {
		key := [3]string{fmt.Sprint(b), target, fmt.Sprint(parts[target])}
		if l.journal[key] {
			continue
		}
		if t := s.leavers[target]; t != nil && t.started {
			l.knows[target] = true
			l.failed = true
			continue
		}
		s.blocks[target] = append(s.blocks[target], parts[target])
		l.journal[key] = true
	}
}

// view is the ring as l sees it: the instances it knows to be leaving are
// LEAVING, the others ACTIVE.
func (s *handOffSim) view(l *simLeaver) *snapshot {
	known := slices.Sorted(maps.Keys(l.knows))
	key := fmt.Sprint(known)
	if v := l.views[key]; v != nil {
		return v
	}
	d := maps.Clone(s.ring)
	for _, id := range known {
		inst := d[id]
		inst.State = LEAVING
		d[id] = inst
	}
	v := newSnapshot(d, nil)
	l.views[key] = v
	return v
}

// check returns what is wrong once the leavers are gone.
func (s *handOffSim) check() string {
	final := desc{}
	for id, inst := range s.ring {
		if s.leavers[id] == nil {
			final[id] = inst
		}
	}
	snap := newSnapshot(final, nil)
	holds := map[string][]bool{}
	for id := range final {
		h := make([]bool, len(s.series))
		for _, b := range s.blocks[id] {
			for _, i := range b {
				h[i] = true
			}
		}
		holds[id] = h
	}
	for i, tok := range s.series {
		owners, err := snap.get(tok, s.rf, 0, nil)
		if err != nil {
			return err.Error()
		}
		copies := 0
		for _, o := range owners {
			if holds[o.ID][i] {
				copies++
			}
		}
		if copies < len(owners) {
			return fmt.Sprintf("series %d (token %d) has %d copies among its %d owners %v", i, tok, copies, len(owners), ids(owners))
		}
	}
	return ""
}

func blockIndexes(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}
