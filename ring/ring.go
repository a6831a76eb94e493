// Package ring is the consistent-hash ring of ingesters: every Census
// component is a memberlist member, ingesters own tokens chosen to balance
// the ring (tokens.go) and heartbeat, and the descriptor of all instances is
// gossiped as a CRDT (desc.go). Get maps a token to the ingesters that
// should store it.
package ring

import (
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

// ErrEmptyRing is returned by Get when no instance is healthy and JOINING or
// ACTIVE.
var ErrEmptyRing = errors.New("empty ring: no healthy ACTIVE instance")

// spreadRounds is how many gossip intervals Run allows a broadcast to
// reach every member: about log3(1000) < 7 rounds for a thousand.
const spreadRounds = 10

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
	// spreadTime is spreadRounds gossip intervals: how long memberlist
	// may take to announce a leave, and how often syncLoop push/pulls at
	// most.
	spreadTime time.Duration
	// rejoinInterval is how often Run rejoins join addresses that are not
	// members.
	rejoinInterval time.Duration

	// joinInterval is how often a JOINING ingester checks its tokens
	// against the ring (settleJoin): one gossip interval.
	joinInterval time.Duration
	// joins is the join logic (join.go); only the lifecycle goroutine of
	// Run uses it.
	joins *joiner

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

	hooks testHooks
}

// testHooks are the switches tests use to make a member misbehave; nothing
// else sets them.
type testHooks struct {
	// heartbeatsPaused makes Run skip heartbeats, to test how the others
	// treat an ingester that hangs without leaving.
	heartbeatsPaused atomic.Bool
	// killc, closed by Kill, makes Run stop the way a crash would: no
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
	r.joinInterval = mlCfg.GossipInterval
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
		joins:            newJoiner(cfg),
		hooks:            testHooks{killc: make(chan struct{})},
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
	c.Logger = log.New(memberlistLogWriter{logger: r.logger, stopped: &r.stopped, lines: r.metrics.memberlistLines, limit: newLogLimiter(10 * time.Second)}, "", 0)
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

// ID is this member's instance ID in the ring.
func (r *Ring) ID() string { return r.id }

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
