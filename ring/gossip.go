package ring

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// Every gossip message starts with a byte saying what it is, then JSON. The
// byte also leaves room for a later encoding to coexist with this one.
const (
	msgDelta    byte = 'd' // changed instances, from the broadcast queue (UDP)
	msgReliable byte = 'r' // changed instances too big for a packet (TCP)
	msgState    byte = 's' // the full descriptor, on push/pull (TCP)
	msgBeat     byte = 'b' // a new heartbeat of an entry otherwise unchanged (UDP)
)

// packetHeadroom is what memberlist's framing (compound and user message
// headers, 2 and 3 bytes, and encryption, 29 bytes) may take from a UDP
// packet; a delta longer than UDPBufferSize-packetHeadroom goes over TCP
// instead, since the broadcast queue would never find room for it.
const packetHeadroom = 64

// reliableFanout is how many random peers receive each delta that is too big
// for a packet; each peer that learns something passes it on, so the news
// spreads like a broadcast.
const reliableFanout = 3

// wireInstance is an InstanceDesc on the wire. Tokens are packed as
// little-endian uint32s, which JSON writes as base64: about 5.3 bytes per
// token instead of 11, so that a delta with the default 128 tokens fits one
// UDP packet.
type wireInstance struct {
	ID           string `json:"id"`
	Addr         string `json:"addr,omitempty"`
	Zone         string `json:"zone,omitempty"`
	State        State  `json:"state"`
	Tokens       []byte `json:"tokens,omitempty"`
	Heartbeat    int64  `json:"heartbeat"`
	RegisteredAt int64  `json:"registered_at"`
}

type wireMessage struct {
	Instances []wireInstance `json:"instances"`
}

// encodeMessage encodes insts as a message of the given kind.
func encodeMessage(kind byte, insts []InstanceDesc) ([]byte, error) {
	msg := wireMessage{Instances: make([]wireInstance, 0, len(insts))}
	for _, inst := range insts {
		var tokens []byte
		if len(inst.Tokens) > 0 {
			tokens = make([]byte, 0, 4*len(inst.Tokens))
			for _, t := range inst.Tokens {
				tokens = binary.LittleEndian.AppendUint32(tokens, t)
			}
		}
		msg.Instances = append(msg.Instances, wireInstance{
			ID:           inst.ID,
			Addr:         inst.Addr,
			Zone:         inst.Zone,
			State:        inst.State,
			Tokens:       tokens,
			Heartbeat:    inst.Heartbeat,
			RegisteredAt: inst.RegisteredAt,
		})
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("encode ring gossip message: %w", err)
	}
	return append([]byte{kind}, b...), nil
}

// decodeMessage decodes a message written by encodeMessage. It does not
// retain b. Entries that fail validation are left out and counted in
// invalid, so one bad entry does not block the others.
func decodeMessage(b []byte) (kind byte, d desc, invalid int, err error) {
	if len(b) == 0 {
		return 0, nil, 0, errors.New("empty ring gossip message")
	}
	kind = b[0]
	switch kind {
	case msgDelta, msgReliable, msgState:
	default:
		return kind, nil, 0, fmt.Errorf("unknown ring gossip message kind %q", kind)
	}
	var msg wireMessage
	if err := json.Unmarshal(b[1:], &msg); err != nil {
		return kind, nil, 0, fmt.Errorf("decode ring gossip message of %d bytes: %w", len(b), err)
	}
	d = make(desc, len(msg.Instances))
	for _, w := range msg.Instances {
		if len(w.Tokens)%4 != 0 {
			invalid++
			continue
		}
		inst := InstanceDesc{
			ID:           w.ID,
			Addr:         w.Addr,
			Zone:         w.Zone,
			State:        w.State,
			Heartbeat:    w.Heartbeat,
			RegisteredAt: w.RegisteredAt,
		}
		if len(w.Tokens) > 0 {
			inst.Tokens = make([]uint32, len(w.Tokens)/4)
			for i := range inst.Tokens {
				inst.Tokens[i] = binary.LittleEndian.Uint32(w.Tokens[4*i:])
			}
		}
		if inst.validate() != nil {
			invalid++
			continue
		}
		if prev, ok := d[inst.ID]; ok && compareInstances(&prev, &inst) > 0 {
			continue
		}
		d[inst.ID] = inst
	}
	return kind, d, invalid, nil
}

// wireBeat is a heartbeat on the wire: the new heartbeat of the version
// (see version) of an instance's entry that the sender holds. It is a
// delta of that entry, which a member holding the same version applies as
// if it had received the whole entry, and any other member drops: it will
// get the whole entry from the next push/pull. Most gossip is heartbeats,
// and a beat is a tenth of the size of an entry with 128 tokens, so a
// packet carries ten times as many.
type wireBeat struct {
	ID        string `json:"id"`
	Version   uint64 `json:"v"`
	Heartbeat int64  `json:"hb"`
}

// encodeBeat encodes the heartbeat of inst.
func encodeBeat(inst *InstanceDesc) []byte {
	b, err := json.Marshal(wireBeat{ID: inst.ID, Version: version(inst), Heartbeat: inst.Heartbeat})
	if err != nil {
		panic("BUG: encode ring heartbeat: " + err.Error())
	}
	return append([]byte{msgBeat}, b...)
}

// decodeBeat decodes a message written by encodeBeat. It does not retain b.
func decodeBeat(b []byte) (wireBeat, error) {
	var beat wireBeat
	if len(b) == 0 || b[0] != msgBeat {
		return beat, errors.New("not a ring heartbeat message")
	}
	if err := json.Unmarshal(b[1:], &beat); err != nil {
		return beat, fmt.Errorf("decode ring heartbeat message of %d bytes: %w", len(b), err)
	}
	if beat.ID == "" {
		return beat, errors.New("ring heartbeat message without instance id")
	}
	return beat, nil
}

// instanceBroadcast is one instance's latest entry, or latest heartbeat,
// in the broadcast queue. It is named after the instance (and kind), so
// queueing a newer one replaces an older one still waiting; a heartbeat
// does not replace a whole entry, which members without it need first.
type instanceBroadcast struct {
	name string
	msg  []byte
	done chan struct{} // closed by Finished when not nil
}

func broadcastName(id string, beat bool) string {
	if beat {
		return id + "\x00beat"
	}
	return id
}

// Invalidates is unused: the queue replaces named broadcasts by name.
func (b *instanceBroadcast) Invalidates(memberlist.Broadcast) bool { return false }

func (b *instanceBroadcast) Name() string    { return b.name }
func (b *instanceBroadcast) Message() []byte { return b.msg }

// Finished is called by the queue, under its lock, once the message was sent
// often enough or was replaced.
func (b *instanceBroadcast) Finished() {
	if b.done != nil {
		close(b.done)
	}
}

// broadcastLocked sends inst to the other members: only its heartbeat when
// beat is set (its previous version differs in the heartbeat only), else
// the whole entry; through memberlist's broadcast queue when it fits a
// packet, else over TCP from sendReliableLoop. done, if not nil, is closed
// once the broadcast is over. The caller holds r.descMtx, so broadcasts of
// one instance are queued in the order its versions were merged and an
// older one never replaces a newer one.
func (r *Ring) broadcastLocked(inst InstanceDesc, beat bool, done chan struct{}) {
	if beat {
		r.queue.QueueBroadcast(&instanceBroadcast{name: broadcastName(inst.ID, true), msg: encodeBeat(&inst), done: done})
		return
	}
	msg, err := encodeMessage(msgDelta, []InstanceDesc{inst})
	if err != nil {
		panic("BUG: " + err.Error()) // Only valid descriptors get here.
	}
	if len(msg) <= r.maxPacketMessage {
		r.queue.QueueBroadcast(&instanceBroadcast{name: broadcastName(inst.ID, false), msg: msg, done: done})
		return
	}
	msg[0] = msgReliable
	r.reliableMtx.Lock()
	r.reliablePending[inst.ID] = msg
	r.reliableMtx.Unlock()
	select {
	case r.reliablec <- struct{}{}:
	default:
	}
	if done != nil {
		close(done)
	}
}

// sendReliableLoop sends the pending oversized deltas until stopc closes.
// Only the latest delta per instance is kept, so a slow or dead peer delays
// news but never piles it up.
func (r *Ring) sendReliableLoop(stopc <-chan struct{}) {
	for {
		select {
		case <-stopc:
			return
		case <-r.reliablec:
		}
		r.reliableMtx.Lock()
		pending := r.reliablePending
		r.reliablePending = map[string][]byte{}
		r.reliableMtx.Unlock()

		peers := r.alivePeers()
		for _, msg := range pending {
			rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
			for _, p := range peers[:min(reliableFanout, len(peers))] {
				// A send to a dead peer blocks for memberlist's TCPTimeout;
				// do not hold up a stop for the rest.
				select {
				case <-stopc:
					return
				default:
				}
				if err := r.ml.SendReliable(p, msg); err != nil {
					r.logger.Debug("Failed to send ring update", "peer", p.Name, "err", err)
					continue
				}
				r.metrics.messagesSent.WithLabelValues(kindReliable).Inc()
			}
		}
	}
}

// alivePeers returns the other members memberlist believes alive, as
// copies that are safe to read.
func (r *Ring) alivePeers() []*memberlist.Node {
	r.peersMtx.Lock()
	defer r.peersMtx.Unlock()
	peers := make([]*memberlist.Node, 0, len(r.peers))
	for _, n := range r.peers {
		peers = append(peers, &n)
	}
	return peers
}

// events is the memberlist.EventDelegate of a Ring: it keeps r.peers, the
// other alive members. memberlist.Members hands out its own nodes, which
// its goroutines keep updating without a lock the caller could take, so
// the ring copies them here instead, where memberlist calls with its node
// lock held.
type events struct{ r *Ring }

var _ memberlist.EventDelegate = events{}

func (e events) NotifyJoin(n *memberlist.Node)   { e.set(n, true) }
func (e events) NotifyUpdate(n *memberlist.Node) { e.set(n, true) }
func (e events) NotifyLeave(n *memberlist.Node)  { e.set(n, false) }

func (e events) set(n *memberlist.Node, alive bool) {
	if n.Name == e.r.nodeName {
		return
	}
	e.r.peersMtx.Lock()
	defer e.r.peersMtx.Unlock()
	if !alive {
		delete(e.r.peers, n.Name)
		return
	}
	e.r.peers[n.Name] = memberlist.Node{Name: n.Name, Addr: slices.Clone(n.Addr), Port: n.Port, Meta: slices.Clone(n.Meta), State: memberlist.StateAlive}
}

// mergeRemote merges a descriptor received from a peer and, when pass is
// set (a delta), passes on whatever was news here and records how old the
// news was. Passing on only news is what ends the epidemic: a member that
// already knew a version stays quiet.
func (r *Ring) mergeRemote(d desc, pass bool) {
	// A member that has not dropped an expired tombstone or a forgotten
	// instance yet (its tick comes later, or it was cut off) must not give
	// it back to one that has, or it bounces between them for good.
	now := r.now()
	if r.cfg.TombstoneTimeout > 0 {
		d.removeTombstones(now, r.cfg.TombstoneTimeout)
	}
	if r.cfg.AutoForgetAfter > 0 {
		limit := now.Add(-r.cfg.AutoForgetAfter).UnixMilli()
		maps.DeleteFunc(d, func(id string, inst InstanceDesc) bool {
			return inst.State != LEFT && inst.Heartbeat < limit && id != r.id
		})
	}
	r.descMtx.Lock()
	defer r.descMtx.Unlock()
	changed := r.desc.mergeFrom(d)
	if len(changed) == 0 {
		return
	}
	r.rebuildLocked()
	if pass {
		for _, inst := range changed {
			r.broadcastLocked(inst, false, nil)
			r.metrics.propagationDelay.Observe(float64(max(0, now.UnixMilli()-inst.Heartbeat)) / 1000)
		}
	}
}

// mergeBeat applies a heartbeat when this member holds the version of the
// entry it belongs to, and passes it on when it was news. A newer heartbeat
// of a version this member does not hold means it missed a change (a lost
// packet, or it was cut off): it asks for a push/pull (see syncLoop) rather
// than wait for the periodic one, during which the instance would look
// unhealthy here.
func (r *Ring) mergeBeat(beat wireBeat) {
	r.descMtx.Lock()
	defer r.descMtx.Unlock()
	cur, ok := r.desc[beat.ID]
	if ok && beat.Heartbeat <= cur.Heartbeat {
		return
	}
	if !ok || version(&cur) != beat.Version {
		select {
		case r.syncc <- struct{}{}:
		default:
		}
		return
	}
	cur.Heartbeat = beat.Heartbeat
	r.desc[beat.ID] = cur
	r.rebuildLocked()
	r.broadcastLocked(cur, true, nil)
	r.metrics.propagationDelay.Observe(float64(max(0, r.now().UnixMilli()-cur.Heartbeat)) / 1000)
}

// syncLoop push/pulls the full state with a random peer when mergeBeat asks
// for it, at most once per spreadTime, until stopc closes.
func (r *Ring) syncLoop(stopc <-chan struct{}) {
	for {
		select {
		case <-stopc:
			return
		case <-r.syncc:
		}
		if peers := r.alivePeers(); len(peers) > 0 {
			p := peers[rand.IntN(len(peers))]
			// Join with a member push/pulls the full state with it.
			if _, err := r.ml.Join([]string{p.Address()}); err != nil {
				r.logger.Debug("Failed to sync the ring with a peer", "peer", p.Name, "err", err)
			} else {
				r.metrics.syncs.Inc()
			}
		}
		select {
		case <-stopc:
			return
		case <-time.After(r.spreadTime):
		}
	}
}

// delegate is the memberlist.Delegate of a Ring. memberlist calls it from
// its network goroutines, concurrently, and none of its methods may block.
type delegate struct{ r *Ring }

var _ memberlist.Delegate = delegate{}

// NodeMeta announces, for an ingester, its instance ID and zone (see
// memberMeta); watchers announce nothing. The ring itself travels in user
// messages.
func (d delegate) NodeMeta(limit int) []byte {
	if !d.r.isIngester() {
		return nil
	}
	b, err := json.Marshal(memberMeta{ID: d.r.id, Zone: d.r.cfg.Zone})
	if err != nil || len(b) > limit {
		// Peers then do not wait for this instance's entry before they
		// go ACTIVE (see settleJoin), which costs balance, not data.
		d.r.logger.Warn("Ring instance ID and zone do not fit memberlist's node metadata", "id", d.r.id, "limit", limit)
		return nil
	}
	return b
}

// memberMeta is the memberlist node metadata of an ingester. memberlist
// gossips who is a member in small messages of its own, far faster than
// the ring's entries spread, so a JOINING ingester learns from it of every ingester
// that has joined the cluster, and waits for their entries (settleJoin).
type memberMeta struct {
	ID   string `json:"id"`
	Zone string `json:"zone,omitempty"`
}

// decodeMemberMeta returns the ingester a member's metadata announces, or
// false for a watcher (or metadata it cannot read).
func decodeMemberMeta(b []byte) (memberMeta, bool) {
	if len(b) == 0 {
		return memberMeta{}, false
	}
	var m memberMeta
	if err := json.Unmarshal(b, &m); err != nil || m.ID == "" {
		return memberMeta{}, false
	}
	return m, true
}

// NotifyMsg merges a delta; b is not retained, as memberlist reuses it.
func (d delegate) NotifyMsg(b []byte) {
	if len(b) > 0 && b[0] == msgBeat {
		beat, err := decodeBeat(b)
		if err != nil {
			d.r.metrics.invalidMessages.Inc()
			d.r.logger.Warn("Dropping invalid ring gossip message", "err", err)
			return
		}
		d.r.metrics.messagesReceived.WithLabelValues(kindBeat).Inc()
		d.r.mergeBeat(beat)
		return
	}
	kind, in, ok := d.decode(b)
	if !ok {
		return
	}
	if kind == msgState {
		d.r.metrics.invalidMessages.Inc()
		return
	}
	d.r.mergeRemote(in, true)
}

// GetBroadcasts hands memberlist the queued deltas that fit in limit.
func (d delegate) GetBroadcasts(overhead, limit int) [][]byte {
	msgs := d.r.queue.GetBroadcasts(overhead, limit)
	if len(msgs) > 0 {
		d.r.metrics.messagesSent.WithLabelValues(kindBroadcast).Add(float64(len(msgs)))
	}
	return msgs
}

// LocalState returns the full descriptor for a push/pull.
func (d delegate) LocalState(bool) []byte {
	r := d.r
	msg, err := encodeMessage(msgState, r.snap.Load().instances)
	if err != nil {
		panic("BUG: " + err.Error()) // Only valid descriptors get into the snapshot.
	}
	r.metrics.messagesSent.WithLabelValues(kindPushPull).Inc()
	return msg
}

// MergeRemoteState merges a peer's full descriptor from a push/pull. It does
// not pass the news on: the periodic push/pulls spread the full state
// anyway, and re-broadcasting a whole ring on every join would flood the
// queue with entries most members already have.
func (d delegate) MergeRemoteState(buf []byte, _ bool) {
	kind, in, ok := d.decode(buf)
	if !ok {
		return
	}
	if kind != msgState {
		d.r.metrics.invalidMessages.Inc()
		return
	}
	d.r.mergeRemote(in, false)
}

func (d delegate) decode(b []byte) (byte, desc, bool) {
	kind, in, invalid, err := decodeMessage(b)
	if err != nil {
		d.r.metrics.invalidMessages.Inc()
		d.r.logger.Warn("Dropping invalid ring gossip message", "err", err)
		return 0, nil, false
	}
	switch kind {
	case msgDelta:
		d.r.metrics.messagesReceived.WithLabelValues(kindBroadcast).Inc()
	case msgReliable:
		d.r.metrics.messagesReceived.WithLabelValues(kindReliable).Inc()
	case msgState:
		d.r.metrics.messagesReceived.WithLabelValues(kindPushPull).Inc()
	}
	if invalid > 0 {
		d.r.metrics.invalidMessages.Add(float64(invalid))
		d.r.logger.Warn("Dropping invalid ring gossip entries", "entries", invalid)
	}
	return kind, in, true
}

// memberlistLogWriter turns memberlist's "[LEVEL] memberlist: text" lines
// into slog records at the matching level. Memberlist logs an ERROR for
// every packet it cannot read, so garbage sent to the gossip port (a port
// scan, another protocol, a member with another key) would flood the log:
// warnings and errors are counted in census_ring_memberlist_log_lines_total
// and logged at most once per logEvery for each kind of line, with the
// number left out since.
type memberlistLogWriter struct {
	logger *slog.Logger
	// stopped is set once Run shuts memberlist down: memberlist's loops may
	// still be mid-send then and report the closed socket as an error,
	// which is expected and logged at debug level instead.
	stopped *atomic.Bool
	lines   *prometheus.CounterVec
	limit   *logLimiter
}

func (w memberlistLogWriter) Write(p []byte) (int, error) {
	level, text := parseMemberlistLine(string(p))
	if w.stopped.Load() && strings.Contains(text, "use of closed network connection") {
		level = slog.LevelDebug
	}
	if level < slog.LevelWarn {
		w.logger.Log(context.Background(), level, "Memberlist", "text", text)
		return len(p), nil
	}
	w.lines.WithLabelValues(strings.ToLower(level.String())).Inc()
	if suppressed, ok := w.limit.allow(text, time.Now()); ok {
		attrs := []any{"text", text}
		if suppressed > 0 {
			attrs = append(attrs, "similar_lines_not_logged", suppressed)
		}
		w.logger.Log(context.Background(), level, "Memberlist", attrs...)
	}
	return len(p), nil
}

// logLimiter lets one line of each kind through per every.
type logLimiter struct {
	every time.Duration
	mtx   sync.Mutex
	kinds map[string]*logKind
}

type logKind struct {
	last       time.Time
	suppressed int
}

// maxLogKinds bounds the kinds a logLimiter remembers.
const maxLogKinds = 1024

func newLogLimiter(every time.Duration) *logLimiter {
	return &logLimiter{every: every, kinds: map[string]*logKind{}}
}

// allow reports whether a line of text may be logged at now, and how many
// lines of its kind were not since the last one that was. A kind is the
// text without digits: the same failure from other addresses or of other
// sizes is one kind.
func (l *logLimiter) allow(text string, now time.Time) (int, bool) {
	kind := strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return -1
		}
		return r
	}, text)
	l.mtx.Lock()
	defer l.mtx.Unlock()
	k, ok := l.kinds[kind]
	if !ok {
		if len(l.kinds) >= maxLogKinds {
			clear(l.kinds)
		}
		l.kinds[kind] = &logKind{last: now}
		return 0, true
	}
	if now.Sub(k.last) < l.every {
		k.suppressed++
		return 0, false
	}
	suppressed := k.suppressed
	k.last, k.suppressed = now, 0
	return suppressed, true
}

func parseMemberlistLine(line string) (slog.Level, string) {
	line = strings.TrimSpace(line)
	level := slog.LevelDebug
	if rest, ok := strings.CutPrefix(line, "["); ok {
		if name, text, ok := strings.Cut(rest, "]"); ok {
			switch name {
			case "ERR":
				level = slog.LevelError
			case "WARN":
				level = slog.LevelWarn
			case "INFO":
				level = slog.LevelInfo
			}
			line = strings.TrimSpace(text)
		}
	}
	return level, strings.TrimPrefix(line, "memberlist: ")
}
