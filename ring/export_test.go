package ring

import (
	"math/rand/v2"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// PauseHeartbeats makes r stop heartbeating while it keeps gossiping, the
// way a hung ingester looks to the others.
func PauseHeartbeats(r *Ring) { r.hooks.heartbeatsPaused.Store(true) }

// Kill makes r's Run return the way a crashed process disappears: no LEFT
// tombstone, no memberlist leave, just silence.
func Kill(r *Ring) { r.hooks.killOnce.Do(func() { close(r.hooks.killc) }) }

// NewWithMemberlistConfig is New with configure applied to memberlist's
// configuration before memberlist starts: shorter failure detection, or a
// transport that drops packets.
func NewWithMemberlistConfig(cfg Config, instanceAddr string, reg prometheus.Registerer, configure func(*memberlist.Config) error) (*Ring, error) {
	return newMember(cfg, instanceAddr, nil, reg, configure)
}

// Checksum returns the checksum of r's descriptor without heartbeats:
// members that agree on the ring have the same.
func Checksum(r *Ring) uint64 { return r.snap.Load().checksum }

// Heartbeat makes the ingester r heartbeat now, and returns the heartbeat it
// wrote.
func Heartbeat(r *Ring) int64 {
	r.descMtx.Lock()
	defer r.descMtx.Unlock()
	r.writeSelfLocked(nil)
	return r.self.Heartbeat
}

// HeartbeatOf returns the heartbeat r knows of the instance id, or 0.
func HeartbeatOf(r *Ring, id string) int64 {
	s := r.snap.Load()
	i, ok := s.index(id)
	if !ok {
		return 0
	}
	return s.instances[i].Heartbeat
}

// ChooseTokens is chooseTokens with a seeded random source, to prepare the
// tokens files of a cluster.
func ChooseTokens(seed uint64, n, rf int, insts []InstanceDesc) []uint32 {
	return chooseTokens(rand.New(rand.NewPCG(seed, seed)), n, rf, "", insts)
}
