package ring

import (
	"cmp"
	"hash/fnv"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
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
// one by one, oldest first (joiner.plan): every member computes the same
// tokens for each joiner from the ring it holds. An ACTIVE instance never
// changes its tokens, since moving them moves series, so it must go ACTIVE
// only once its tokens account for every instance it balances against.
// settleJoin decides that on what this member holds, never on how long it
// has waited, so a slow network or a loaded machine delays the join but
// does not change its outcome. An instance goes ACTIVE once
//
//   - its tokens are the plan's for the ring as it holds it now;
//   - every older JOINING instance of its zone holds the tokens the plan
//     gives it: then that instance sees the same older ring, and has
//     settled on what this one counts on;
//   - the ring holds the entry of every ingester of its zone that
//     memberlist lists as alive (memberMeta): memberlist spreads who is a
//     member far faster than the ring spreads entries, so under load an
//     ingester knows of its peers long before it has their tokens;
//   - it has then push/pulled the full state with a few members
//     (syncPeers), and the above still hold with the members and entries
//     they knew of.
//
// So when two instances of a zone go ACTIVE, the later one counted on the
// other's final tokens, or the other was younger and yielded. What is left
// is an instance that memberlist on this member did not list even after
// syncPeers: one that had not joined yet (it registers later and younger,
// or with a tokens file that it keeps only while it fits), or, while a
// cluster starts, one that joined through a member not yet connected to
// the others itself, as when every join address names a single member.

// maxJoinImbalance is the largest max/mean primary share, among the
// instances a joiner balances against and itself, at which a JOINING
// instance keeps the tokens it has (from its tokens file, or chosen
// earlier) instead of choosing anew. It is the goal chooseTokens reaches
// on sequential joins.
const maxJoinImbalance = 1.10

// joiner is the join logic's state: it plans the tokens of JOINING
// instances (plan) and remembers between settleJoin's runs. Only the
// lifecycle goroutine of Run uses it.
type joiner struct {
	tokens int // Config.Tokens
	rf     int // Config.ReplicationFactor
	// synced is set once settleJoin ran syncPeers.
	synced bool
	// missingSince is when missingPeer first found each entry it is
	// waiting for missing.
	missingSince map[string]time.Time
	// choices caches token choices and keep-or-choose decisions, keyed
	// by who decides against which ring (see plannedTokens).
	choices map[joinChoice][]uint32
}

func newJoiner(cfg Config) *joiner {
	return &joiner{tokens: cfg.Tokens, rf: cfg.ReplicationFactor, missingSince: map[string]time.Time{}, choices: map[joinChoice][]uint32{}}
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
// ring s (see joiner.plan). self.Tokens are the ones it holds now, nil for
// none yet.
func (r *Ring) joiningTokens(s *snapshot, self InstanceDesc) []uint32 {
	tokens, _ := r.joins.plan(s, self, r.minJoinerHeartbeat(), nil)
	return tokens
}

// minJoinerHeartbeat returns the oldest heartbeat (unix milliseconds) of a
// JOINING instance that the plan still counts on when memberlist does not
// list it: peerEntryWait ago, not HeartbeatTimeout ago. Under load
// heartbeats arrive late and memberlist suspects members that answer late,
// and a plan that dropped and took back an instance with every such swing
// would make the younger ones choose again each time.
func (r *Ring) minJoinerHeartbeat() int64 {
	return r.now().Add(-r.peerEntryWait()).UnixMilli()
}

// plan returns the tokens the JOINING instance self should hold in ring s,
// and whether an older instance that self balances against is JOINING
// with other tokens than the plan gives it, which keeps self from going
// ACTIVE: the plan of self rests on the tokens of the older joiners, and
// until they hold them, they see another ring than self does.
//
// The plan treats the group of joiners as if they had joined one by one:
// every JOINING instance older than self (by RegisteredAt, then ID) in
// turn, then self, each against the instances that are not JOINING (of
// any age: they are settled) and the joiners before it with the tokens the
// plan gives them. A joiner keeps its tokens when they fit that ring
// (fits), so a restart with a tokens file moves no series while the ring
// is as it was; otherwise it gets what chooseTokens chooses, from a random
// source seeded by its ID and registration time. The plan reads the ring
// only, so every member that sees the same instances computes the same
// tokens for each. Younger joiners are ignored: they yield to self. So are
// older ones that heartbeated before minHB (unix milliseconds) and are not
// in alive (ingesters memberlist lists as alive, by ID): an instance that
// crashed while JOINING holds no data and must not keep the others from
// going ACTIVE for good, while one whose heartbeats only reach this member
// late is still counted on.
func (j *joiner) plan(s *snapshot, self InstanceDesc, minHB int64, alive map[string]memberMeta) (tokens []uint32, olderUnsettled bool) {
	var base, joiners []InstanceDesc
	for i := range s.instances {
		inst := &s.instances[i]
		if inst.ID == self.ID || !inst.State.writable() || len(inst.Tokens) == 0 {
			continue
		}
		_, isAlive := alive[inst.ID]
		switch {
		case inst.State != JOINING:
			base = append(base, planned(*inst))
		case (inst.healthy(minHB) || isAlive) && joinedBefore(*inst, self):
			joiners = append(joiners, *inst)
		}
	}
	// base is sorted by ID (s.instances are), as chooseTokens depends on
	// the order of its instances and every member must build it alike.
	slices.SortFunc(joiners, func(a, b InstanceDesc) int {
		return cmp.Or(cmp.Compare(a.RegisteredAt, b.RegisteredAt), strings.Compare(a.ID, b.ID))
	})
	for _, inst := range joiners {
		p := planned(inst)
		p.Tokens = j.plannedTokens(inst, len(inst.Tokens), base)
		if sharesBalance(inst.Zone, self.Zone) && !slices.Equal(p.Tokens, inst.Tokens) {
			olderUnsettled = true
		}
		i, _ := slices.BinarySearchFunc(base, p.ID, func(a InstanceDesc, id string) int { return strings.Compare(a.ID, id) })
		base = slices.Insert(base, i, p)
	}
	return j.plannedTokens(self, j.tokens, base), olderUnsettled
}

// missingPeer returns an ingester that memberlist lists as alive (alive),
// that self balances against, and whose entry is not in s, or only as a
// tombstone: a member that missed its heartbeats for AutoForgetAfter
// (under load) may have buried it, and it registers again; or false when
// there is none. An entry missing for wait in a row (j.missingSince) is
// not waited for any more: an ingester that heartbeats registers again
// long before, so it is one that hangs and was forgotten.
func (j *joiner) missingPeer(s *snapshot, self InstanceDesc, alive map[string]memberMeta, now time.Time, wait time.Duration) (string, bool) {
	var missing []string
	for _, id := range slices.Sorted(maps.Keys(alive)) {
		if id == self.ID || !sharesBalance(alive[id].Zone, self.Zone) {
			continue
		}
		if i, ok := s.index(id); ok && s.instances[i].State != LEFT {
			continue
		}
		missing = append(missing, id)
	}
	maps.DeleteFunc(j.missingSince, func(id string, _ time.Time) bool { return !slices.Contains(missing, id) })
	for _, id := range missing {
		since, ok := j.missingSince[id]
		if !ok {
			j.missingSince[id], since = now, now
		}
		if now.Sub(since) < wait {
			return id, true
		}
	}
	return "", false
}

// peerEntryWait is how long a JOINING ingester waits for the missing entry
// of a member memberlist lists (see missingPeer): twice AutoForgetAfter (or
// twice HeartbeatTimeout when auto-forget is off). It is the one wait with
// a time in the join, and it is there for liveness only: an ingester whose
// ring goroutine hangs while its memberlist still answers would otherwise
// keep every joiner of its zone from going ACTIVE. A live ingester that
// others forgot because its heartbeats reached them late re-registers with
// its next heartbeat, far sooner.
func (r *Ring) peerEntryWait() time.Duration {
	if r.cfg.AutoForgetAfter > 0 {
		return 2 * r.cfg.AutoForgetAfter
	}
	return 2 * r.cfg.HeartbeatTimeout
}

// sharesBalance reports whether instances of zones a and b balance against
// each other: when either has no zone, or both the same.
func sharesBalance(a, b string) bool { return a == "" || b == "" || a == b }

// planned returns inst as the base of joiner.plan holds it: only what chooseTokens
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
func (j *joiner) plannedTokens(inst InstanceDesc, n int, base []InstanceDesc) []uint32 {
	own := []InstanceDesc{{Tokens: inst.Tokens}}
	key := joinChoice{id: inst.ID, registeredAt: inst.RegisteredAt, tokens: n, own: checksum(own), base: checksum(base)}
	if tokens, ok := j.choices[key]; ok {
		return tokens
	}
	if len(j.choices) >= maxJoinChoices {
		clear(j.choices)
	}
	tokens := inst.Tokens
	if len(tokens) != n || !fits(inst, base) {
		tokens = chooseTokens(joinRand(inst), n, j.rf, inst.Zone, base)
	}
	j.choices[key] = tokens
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
// and reports whether it still is. When the plan (joiner.plan) gives it
// other tokens than it holds, it takes them, saves them and gossips them.
// It goes ACTIVE once its tokens are the plan's, every older joiner it
// balances against holds the tokens the plan gives it, and the ring holds
// the entry of every ingester it balances against that memberlist lists as
// alive (missingPeer), and all that still holds after one push/pull with a
// few members (syncPeers). Nothing here waits for a time: the decision
// depends only on what this member holds, so a slow network or a loaded
// machine delays it but does not change it.
func (r *Ring) settleJoin() (joining bool, err error) {
	s := r.snap.Load()
	r.descMtx.Lock()
	self := r.self
	r.descMtx.Unlock()
	if self.State != JOINING {
		return false, nil // SetLeaving came first
	}
	alive := r.ingesterPeers()
	tokens, olderUnsettled := r.joins.plan(s, self, r.minJoinerHeartbeat(), alive)
	if slices.Equal(tokens, self.Tokens) {
		if olderUnsettled {
			return true, nil
		}
		if _, missing := r.joins.missingPeer(s, self, alive, r.now(), r.peerEntryWait()); missing {
			return true, nil
		}
		if !r.joins.synced {
			// Learn of the members that the member joined did not know
			// of yet; then decide again.
			r.joins.synced = true
			if r.syncPeers() {
				return true, nil
			}
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

	r.saveTokens(tokens, self.RegisteredAt)
	r.descMtx.Lock()
	defer r.descMtx.Unlock()
	if r.self.State != JOINING {
		return false, nil
	}
	r.self.Tokens = tokens
	r.writeSelfLocked(nil)
	r.logger.Info("Chose tokens again: instances joined at the same time, or the tokens file does not fit the ring", "id", r.id)
	return true, nil
}

// ingesterPeers returns the other ingesters memberlist lists as alive, by
// instance ID.
func (r *Ring) ingesterPeers() map[string]memberMeta {
	alive := map[string]memberMeta{}
	for _, n := range r.alivePeers() {
		if m, ok := decodeMemberMeta(n.Meta); ok {
			alive[m.ID] = m
		}
	}
	return alive
}

// syncPeers push/pulls the full state, ring and memberlist's members, with
// up to syncFanout random members memberlist lists as alive, and reports
// whether there was any. memberlist's own push/pull at the join asks only
// the member joined, which may have started moments earlier and know few
// others; after this the members of the others are known too, and
// missingPeer waits for their entries.
func (r *Ring) syncPeers() (contacted bool) {
	if r.ml == nil {
		return false // internal tests without memberlist
	}
	peers := r.alivePeers()
	rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	peers = peers[:min(len(peers), syncFanout)]
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Go(func() {
			if _, err := r.ml.Join([]string{p.Address()}); err != nil {
				r.logger.Debug("Failed to sync the ring with a peer", "peer", p.Name, "err", err)
				return
			}
			r.metrics.syncs.Inc()
		})
	}
	wg.Wait()
	return len(peers) > 0
}

// syncFanout is how many members syncPeers push/pulls with: a few, since
// each answers with every member it knows.
const syncFanout = 3
