// Package ring is the consistent-hash ring of ingesters: every Census
// component is a memberlist member, ingesters own random tokens and
// heartbeat, and the descriptor of all instances is gossiped as a CRDT
// (desc.go). Get maps a token to the ingesters that should store it.
package ring

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// ErrEmptyRing is returned by Get when no instance is healthy and ACTIVE.
var ErrEmptyRing = errors.New("empty ring: no healthy ACTIVE instance")

const (
	// tombstoneTTLFactor times HeartbeatTimeout is how long LEFT entries
	// are kept: long enough that every member has heard of the leave
	// before the tombstone is forgotten.
	tombstoneTTLFactor = 10
	// leaveTimeout bounds each step of a graceful stop: waiting for the
	// LEFT tombstone to be gossiped, then memberlist's own Leave.
	leaveTimeout = 5 * time.Second
	// Join retries back off from minJoinBackoff to maxJoinBackoff.
	minJoinBackoff = 200 * time.Millisecond
	maxJoinBackoff = 10 * time.Second
)

// Ring is this process's member of the ring. It is safe for concurrent use.
// New binds the gossip port and Run releases it, so every Ring must be run.
type Ring struct {
	cfg          Config
	id           string // this member's instance ID
	instanceAddr string // gRPC address when this member is an ingester, else empty
	nodeName     string // memberlist name: id plus a random suffix
	logger       *slog.Logger
	metrics      *metrics
	now          func() time.Time // replaced by internal tests to fix time

	ml    *memberlist.Memberlist
	queue *memberlist.TransmitLimitedQueue
	// maxPacketMessage is the largest delta the broadcast queue can send.
	maxPacketMessage int

	// descMtx guards desc, and serialises snapshot rebuilds and broadcasts
	// so that they happen in the order desc changed.
	descMtx sync.Mutex
	desc    desc

	// snap is rebuilt from desc on every change and read without locks.
	snap atomic.Pointer[snapshot]

	reliableMtx     sync.Mutex        // guards reliablePending
	reliablePending map[string][]byte // latest oversized delta per instance
	reliablec       chan struct{}     // wakes sendReliableLoop; capacity 1

	started atomic.Bool // Run was called
	joined  atomic.Bool // the join succeeded (or there was nobody to join)
	stopped atomic.Bool // Run shut memberlist down

	// heartbeatsPaused makes Run skip heartbeats, to test how the others
	// treat an ingester that hangs without leaving.
	heartbeatsPaused atomic.Bool
}

// New creates this process's ring member and binds its gossip port; it does
// not join yet (see Run). A non-empty instanceAddr makes this member an
// ingester that owns cfg.Tokens tokens and receives writes at instanceAddr,
// which must be dialable by other members. Members without an instanceAddr
// (agents, distributors, queriers) only watch the ring.
func New(cfg Config, instanceAddr string, logger *slog.Logger, reg prometheus.Registerer) (*Ring, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid ring config: %w", err)
	}
	if instanceAddr != "" {
		if err := validateInstanceAddr(instanceAddr); err != nil {
			return nil, err
		}
	}
	id := cfg.InstanceID
	if id == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("default --instance.id to the hostname: %w", err)
		}
		id = h
	}

	r := newRing(cfg, id, instanceAddr, logger, reg)
	mlCfg, err := r.memberlistConfig()
	if err != nil {
		return nil, err
	}
	r.maxPacketMessage = mlCfg.UDPBufferSize - packetHeadroom
	// The queue asks for the member count while memberlist may already be
	// gossiping, before Create has returned.
	var created atomic.Pointer[memberlist.Memberlist]
	r.queue = &memberlist.TransmitLimitedQueue{
		RetransmitMult: mlCfg.RetransmitMult,
		NumNodes: func() int {
			if ml := created.Load(); ml != nil {
				return ml.NumMembers()
			}
			return 1
		},
	}
	ml, err := memberlist.Create(mlCfg)
	if err != nil {
		return nil, fmt.Errorf("create memberlist on %s: %w", cfg.BindAddress, err)
	}
	created.Store(ml)
	r.ml = ml
	return r, nil
}

// newRing returns a Ring without memberlist, for New to finish and for
// internal tests to drive directly.
func newRing(cfg Config, id, instanceAddr string, logger *slog.Logger, reg prometheus.Registerer) *Ring {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Ring{
		cfg:          cfg,
		id:           id,
		instanceAddr: instanceAddr,
		// A random suffix keeps memberlist names unique when an instance
		// restarts at a new address before the old one is declared dead,
		// and when watchers share a hostname.
		nodeName:         id + "-" + strconv.FormatUint(rand.Uint64()&0xffffffff, 16),
		logger:           logger,
		metrics:          newMetrics(reg, instanceAddr != ""),
		now:              time.Now,
		queue:            &memberlist.TransmitLimitedQueue{RetransmitMult: 4, NumNodes: func() int { return 1 }},
		maxPacketMessage: memberlist.DefaultLANConfig().UDPBufferSize - packetHeadroom,
		desc:             desc{},
		reliablePending:  map[string][]byte{},
		reliablec:        make(chan struct{}, 1),
	}
	r.snap.Store(newSnapshot(r.desc, nil))
	return r
}

func (r *Ring) memberlistConfig() (*memberlist.Config, error) {
	host, port, err := splitBindAddress(r.cfg.BindAddress)
	if err != nil {
		return nil, err
	}
	c := memberlist.DefaultLANConfig()
	c.Name = r.nodeName
	c.BindAddr = host
	c.BindPort = port // memberlist sets it to the bound port when 0
	c.AdvertisePort = port
	c.Delegate = delegate{r}
	c.Logger = log.New(memberlistLogWriter{logger: r.logger, stopped: &r.stopped}, "", 0)
	// Heartbeats must spread well within HeartbeatTimeout: gossip deltas
	// several times per heartbeat period and push/pull the full state at
	// least every other period. With the default 15s period these are
	// memberlist's LAN defaults; short test periods converge in seconds.
	c.GossipInterval = max(10*time.Millisecond, min(c.GossipInterval, r.cfg.HeartbeatPeriod/4))
	c.PushPullInterval = min(c.PushPullInterval, 2*r.cfg.HeartbeatPeriod)
	return c, nil
}

func validateInstanceAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("invalid instance address %q: %w", addr, err)
	}
	if host == "" || net.ParseIP(host).IsUnspecified() {
		return fmt.Errorf("instance address %q must name a host other members can dial", addr)
	}
	return nil
}

// GossipAddr returns the host:port other members reach this one at; with
// port 0 in BindAddress it carries the port actually bound.
func (r *Ring) GossipAddr() string {
	return r.ml.LocalNode().Address()
}

// ReplicationFactor returns how many replicas Get looks for.
func (r *Ring) ReplicationFactor() int { return r.cfg.ReplicationFactor }

// Run joins cfg.Join, retrying with backoff until a peer answers or ctx
// ends; registers this ingester ACTIVE; and heartbeats every
// HeartbeatPeriod. When ctx ends an ingester marks itself LEAVING, then
// LEFT (a tombstone without tokens), waits (bounded) for that to be
// gossiped, and then memberlist leaves and shuts down. Run returns nil after
// a clean stop; it may be called only once.
func (r *Ring) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("ring member already ran: Run may be called only once")
	}
	stopc := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { r.sendReliableLoop(stopc) })

	if r.join(ctx) {
		var self InstanceDesc
		if r.isIngester() {
			self = r.register()
		}
		ticker := time.NewTicker(r.cfg.HeartbeatPeriod)
	loop:
		for {
			select {
			case <-ctx.Done():
				break loop
			case <-ticker.C:
				self = r.tick(self)
			}
		}
		ticker.Stop()
		if r.isIngester() {
			r.leave(self)
		}
	}

	close(stopc)
	wg.Wait()
	if err := r.ml.Leave(leaveTimeout); err != nil {
		r.logger.Warn("Failed to leave memberlist cluster", "err", err)
	}
	r.stopped.Store(true)
	if err := r.ml.Shutdown(); err != nil {
		return fmt.Errorf("shut down memberlist: %w", err)
	}
	return nil
}

func (r *Ring) isIngester() bool { return r.instanceAddr != "" }

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

// register adds this ingester to the ring as ACTIVE. It reuses the tokens of
// a previous incarnation still in the ring, so that a restarted ingester gets
// back the series it holds, and otherwise draws new ones that no known
// instance owns.
func (r *Ring) register() InstanceDesc {
	r.descMtx.Lock()
	prev, had := r.desc[r.id]
	taken := map[uint32]struct{}{}
	for id, inst := range r.desc {
		if id == r.id {
			continue
		}
		for _, t := range inst.Tokens {
			taken[t] = struct{}{}
		}
	}
	r.descMtx.Unlock()

	reuse := had && prev.State != LEFT && len(prev.Tokens) == r.cfg.Tokens
	var tokens []uint32
	if reuse {
		tokens = prev.Tokens
	} else {
		rnd := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
		tokens = generateTokens(rnd, r.cfg.Tokens, taken)
	}
	self := r.writeSelf(InstanceDesc{
		ID:           r.id,
		Addr:         r.instanceAddr,
		Zone:         r.cfg.Zone,
		State:        ACTIVE,
		Tokens:       tokens,
		RegisteredAt: r.now().UnixMilli(),
	}, nil)
	r.logger.Info("Registered in the ring", "id", r.id, "addr", r.instanceAddr, "tokens", len(tokens), "reused_tokens", reuse)
	return self
}

// writeSelf stores self as this ingester's entry with a fresh heartbeat and
// broadcasts it. The heartbeat is bumped past any version of this instance
// already known, so the new entry wins the merge everywhere even when this
// clock lags the one of a previous incarnation or two changes share a
// millisecond.
func (r *Ring) writeSelf(self InstanceDesc, done chan struct{}) InstanceDesc {
	r.descMtx.Lock()
	defer r.descMtx.Unlock()
	self.Heartbeat = r.now().UnixMilli()
	if cur, ok := r.desc[r.id]; ok {
		self.Heartbeat = max(self.Heartbeat, cur.Heartbeat+1)
	}
	r.desc[r.id] = self
	r.rebuildLocked()
	r.broadcastLocked(self, done)
	return self
}

// tick runs every HeartbeatPeriod: heartbeat, forget old tombstones, and
// refresh the health-dependent gauges.
func (r *Ring) tick(self InstanceDesc) InstanceDesc {
	if r.isIngester() && !r.heartbeatsPaused.Load() {
		self = r.writeSelf(self, nil)
	}
	r.descMtx.Lock()
	if r.desc.removeTombstones(r.now(), tombstoneTTLFactor*r.cfg.HeartbeatTimeout) > 0 {
		r.rebuildLocked()
	}
	r.descMtx.Unlock()
	r.metrics.observe(r.snap.Load(), r.id, r.minHeartbeat())
	return self
}

// leave moves this ingester through LEAVING to LEFT and waits, at most
// leaveTimeout, until the tombstone has been gossiped.
func (r *Ring) leave(self InstanceDesc) {
	r.logger.Info("Leaving the ring", "id", r.id)
	self.State = LEAVING
	self = r.writeSelf(self, nil)

	self.State = LEFT
	self.Tokens = nil
	done := make(chan struct{})
	r.writeSelf(self, done)
	if r.ml.NumMembers() <= 1 {
		r.logger.Info("Left the ring", "id", r.id, "peers", 0)
		return
	}
	timer := time.NewTimer(leaveTimeout)
	defer timer.Stop()
	select {
	case <-done:
		r.logger.Info("Left the ring", "id", r.id)
	case <-timer.C:
		r.logger.Warn("Timed out gossiping that this instance left the ring; peers will see it unhealthy instead", "id", r.id, "timeout", leaveTimeout)
	}
}

// rebuildLocked swaps in a snapshot of desc. The caller holds descMtx.
func (r *Ring) rebuildLocked() {
	s := newSnapshot(r.desc, r.snap.Load())
	r.snap.Store(s)
	r.metrics.observe(s, r.id, r.minHeartbeat())
}

// minHeartbeat returns the oldest heartbeat (unix milliseconds) that still
// counts as healthy now.
func (r *Ring) minHeartbeat() int64 {
	return r.now().UnixMilli() - r.cfg.HeartbeatTimeout.Milliseconds()
}

// Ready returns nil once this member has joined the cluster (or had nobody
// to join) and, for an ingester, its own ACTIVE entry is in the ring;
// otherwise it says what is missing.
func (r *Ring) Ready() error {
	if !r.started.Load() {
		return errors.New("ring member is not running yet")
	}
	if r.stopped.Load() {
		return errors.New("ring member has stopped")
	}
	if !r.joined.Load() {
		return fmt.Errorf("not joined the memberlist cluster yet (peers %v)", r.cfg.Join)
	}
	if !r.isIngester() {
		return nil
	}
	s := r.snap.Load()
	i, ok := s.index(r.id)
	if !ok {
		return fmt.Errorf("instance %q is not in the ring yet", r.id)
	}
	if st := s.instances[i].State; st != ACTIVE {
		return fmt.Errorf("instance %q is %s in the ring, not ACTIVE", r.id, st)
	}
	return nil
}

// Get appends to buf[:0] the write replicas of token: walking clockwise
// from the first ring token >= token (wrapping around), up to
// ReplicationFactor distinct instances that are ACTIVE with a heartbeat
// within HeartbeatTimeout. Other instances are skipped, so their writes go
// to the next instance clockwise. It returns fewer replicas when fewer
// exist, and ErrEmptyRing when none do. Get allocates nothing when buf has
// capacity for ReplicationFactor descriptors. Callers must not modify the
// returned descriptors: their Tokens are shared with the ring.
func (r *Ring) Get(token uint32, buf []InstanceDesc) ([]InstanceDesc, error) {
	return r.snap.Load().get(token, r.cfg.ReplicationFactor, r.minHeartbeat(), buf)
}

// ReadInstances returns, sorted by ID, every healthy instance that may hold
// data: ACTIVE or LEAVING with a heartbeat within HeartbeatTimeout. Callers
// must not modify the descriptors' Tokens.
func (r *Ring) ReadInstances() []InstanceDesc {
	s := r.snap.Load()
	minHB := r.minHeartbeat()
	var out []InstanceDesc
	for i := range s.instances {
		inst := &s.instances[i]
		if (inst.State == ACTIVE || inst.State == LEAVING) && inst.healthy(minHB) {
			out = append(out, *inst)
		}
	}
	return out
}

// Instances returns every known instance, including unhealthy ones and
// LEFT tombstones, sorted by ID. Callers must not modify the descriptors'
// Tokens.
func (r *Ring) Instances() []InstanceDesc {
	return slices.Clone(r.snap.Load().instances)
}
