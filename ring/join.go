package ring

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// How a JOINING ingester settles on its tokens.
//
// Ingesters that start together (a StatefulSet with Parallel pods, a
// cluster restart, the README's one shell line) know nothing of each other
// when they choose, so each would split the same ranges of the ring and
// the group would end far from balanced. Balanced here means what
// sequential joins reach: every instance within maxJoinImbalance of the
// mean share. The group gets there by acting as if its members had joined
// one by one, oldest first (joinPlan), and by turning ACTIVE one by one in
// that order (settleJoin): an instance goes ACTIVE only once its tokens
// have stayed what the plan gives it for a gossip spread time and no older
// instance of its zone is still JOINING. An ACTIVE instance never changes
// its tokens, since moving them moves series; so an instance that learns
// of an older joiner only after it went ACTIVE is simply part of the ring
// that older joiner chooses against.

// maxJoinImbalance is the largest max/mean primary share, among the
// instances a joiner balances against and itself, at which a JOINING
// instance keeps the tokens it has (from its tokens file, or chosen
// earlier) instead of choosing anew. It is the goal chooseTokens reaches
// on sequential joins.
const maxJoinImbalance = 1.10

// joinState is what settleJoin remembers between its runs; only the
// lifecycle goroutine of Run touches it.
type joinState struct {
	// tokensSince is when this instance's planned tokens last changed:
	// they must stay the same for spreadTime before it goes ACTIVE.
	tokensSince time.Time
	// choices caches token choices and keep-or-choose decisions, keyed
	// by who decides against which ring (see plannedTokens).
	choices map[joinChoice][]uint32
}

// reusableTokens returns the tokens this ingester had before, with the
// time it registered with them, and where they come from: "ring" when its
// entry in the gossiped ring is ACTIVE or LEAVING with them (it owns them,
// and the series they route: it registers ACTIVE again with them); else
// "file" for TokensFile, or "ring JOINING" for an entry still JOINING,
// proposals that settleJoin keeps while they fit the ring (see
// plannedTokens); or "" when it has none of the configured count.
func (r *Ring) reusableTokens() (tokensFile, string) {
	s := r.snap.Load()
	if i, ok := s.index(r.id); ok {
		if prev := s.instances[i]; (prev.State == ACTIVE || prev.State == LEAVING) && len(prev.Tokens) == r.cfg.Tokens {
			return tokensFile{Tokens: prev.Tokens, RegisteredAt: prev.RegisteredAt}, "ring"
		}
	}
	if r.cfg.TokensFile != "" {
		f, err := readTokens(r.cfg.TokensFile)
		switch {
		case err != nil:
			// New tokens move series, but they lose none: readers ask
			// every instance. Refusing to start would need a human.
			r.logger.Error("Ignoring unreadable tokens file; choosing new tokens", "file", r.cfg.TokensFile, "err", err)
		case f.Tokens != nil && len(f.Tokens) != r.cfg.Tokens:
			r.logger.Warn("Tokens file holds a different number of tokens than --ring.tokens; choosing new tokens", "file", r.cfg.TokensFile, "tokens", len(f.Tokens), "want", r.cfg.Tokens)
		case f.Tokens != nil:
			return f, "file"
		}
	}
	if i, ok := s.index(r.id); ok {
		// A previous incarnation that was still JOINING proposes its
		// tokens like a file does.
		if prev := s.instances[i]; prev.State == JOINING && len(prev.Tokens) == r.cfg.Tokens {
			return tokensFile{Tokens: prev.Tokens, RegisteredAt: prev.RegisteredAt}, "ring JOINING"
		}
	}
	return tokensFile{}, ""
}

// joiningTokens returns the tokens the JOINING instance self should hold in
// ring s (see joinPlan). self.Tokens are the ones it holds now, nil for
// none yet.
func (r *Ring) joiningTokens(s *snapshot, self InstanceDesc) []uint32 {
	tokens, _ := r.joinPlan(s, self)
	return tokens
}

// joinPlan returns the tokens the JOINING instance self should hold in ring
// s, and whether an older healthy instance that self balances against is
// still JOINING, which keeps self from going ACTIVE.
//
// The plan treats the group of joiners as if they had joined one by one:
// every healthy JOINING instance older than self (by RegisteredAt, then
// ID) in turn, then self, each against the instances that are not JOINING
// (of any age: they are settled) and the joiners before it with the tokens
// the plan gives them. A joiner keeps its tokens when they fit that ring
// (fits), so a restart with a tokens file moves no series while the ring
// is as it was; otherwise it gets what chooseTokens chooses, from a random
// source seeded by its ID and registration time. The plan reads the ring
// only, so every member that sees the same instances computes the same
// tokens for each, and the group settles in parallel. Younger joiners are
// ignored: they yield to self. So are unhealthy ones: an instance that
// crashed while JOINING holds no data, and must not keep the others from
// going ACTIVE.
func (r *Ring) joinPlan(s *snapshot, self InstanceDesc) (tokens []uint32, olderJoining bool) {
	minHB := r.minHeartbeat()
	var base, joiners []InstanceDesc
	for i := range s.instances {
		inst := &s.instances[i]
		if inst.ID == self.ID || !inst.State.writable() || len(inst.Tokens) == 0 {
			continue
		}
		switch {
		case inst.State != JOINING:
			base = append(base, planned(*inst))
		case inst.healthy(minHB) && joinedBefore(*inst, self):
			joiners = append(joiners, *inst)
			olderJoining = olderJoining || sharesBalance(inst.Zone, self.Zone)
		}
	}
	// base is sorted by ID (s.instances are), as chooseTokens depends on
	// the order of its instances and every member must build it alike.
	slices.SortFunc(joiners, func(a, b InstanceDesc) int {
		return cmp.Or(cmp.Compare(a.RegisteredAt, b.RegisteredAt), strings.Compare(a.ID, b.ID))
	})
	for _, inst := range joiners {
		p := planned(inst)
		p.Tokens = r.plannedTokens(inst, len(inst.Tokens), base)
		i, _ := slices.BinarySearchFunc(base, p.ID, func(a InstanceDesc, id string) int { return strings.Compare(a.ID, id) })
		base = slices.Insert(base, i, p)
	}
	return r.plannedTokens(self, r.cfg.Tokens, base), olderJoining
}

// sharesBalance reports whether instances of zones a and b balance against
// each other: when either has no zone, or both the same.
func sharesBalance(a, b string) bool { return a == "" || b == "" || a == b }

// planned returns inst as joinPlan's base holds it: only what chooseTokens
// and fits read, so that the cache keys do not change when an instance
// heartbeats or goes from JOINING to ACTIVE.
func planned(inst InstanceDesc) InstanceDesc {
	return InstanceDesc{ID: inst.ID, Zone: inst.Zone, State: ACTIVE, Tokens: inst.Tokens, RegisteredAt: inst.RegisteredAt}
}

// joinChoice identifies a decision of plannedTokens: who decides about
// which tokens of its own, for how many, against which ring.
type joinChoice struct {
	id           string
	registeredAt int64
	tokens       int
	own          uint64 // checksum of the tokens it holds
	base         uint64 // checksum of the ring it decides against
}

// maxJoinChoices bounds the cache of decisions; a group of joiners needs
// one entry per member and version of the ring.
const maxJoinChoices = 4096

// plannedTokens returns the n tokens inst holds against base (sorted by
// ID): its own when they fit, else chooseTokens' choice. Decisions are
// cached: while a group of instances joins, every settleJoin recomputes
// the plan of all older joiners, mostly against the same ring.
func (r *Ring) plannedTokens(inst InstanceDesc, n int, base []InstanceDesc) []uint32 {
	own := []InstanceDesc{{Tokens: inst.Tokens}}
	key := joinChoice{id: inst.ID, registeredAt: inst.RegisteredAt, tokens: n, own: checksum(own), base: checksum(base)}
	if tokens, ok := r.joins.choices[key]; ok {
		return tokens
	}
	if len(r.joins.choices) >= maxJoinChoices {
		clear(r.joins.choices)
	}
	tokens := inst.Tokens
	if len(tokens) != n || !fits(inst, base) {
		tokens = chooseTokens(joinRand(inst), n, r.cfg.ReplicationFactor, inst.Zone, base)
	}
	r.joins.choices[key] = tokens
	return tokens
}

// fits reports whether inst's tokens fit the ring of base: none coincides
// with a token of an instance it balances against (balancePeers), and
// among those and itself the largest primary share is within
// maxJoinImbalance of the mean.
func fits(inst InstanceDesc, base []InstanceDesc) bool {
	peers, _ := balancePeers(inst.Zone, base)
	for _, p := range peers {
		for _, t := range inst.Tokens {
			if _, found := slices.BinarySearch(p.Tokens, t); found {
				return false
			}
		}
	}
	_, _, shares := ownedRanges(append(slices.Clip(peers), InstanceDesc{Tokens: inst.Tokens}))
	return slices.Max(shares)*float64(len(shares)) <= maxJoinImbalance
}

// joinedBefore orders instances by registration time, then ID.
func joinedBefore(a, b InstanceDesc) bool {
	return cmp.Or(cmp.Compare(a.RegisteredAt, b.RegisteredAt), strings.Compare(a.ID, b.ID)) < 0
}

// joinRand returns the random source of inst's token choice, the same on
// every member.
func joinRand(inst InstanceDesc) *rand.Rand {
	h := fnv.New64a()
	_, _ = h.Write([]byte(inst.ID))
	return rand.New(rand.NewPCG(h.Sum64(), uint64(inst.RegisteredAt)))
}

// settleJoin runs every gossip interval while this ingester is JOINING,
// and reports whether it still is. When the plan (joinPlan) gives it other
// tokens than it holds, it takes them, saves them and gossips them. When
// its tokens have stayed the plan's for spreadTime, long enough for the
// entries of instances that chose at the same time to reach it, and no
// older instance it balances against is JOINING, it goes ACTIVE.
func (r *Ring) settleJoin() (joining bool, err error) {
	s := r.snap.Load()
	r.descMtx.Lock()
	self := r.self
	r.descMtx.Unlock()
	if self.State != JOINING {
		return false, nil // SetLeaving came first
	}
	tokens, olderJoining := r.joinPlan(s, self)
	now := r.now()
	if slices.Equal(tokens, self.Tokens) {
		if olderJoining || now.Sub(r.joins.tokensSince) < r.spreadTime {
			return true, nil
		}
		r.descMtx.Lock()
		defer r.descMtx.Unlock()
		if r.self.State == JOINING {
			r.self.State = ACTIVE
			r.writeSelfLocked(nil)
			r.logger.Info("Ring instance is ACTIVE", "id", r.id)
		}
		clear(r.joins.choices)
		return false, nil
	}

	if r.cfg.TokensFile != "" {
		if err := writeTokens(r.cfg.TokensFile, tokensFile{Tokens: tokens, RegisteredAt: self.RegisteredAt}); err != nil {
			return false, fmt.Errorf("save the tokens of instance %q: %w", r.id, err)
		}
	}
	r.descMtx.Lock()
	defer r.descMtx.Unlock()
	if r.self.State != JOINING {
		return false, nil
	}
	r.self.Tokens = tokens
	r.joins.tokensSince = now
	r.writeSelfLocked(nil)
	r.logger.Info("Chose tokens again: instances joined at the same time, or the tokens file does not fit the ring", "id", r.id)
	return true, nil
}
