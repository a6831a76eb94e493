// Package ring is the consistent-hash ring of ingesters: every Census
// component is a memberlist member, ingesters own tokens chosen to balance
// the ring (tokens.go) and heartbeat, and the descriptor of all instances is
// gossiped as a CRDT (desc.go). Get maps a token to the ingesters that
// should store it.
package ring

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// ErrEmptyRing is returned by Get when no instance is healthy and JOINING or
// ACTIVE.
var ErrEmptyRing = errors.New("empty ring: no healthy ACTIVE instance")

const (
	// leaveTimeout bounds how long a graceful stop waits for the LEFT
	// tombstone to reach a peer.
	leaveTimeout = 5 * time.Second
	// Join retries back off from minJoinBackoff to maxJoinBackoff.
	minJoinBackoff = 200 * time.Millisecond
	maxJoinBackoff = 10 * time.Second
	// spreadRounds is how many gossip intervals Run allows a broadcast to
	// reach every member: about log3(1000) < 7 rounds for a thousand.
	spreadRounds = 10
	// rejoinFanout is how many join addresses that are not members a
	// rejoin contacts at most: one answer merges the two sides.
	rejoinFanout = 3
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
	// spreadTime is spreadRounds gossip intervals: how long a JOINING
	// ingester waits for the entries of instances that chose their tokens
	// at the same time to reach it, and how long memberlist may take to
	// announce a leave.
	spreadTime time.Duration
	// rejoinInterval is how often Run rejoins join addresses that are not
	// members.
	rejoinInterval time.Duration

	// joinChoices caches joiningTokens' token choices. Only the lifecycle
	// goroutine of Run uses it.
	joinChoices map[joinChoice][]uint32

	// descMtx guards desc and the fields below it, and serialises snapshot
	// rebuilds and broadcasts so that they happen in the order desc
	// changed.
	descMtx sync.Mutex
	desc    desc
	// self is this ingester's entry as it asserts it: every heartbeat
	// writes it again, so a newer version written by another member (a
	// forget while this instance was cut off) is overwritten. Its ID is
	// empty until the ingester registered.
	self InstanceDesc
	// leaving is set by SetLeaving, so that an ingester that registers
	// afterwards registers LEAVING.
	leaving bool

	// snap is rebuilt from desc on every change and read without locks.
	snap atomic.Pointer[snapshot]

	peersMtx sync.Mutex                 // guards peers
	peers    map[string]memberlist.Node // alive members but this one, by name; see events

	reliableMtx     sync.Mutex        // guards reliablePending
	reliablePending map[string][]byte // latest oversized delta per instance
	reliablec       chan struct{}     // wakes sendReliableLoop; capacity 1
	syncc           chan struct{}     // wakes syncLoop; capacity 1

	started atomic.Bool // Run was called
	joined  atomic.Bool // the join succeeded (or there was nobody to join)
	stopped atomic.Bool // Run shut memberlist down

	// heartbeatsPaused makes Run skip heartbeats, to test how the others
	// treat an ingester that hangs without leaving.
	heartbeatsPaused atomic.Bool
	// killc, closed by tests, makes Run stop the way a crash would: no
	// LEFT tombstone and no memberlist leave.
	killc    chan struct{}
	killOnce sync.Once
}

// New creates this process's ring member and binds its gossip port; it does
// not join yet (see Run). A non-empty instanceAddr makes this member an
// ingester that owns cfg.Tokens tokens and receives writes at instanceAddr,
// which must be dialable by other members. Members without an instanceAddr
// (agents, distributors, queriers) only watch the ring.
func New(cfg Config, instanceAddr string, logger *slog.Logger, reg prometheus.Registerer) (*Ring, error) {
	return newMember(cfg, instanceAddr, logger, reg, nil)
}

// newMember is New with a hook for tests to adjust memberlist's
// configuration (timings, a transport that drops packets) before it starts.
func newMember(cfg Config, instanceAddr string, logger *slog.Logger, reg prometheus.Registerer, configure func(*memberlist.Config) error) (*Ring, error) {
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
	if configure != nil {
		if err := configure(mlCfg); err != nil {
			return nil, err
		}
	}
	r.maxPacketMessage = mlCfg.UDPBufferSize - packetHeadroom
	r.spreadTime = spreadRounds * mlCfg.GossipInterval
	r.rejoinInterval = mlCfg.PushPullInterval
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
		if mlCfg.Transport != nil {
			_ = mlCfg.Transport.Shutdown()
		}
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
		syncc:            make(chan struct{}, 1),
		peers:            map[string]memberlist.Node{},
		joinChoices:      map[joinChoice][]uint32{},
		killc:            make(chan struct{}),
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
	c.Events = events{r}
	// Tokens are random bits that LZW cannot shrink, and compressing every
	// packet was the largest CPU cost of gossip in profiles.
	c.EnableCompression = false
	c.Logger = log.New(memberlistLogWriter{logger: r.logger, stopped: &r.stopped}, "", 0)
	// Heartbeats must spread well within HeartbeatTimeout: gossip deltas
	// several times per heartbeat period and push/pull the full state at
	// least every other period. With the default 15s period these are
	// memberlist's LAN defaults; short test periods converge in seconds.
	c.GossipInterval = max(10*time.Millisecond, min(c.GossipInterval, r.cfg.HeartbeatPeriod/4))
	c.PushPullInterval = min(c.PushPullInterval, 2*r.cfg.HeartbeatPeriod)
	if r.cfg.SecretKeyFile != "" {
		key, err := readSecretKey(r.cfg.SecretKeyFile)
		if err != nil {
			return nil, err
		}
		// memberlist builds its keyring from SecretKey; with the
		// default GossipVerifyIncoming it drops anything not encrypted
		// with a key of the ring.
		c.SecretKey = key
	}
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

// ZoneAwareReads reports whether the replicas of every token are in
// distinct zones, which they are once the ingesters that receive writes
// span at least ReplicationFactor zones. Readers may then tolerate failed
// instances in up to ReplicationFactor-1 zones, however many instances
// those zones hold, instead of up to ReplicationFactor-1 instances.
func (r *Ring) ZoneAwareReads() bool {
	return r.snap.Load().zoneAware(r.cfg.ReplicationFactor)
}

// Run joins cfg.Join, retrying with backoff until a peer answers or ctx
// ends, and keeps rejoining join addresses that are not members. An
// ingester then registers: ACTIVE at once when it reuses its tokens (from
// TokensFile, or from its entry still in the ring), else JOINING with
// tokens chosen to balance the ring, and ACTIVE once no instance that
// joined at the same time has made it choose again (settleJoin). Every
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
	var settled <-chan time.Time // fires while JOINING
	if r.isIngester() {
		joining, err := r.register()
		if err != nil {
			return false, err
		}
		if joining {
			settled = time.After(r.spreadTime)
		}
	}
	for {
		select {
		case <-ctx.Done():
			if r.isIngester() {
				r.leave()
			}
			return false, nil
		case <-r.killc:
			return true, nil
		case <-settled:
			settled = nil
			again, err := r.settleJoin()
			if err != nil {
				r.leave()
				return false, err
			}
			if again {
				settled = time.After(r.spreadTime)
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
		case <-r.killc:
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
// JOINING. It reuses the tokens of TokensFile, or else of a previous
// incarnation still in the ring, so that a restarted ingester gets back the
// series it holds, and registers ACTIVE with them and their original
// registration time; otherwise it chooses balanced tokens
// (joiningTokens), saves them in TokensFile, and registers JOINING.
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
	if self.Tokens == nil {
		self.State, from = JOINING, "chosen"
		self.Tokens = r.joiningTokens(r.snap.Load(), self)
	}
	if r.cfg.TokensFile != "" && from != "file" {
		if err := writeTokens(r.cfg.TokensFile, tokensFile{Tokens: self.Tokens, RegisteredAt: self.RegisteredAt}); err != nil {
			return false, fmt.Errorf("save the tokens of instance %q: %w", r.id, err)
		}
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

// reusableTokens returns the tokens this ingester had before, with the
// time it registered with them, and where they come from ("file" or
// "ring"); or no tokens when it has none of the configured count.
func (r *Ring) reusableTokens() (tokensFile, string) {
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
	s := r.snap.Load()
	if i, ok := s.index(r.id); ok {
		if prev := s.instances[i]; prev.State != LEFT && len(prev.Tokens) == r.cfg.Tokens {
			return tokensFile{Tokens: prev.Tokens, RegisteredAt: prev.RegisteredAt}, "ring"
		}
	}
	return tokensFile{}, ""
}

// joiningTokens returns the tokens the JOINING instance self should hold in
// ring s: those it chooses against the instances that registered before it
// (by RegisteredAt, then ID). Instances that join at the same time (a
// StatefulSet started in parallel) each see a ring without the others and,
// choosing the same way, would split the same ranges; so they act as if
// they had joined one by one in that order. The tokens of an older
// instance still JOINING are not taken from its entry, which may still
// change, but computed the same way: what it chooses against the
// instances older than itself. Each instance draws its randomness from a
// seed of its own ID and registration time, so every member that sees the
// same older instances computes the same tokens for each, and the group
// settles in parallel, each instance as soon as its view of the older ones
// has stopped changing (see settleJoin). Younger instances are ignored:
// they yield to self.
func (r *Ring) joiningTokens(s *snapshot, self InstanceDesc) []uint32 {
	var older []InstanceDesc
	for _, inst := range s.instances {
		if inst.ID != self.ID && inst.State.writable() && len(inst.Tokens) > 0 && joinedBefore(inst, self) {
			older = append(older, inst)
		}
	}
	slices.SortFunc(older, func(a, b InstanceDesc) int {
		return cmp.Or(cmp.Compare(a.RegisteredAt, b.RegisteredAt), strings.Compare(a.ID, b.ID))
	})
	// base is, sorted by ID (chooseTokens depends on the order of its
	// instances, and every member builds it alike), the older instances
	// with the tokens they end up with. Only what chooseTokens reads is
	// kept, so that the cache key does not change when an older
	// instance goes from JOINING to ACTIVE or heartbeats.
	var base []InstanceDesc
	for _, inst := range older {
		inst = InstanceDesc{ID: inst.ID, Zone: inst.Zone, State: ACTIVE, Tokens: inst.Tokens, RegisteredAt: inst.RegisteredAt}
		if s.instances[mustIndex(s, inst.ID)].State == JOINING {
			inst.Tokens = r.cachedChoice(inst, len(inst.Tokens), base)
		}
		i, _ := slices.BinarySearchFunc(base, inst.ID, func(a InstanceDesc, id string) int { return strings.Compare(a.ID, id) })
		base = slices.Insert(base, i, inst)
	}
	return r.cachedChoice(self, r.cfg.Tokens, base)
}

func mustIndex(s *snapshot, id string) int {
	i, ok := s.index(id)
	if !ok {
		panic("BUG: instance " + id + " is not in the snapshot it was read from")
	}
	return i
}

// joinChoice identifies a token choice: who chose how many tokens against
// which ring.
type joinChoice struct {
	id           string
	registeredAt int64
	tokens       int
	base         uint64 // checksum of the ring chosen against
}

// maxJoinChoices bounds joinChoices; a group of joiners needs one entry
// per member and version of the ring.
const maxJoinChoices = 4096

// cachedChoice returns the tokens inst chooses against base (sorted by ID),
// remembering them: while a group of instances joins, every settleJoin
// recomputes the choices of all older joiners, mostly against the same
// ring.
func (r *Ring) cachedChoice(inst InstanceDesc, n int, base []InstanceDesc) []uint32 {
	key := joinChoice{id: inst.ID, registeredAt: inst.RegisteredAt, tokens: n, base: checksum(base)}
	if tokens, ok := r.joinChoices[key]; ok {
		return tokens
	}
	if len(r.joinChoices) >= maxJoinChoices {
		clear(r.joinChoices)
	}
	tokens := chooseTokens(joinRand(inst), n, r.cfg.ReplicationFactor, inst.Zone, base)
	r.joinChoices[key] = tokens
	return tokens
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

// settleJoin runs every spreadTime while this ingester is JOINING. When its
// tokens are still those joiningTokens computes from the ring as it is now,
// no instance that joined at the same time has shown up since it chose
// them, and it becomes ACTIVE. Otherwise it takes the new tokens, saves
// them, stays JOINING and reports again, to check once more after the
// ring has had time to settle.
func (r *Ring) settleJoin() (again bool, err error) {
	s := r.snap.Load()
	r.descMtx.Lock()
	self := r.self
	r.descMtx.Unlock()
	if self.State != JOINING {
		return false, nil // SetLeaving came first
	}
	tokens := r.joiningTokens(s, self)
	if slices.Equal(tokens, self.Tokens) {
		r.descMtx.Lock()
		defer r.descMtx.Unlock()
		if r.self.State == JOINING {
			r.self.State = ACTIVE
			r.writeSelfLocked(nil)
			r.logger.Info("Ring instance is ACTIVE", "id", r.id)
		}
		clear(r.joinChoices)
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
	r.writeSelfLocked(nil)
	r.logger.Info("Chose tokens again: instances joined at the same time", "id", r.id)
	return true, nil
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
	if r.self.ID != "" && r.self.State != LEFT && !r.heartbeatsPaused.Load() {
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
// ReplicationFactor distinct instances that are JOINING or ACTIVE with a
// heartbeat within HeartbeatTimeout, in distinct zones when ZoneAwareReads.
// Other instances are skipped, so their writes go to the next instance
// clockwise. It returns fewer replicas when fewer exist (with a whole zone
// down, one fewer), and ErrEmptyRing when none do. Get allocates nothing
// when buf has capacity for ReplicationFactor descriptors (up to 8).
// Callers must not modify the returned descriptors: their Tokens are shared
// with the ring.
func (r *Ring) Get(token uint32, buf []InstanceDesc) ([]InstanceDesc, error) {
	return r.snap.Load().get(token, r.cfg.ReplicationFactor, r.minHeartbeat(), buf)
}

// ReadInstances returns, sorted by ID, every healthy instance that may hold
// data: JOINING, ACTIVE or LEAVING with a heartbeat within
// HeartbeatTimeout. Callers must not modify the descriptors' Tokens.
func (r *Ring) ReadInstances() []InstanceDesc {
	s := r.snap.Load()
	minHB := r.minHeartbeat()
	var out []InstanceDesc
	for i := range s.instances {
		inst := &s.instances[i]
		if inst.State.readable() && inst.healthy(minHB) {
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
