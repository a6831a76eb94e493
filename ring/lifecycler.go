package ring

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"
)

const (
	// leaveTimeout bounds how long a graceful stop waits for the LEFT
	// tombstone to reach a peer.
	leaveTimeout = 5 * time.Second
	// Join retries back off from minJoinBackoff to maxJoinBackoff.
	minJoinBackoff = 200 * time.Millisecond
	maxJoinBackoff = 10 * time.Second
	// rejoinFanout is how many join addresses that are not members a
	// rejoin contacts at most: one answer merges the two sides.
	rejoinFanout = 3
)

// Run joins cfg.Join, retrying with backoff until a peer answers or ctx
// ends, and keeps rejoining join addresses that are not members. An
// ingester then registers: ACTIVE at once when its ACTIVE entry is still
// in the ring, else JOINING with the tokens of its TokensFile or freshly
// chosen ones, and ACTIVE once they have settled (join.go). Every
// member heartbeats (ingesters), forgets instances silent for longer than
// AutoForgetAfter and drops expired tombstones every HeartbeatPeriod. When
// ctx ends an ingester marks itself LEAVING (unless SetLeaving did), then
// LEFT (a tombstone without tokens), waits (bounded) for that to be
// gossiped, and then memberlist leaves and shuts down. Run returns nil
// after a clean stop; it may be called only once.
func (r *Ring) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("ring member already ran: Run may be called only once")
	}
	// The loops run until the lifecycle is over, which outlasts ctx by
	// the leave.
	loops, stopLoops := context.WithCancel(context.Background())
	stopc := loops.Done()
	var wg sync.WaitGroup
	wg.Go(func() { r.sendReliableLoop(stopc) })

	var err error
	killed := false
	if r.join(ctx) {
		wg.Go(func() { r.rejoinLoop(loops) })
		wg.Go(func() { r.syncLoop(stopc) })
		// Heartbeats have their own goroutine, so that choosing tokens,
		// which takes a while for a large group of joiners, never
		// delays them.
		wg.Go(func() { r.tickLoop(stopc) })
		killed, err = r.lifecycle(ctx)
	}

	stopLoops()
	wg.Wait()
	if !killed {
		// memberlist's leave only tells its peers that this member
		// left rather than failed; the ring learned it from the
		// tombstone already. Its wait never ends early when every
		// peer has left too (as all stop at once), so bound it by a
		// few gossip rounds rather than leaveTimeout.
		if err := r.ml.Leave(r.spreadTime); err != nil {
			r.logger.Debug("Failed to leave memberlist cluster", "err", err)
		}
	}
	r.stopped.Store(true)
	if shutdownErr := r.ml.Shutdown(); shutdownErr != nil {
		return errors.Join(err, fmt.Errorf("shut down memberlist: %w", shutdownErr))
	}
	return err
}

func (r *Ring) isIngester() bool { return r.instanceAddr != "" }

// lifecycle registers an ingester, settles its join, and leaves when ctx
// ends; it reports whether it stopped because of a (test) kill instead.
func (r *Ring) lifecycle(ctx context.Context) (killed bool, err error) {
	var settle <-chan time.Time // ticks while JOINING
	if r.isIngester() {
		joining, err := r.register()
		if err != nil {
			return false, err
		}
		if joining {
			ticker := time.NewTicker(r.joinInterval)
			defer ticker.Stop()
			settle = ticker.C
		}
	}
	for {
		select {
		case <-ctx.Done():
			if r.isIngester() {
				r.leave()
			}
			return false, nil
		case <-r.hooks.killc:
			return true, nil
		case <-settle:
			joining, err := r.settleJoin()
			if err != nil {
				r.leave()
				return false, err
			}
			if !joining {
				settle = nil
			}
		}
	}
}

// tickLoop runs tick every HeartbeatPeriod until stopc closes or a (test)
// kill.
func (r *Ring) tickLoop(stopc <-chan struct{}) {
	ticker := time.NewTicker(r.cfg.HeartbeatPeriod)
	defer ticker.Stop()
	for {
		select {
		case <-stopc:
			return
		case <-r.hooks.killc:
			return
		case <-ticker.C:
			r.tick()
		}
	}
}

// join contacts cfg.Join until one peer answers; it returns false if ctx
// ended first.
func (r *Ring) join(ctx context.Context) bool {
	if len(r.cfg.Join) == 0 {
		r.joined.Store(true)
		return true
	}
	backoff := minJoinBackoff
	for attempt := 1; ; attempt++ {
		r.logger.Info("Joining memberlist cluster", "peers", r.cfg.Join, "attempt", attempt)
		n, err := r.ml.Join(r.cfg.Join)
		if n > 0 {
			r.joined.Store(true)
			r.logger.Info("Joined memberlist cluster", "contacted", n, "members", r.ml.NumMembers())
			return true
		}
		r.logger.Warn("Failed to join memberlist cluster", "peers", r.cfg.Join, "retry_in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxJoinBackoff)
	}
}

// rejoinLoop rejoins, every rejoinInterval until ctx ends, up to
// rejoinFanout join addresses that are not alive members. memberlist only
// gossips to members it believes dead for GossipToTheDeadTime and only
// push/pulls with live ones, so after a longer network split each side
// would stay alone for good; with join addresses that cover the cluster
// (a headless Service), one successful push/pull across merges them. In a
// healthy cluster every join address is a member and nothing is sent.
func (r *Ring) rejoinLoop(ctx context.Context) {
	if len(r.cfg.Join) == 0 {
		return
	}
	ticker := time.NewTicker(r.rejoinInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		targets := r.rejoinTargets(ctx)
		if len(targets) == 0 {
			continue
		}
		n, err := r.ml.Join(targets)
		if n > 0 {
			r.logger.Info("Rejoined join addresses that were not members", "addresses", targets, "contacted", n, "members", r.ml.NumMembers())
		} else {
			r.logger.Debug("Failed to rejoin join addresses that are not members", "addresses", targets, "err", err)
		}
	}
}

// rejoinTargets resolves the join addresses and returns up to rejoinFanout
// of them, at random, that are not alive members.
func (r *Ring) rejoinTargets(ctx context.Context) []string {
	alive := map[string]bool{}
	for _, n := range r.alivePeers() {
		alive[n.Address()] = true
	}
	self := r.GossipAddr()
	var targets []string
	for _, j := range r.cfg.Join {
		for _, addr := range r.resolveJoin(ctx, j) {
			if !alive[addr] && addr != self && !slices.Contains(targets, addr) {
				targets = append(targets, addr)
			}
		}
	}
	rand.Shuffle(len(targets), func(i, j int) { targets[i], targets[j] = targets[j], targets[i] })
	return targets[:min(len(targets), rejoinFanout)]
}

// resolveJoin returns the ip:port addresses of a join address, with the
// gossip port when it names none, as memberlist does.
func (r *Ring) resolveJoin(ctx context.Context, join string) []string {
	host, port, err := net.SplitHostPort(join)
	if err != nil {
		host, port = join, strconv.Itoa(int(r.ml.LocalNode().Port))
	}
	if net.ParseIP(host) != nil {
		return []string{net.JoinHostPort(host, port)}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		r.logger.Debug("Failed to resolve join address", "address", join, "err", err)
		return nil
	}
	addrs := make([]string, 0, len(ips))
	for _, ip := range ips {
		addrs = append(addrs, net.JoinHostPort(ip.IP.String(), port))
	}
	return addrs
}

// register adds this ingester to the ring and reports whether it is
// JOINING. When its entry in the ring is ACTIVE or LEAVING with tokens (a
// restart after a crash), it registers ACTIVE with them and their original
// registration time, since they route the series it holds. Otherwise it
// registers JOINING: with the tokens and registration time of TokensFile,
// which it keeps if they fit the ring, or with balanced tokens chosen
// against the ring as it knows it so far (see joiner.plan); settleJoin takes it
// from there. The tokens in use are saved in TokensFile.
func (r *Ring) register() (joining bool, err error) {
	self := InstanceDesc{
		ID:    r.id,
		Addr:  r.instanceAddr,
		Zone:  r.cfg.Zone,
		State: ACTIVE,
	}
	prev, from := r.reusableTokens()
	self.Tokens, self.RegisteredAt = prev.Tokens, prev.RegisteredAt
	if self.RegisteredAt == 0 {
		self.RegisteredAt = r.now().UnixMilli()
	}
	if from != "ring" {
		self.State = JOINING
		if from == "" {
			from = "chosen"
		}
		self.Tokens = r.joiningTokens(r.snap.Load(), self)
	}
	if !(from == "file" && slices.Equal(self.Tokens, prev.Tokens)) {
		r.saveTokens(self.Tokens, self.RegisteredAt)
	}

	r.descMtx.Lock()
	defer r.descMtx.Unlock()
	if r.leaving {
		self.State = LEAVING
	}
	r.self = self
	r.writeSelfLocked(nil)
	r.logger.Info("Registered in the ring", "id", r.id, "addr", r.instanceAddr, "zone", r.cfg.Zone, "state", self.State, "tokens", len(self.Tokens), "tokens_from", from)
	return self.State == JOINING, nil
}

// writeSelfLocked stores r.self as this ingester's entry with a fresh
// heartbeat and broadcasts it. The heartbeat is bumped past any version of
// this instance already known, so the new entry wins the merge everywhere
// even when this clock lags the one of a previous incarnation, two changes
// share a millisecond, or another member forgot this instance. done, if not
// nil, is closed once the broadcast is over. The caller holds descMtx.
func (r *Ring) writeSelfLocked(done chan struct{}) {
	hb := r.now().UnixMilli()
	cur, had := r.desc[r.id]
	if had {
		hb = max(hb, cur.Heartbeat+1)
		if cur.State == LEFT && r.self.State != LEFT && cur.Heartbeat > r.self.Heartbeat {
			r.logger.Warn("Another member removed this instance from the ring; registering again", "id", r.id)
		}
	}
	r.self.Heartbeat = hb
	r.desc[r.id] = r.self
	r.rebuildLocked()
	r.broadcastLocked(r.self, had && version(&cur) == version(&r.self), done)
}

// tick runs every HeartbeatPeriod: heartbeat, forget instances that have
// been silent too long and tombstones that have expired, and refresh the
// health-dependent gauges.
func (r *Ring) tick() {
	r.descMtx.Lock()
	defer r.descMtx.Unlock()
	if r.self.ID != "" && r.self.State != LEFT && !r.hooks.heartbeatsPaused.Load() {
		r.writeSelfLocked(nil)
	}
	now := r.now()
	changed := r.forgetStaleLocked(now)
	if r.cfg.TombstoneTimeout > 0 && r.desc.removeTombstones(now, r.cfg.TombstoneTimeout) > 0 {
		changed = true
	}
	if changed {
		r.rebuildLocked()
	}
	r.metrics.observe(r.snap.Load(), r.id, r.minHeartbeat())
}

// forgetStaleLocked turns every other instance whose heartbeat is older than
// AutoForgetAfter into a tombstone (buryLocked) and reports whether it found
// any. Every member notices at about the same time, since all measure from
// the same heartbeat; mergeRemote keeps gossip from bringing such a stale
// entry back. The caller holds descMtx.
func (r *Ring) forgetStaleLocked(now time.Time) bool {
	if r.cfg.AutoForgetAfter <= 0 {
		return false
	}
	limit := now.Add(-r.cfg.AutoForgetAfter).UnixMilli()
	forgot := false
	for _, id := range slices.Sorted(maps.Keys(r.desc)) {
		inst := r.desc[id]
		if id == r.id || inst.State == LEFT || inst.Heartbeat >= limit {
			continue
		}
		r.buryLocked(inst, now)
		r.metrics.forgotten.WithLabelValues(forgetAuto).Inc()
		r.logger.Warn("Forgot ring instance that stopped heartbeating", "id", id, "addr", inst.Addr, "state", inst.State, "last_heartbeat", time.UnixMilli(inst.Heartbeat), "auto_forget_after", r.cfg.AutoForgetAfter)
		forgot = true
	}
	return forgot
}

// buryLocked replaces inst by a tombstone and broadcasts it unless it has
// expired already; the caller holds descMtx and rebuilds the snapshot.
//
// The tombstone's heartbeat is the one right after inst's, not now: it
// buries the version of inst this member saw and no newer one. A member
// that hears nothing from an instance (its inbound network is broken, or
// its clock runs ahead) would otherwise bury every healthy instance
// cluster-wide until their next heartbeats. Its age therefore counts from
// that heartbeat too: the tombstone of an instance silent for longer than
// TombstoneTimeout, as auto-forgotten ones are by default, expires at once,
// and what keeps the instance from coming back is that every member drops
// entries that stale (mergeRemote).
func (r *Ring) buryLocked(inst InstanceDesc, now time.Time) {
	tomb := InstanceDesc{
		ID:           inst.ID,
		Addr:         inst.Addr,
		Zone:         inst.Zone,
		State:        LEFT,
		Heartbeat:    inst.Heartbeat + 1,
		RegisteredAt: inst.RegisteredAt,
	}
	r.desc[inst.ID] = tomb
	if r.cfg.TombstoneTimeout == 0 || tomb.Heartbeat >= now.Add(-r.cfg.TombstoneTimeout).UnixMilli() {
		r.broadcastLocked(tomb, false, nil)
	}
}

// Errors of Forget, which ServeHTTP maps to status codes.
var (
	errUnknownInstance = errors.New("no such instance in the ring")
	errNotForgettable  = errors.New("only unhealthy instances can be forgotten")
)

// Forget removes the unhealthy instance id from the ring, as auto-forget
// would later: it becomes a tombstone that every member learns of (see
// buryLocked). It refuses healthy instances and tombstones, since a healthy
// instance would only register again with its next heartbeat.
func (r *Ring) Forget(id string) error {
	r.descMtx.Lock()
	defer r.descMtx.Unlock()
	inst, ok := r.desc[id]
	if !ok {
		return fmt.Errorf("forget %q: %w", id, errUnknownInstance)
	}
	now := r.now()
	if inst.State == LEFT {
		return fmt.Errorf("forget %q: it is already LEFT: %w", id, errNotForgettable)
	}
	if inst.healthy(r.minHeartbeat()) {
		age := now.Sub(time.UnixMilli(inst.Heartbeat)).Round(time.Millisecond)
		return fmt.Errorf("forget %q: it heartbeated %s ago, within --ring.heartbeat-timeout (%s): %w", id, age, r.cfg.HeartbeatTimeout, errNotForgettable)
	}
	r.buryLocked(inst, now)
	r.rebuildLocked()
	r.metrics.forgotten.WithLabelValues(forgetManual).Inc()
	r.logger.Warn("Forgot ring instance on request", "id", id, "addr", inst.Addr, "last_heartbeat", time.UnixMilli(inst.Heartbeat))
	return nil
}

// SetLeaving marks this ingester LEAVING and gossips it, so writers route its
// series to the next instances while readers still ask it. It returns once
// the change has been gossiped (as memberlist's broadcast queue counts it,
// about a second), by when every member has most likely heard, or when ctx
// ends after at least one peer acknowledged it; it returns an error when
// ctx ends before any peer did. The ingester stays LEAVING either way, and
// Run turns it LEFT when its context ends. Called before this ingester
// registered, it makes it register LEAVING. Calling it again does nothing.
func (r *Ring) SetLeaving(ctx context.Context) error {
	if !r.isIngester() {
		return errors.New("set LEAVING: this ring member is not an ingester")
	}
	r.descMtx.Lock()
	if r.leaving {
		r.descMtx.Unlock()
		return nil
	}
	r.leaving = true
	if r.self.ID == "" {
		r.descMtx.Unlock()
		return nil
	}
	r.self.State = LEAVING
	done := make(chan struct{})
	r.writeSelfLocked(done)
	self := r.self
	r.descMtx.Unlock()
	r.logger.Info("Ring instance is LEAVING", "id", r.id)
	if err := r.spread(ctx, self, done, true); err != nil {
		return fmt.Errorf("gossip that instance %q is LEAVING: %w", r.id, err)
	}
	return nil
}

// leave moves this ingester through LEAVING to LEFT and waits, at most
// leaveTimeout, until the tombstone has spread.
func (r *Ring) leave() {
	r.descMtx.Lock()
	if r.self.ID == "" {
		r.descMtx.Unlock()
		return
	}
	r.logger.Info("Leaving the ring", "id", r.id)
	if r.self.State != LEAVING {
		r.self.State = LEAVING
		r.writeSelfLocked(nil)
	}
	r.self.State = LEFT
	r.self.Tokens = nil
	done := make(chan struct{})
	r.writeSelfLocked(done)
	self := r.self
	r.descMtx.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
	defer cancel()
	if err := r.spread(ctx, self, done, false); err != nil {
		r.logger.Warn("Timed out gossiping that this instance left the ring; peers will see it unhealthy instead", "id", r.id, "timeout", leaveTimeout)
		return
	}
	r.logger.Info("Left the ring", "id", r.id)
}

// spread makes sure that at least one peer heard of inst, this ingester's
// own entry that was just broadcast (done closes when the broadcast is
// over): it sends inst over TCP to up to reliableFanout random peers, one
// after the other, until one acknowledges; from there the news spreads like
// any other. Then, if waitBroadcast is set or no peer acknowledged, it
// waits for the broadcast to be over too, by which time every member has
// most likely heard. Waiting for the broadcast alone can take until ctx
// ends when every peer is leaving too (memberlist stops gossiping to
// members that left), as when a whole cluster stops.
func (r *Ring) spread(ctx context.Context, inst InstanceDesc, done <-chan struct{}, waitBroadcast bool) error {
	if r.ml == nil {
		return nil
	}
	peers := r.alivePeers()
	if len(peers) == 0 {
		return nil
	}
	msg, err := encodeMessage(msgReliable, []InstanceDesc{inst})
	if err != nil {
		panic("BUG: " + err.Error()) // Only valid descriptors get here.
	}
	rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	acked := false
	for _, p := range peers[:min(reliableFanout, len(peers))] {
		if ctx.Err() != nil {
			break
		}
		if err := r.ml.SendReliable(p, msg); err != nil {
			r.logger.Debug("Failed to send ring update", "peer", p.Name, "err", err)
			continue
		}
		r.metrics.messagesSent.WithLabelValues(kindReliable).Inc()
		acked = true
		break
	}
	if acked && !waitBroadcast {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		if acked {
			return nil
		}
		return context.Cause(ctx)
	}
}
