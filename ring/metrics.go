package ring

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Values of the kind label on the gossip message counters.
const (
	kindBroadcast = "broadcast" // deltas piggybacked on memberlist's UDP gossip
	kindBeat      = "heartbeat" // heartbeats of unchanged entries, on the same UDP gossip
	kindReliable  = "reliable"  // deltas too big for a packet, sent over TCP
	kindPushPull  = "push_pull" // full state exchanged on join and periodically
)

// Values of the reason label on the forgotten instances counter.
const (
	forgetAuto   = "auto"   // silent for longer than AutoForgetAfter
	forgetManual = "manual" // Forget, from the /ring page
)

// stateUnhealthy is the members gauge's state for instances that are not
// LEFT but whose heartbeat is too old.
const stateUnhealthy = "UNHEALTHY"

// checksumMask keeps the descriptor checksum within the integers a float64
// gauge represents exactly.
const checksumMask = 1<<53 - 1

type metrics struct {
	members          *prometheus.GaugeVec
	ownership        prometheus.Gauge // nil unless this member is an ingester
	checksum         prometheus.Gauge
	messagesReceived *prometheus.CounterVec
	messagesSent     *prometheus.CounterVec
	invalidMessages  prometheus.Counter
	memberlistLines  *prometheus.CounterVec
	propagationDelay prometheus.Histogram
	forgotten        *prometheus.CounterVec
	syncs            prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, ingester bool) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		members: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "census_ring_members",
			Help: "Instances in this member's view of the ring by state; instances with a stale heartbeat count as UNHEALTHY unless LEFT.",
		}, []string{"state"}),
		checksum: f.NewGauge(prometheus.GaugeOpts{
			Name: "census_ring_descriptor_checksum",
			Help: "Checksum of this member's ring descriptor without heartbeats (every instance's state, tokens, address and zone). Members that agree on the ring show the same value; more than one distinct value for longer than a few gossip rounds means the ring is not converging.",
		}),
		messagesReceived: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_ring_gossip_messages_received_total",
			Help: "Ring gossip messages received, by kind.",
		}, []string{"kind"}),
		messagesSent: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_ring_gossip_messages_sent_total",
			Help: "Ring gossip messages handed to memberlist for sending, by kind.",
		}, []string{"kind"}),
		invalidMessages: f.NewCounter(prometheus.CounterOpts{
			Name: "census_ring_gossip_messages_invalid_total",
			Help: "Ring gossip messages or entries dropped because they could not be decoded or were invalid.",
		}),
		memberlistLines: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_ring_memberlist_log_lines_total",
			Help: "Warnings and errors memberlist reported (a packet it could not read, a peer it could not reach), by level, logged or not: the log shows one line of a kind per 10s.",
		}, []string{"level"}),
		propagationDelay: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "census_ring_gossip_propagation_delay_seconds",
			Help:    "Time from an instance writing its ring entry (a heartbeat or a state change) to this member learning it from a gossiped delta; includes the clock skew between the two.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14), // 10ms to 82s
		}),
		syncs: f.NewCounter(prometheus.CounterOpts{
			Name: "census_ring_gossip_syncs_total",
			Help: "Full-state push/pulls this member asked a peer for because it received a heartbeat of a ring entry it does not hold.",
		}),
		forgotten: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_ring_instances_forgotten_total",
			Help: "Instances this member removed from the ring, by reason: auto (silent for longer than --ring.auto-forget-after) or manual (the /ring page's Forget button).",
		}, []string{"reason"}),
	}
	if ingester {
		m.ownership = f.NewGauge(prometheus.GaugeOpts{
			Name: "census_ring_ownership_ratio",
			Help: "Fraction of the token space for which this ingester is the first owner clockwise.",
		})
	}
	// Export every label value from the start so that dashboards see
	// zeros rather than missing series.
	for _, s := range []string{JOINING.String(), ACTIVE.String(), LEAVING.String(), LEFT.String(), stateUnhealthy} {
		m.members.WithLabelValues(s)
	}
	for _, k := range []string{kindBroadcast, kindBeat, kindReliable, kindPushPull} {
		m.messagesReceived.WithLabelValues(k)
		m.messagesSent.WithLabelValues(k)
	}
	for _, r := range []string{forgetAuto, forgetManual} {
		m.forgotten.WithLabelValues(r)
	}
	return m
}

// observe updates the gauges derived from snapshot s, counting instances
// that heartbeated before minHeartbeat (unix milliseconds) as unhealthy.
func (m *metrics) observe(s *snapshot, selfID string, minHeartbeat int64) {
	var counts [LEFT + 1]int
	unhealthy := 0
	for i := range s.instances {
		inst := &s.instances[i]
		if inst.State != LEFT && !inst.healthy(minHeartbeat) {
			unhealthy++
			continue
		}
		counts[inst.State]++
	}
	for _, st := range []State{JOINING, ACTIVE, LEAVING, LEFT} {
		m.members.WithLabelValues(st.String()).Set(float64(counts[st]))
	}
	m.members.WithLabelValues(stateUnhealthy).Set(float64(unhealthy))
	m.checksum.Set(float64(s.checksum & checksumMask))
	if m.ownership != nil {
		own := 0.0
		if i, ok := s.index(selfID); ok {
			own = s.ownership[i]
		}
		m.ownership.Set(own)
	}
}
