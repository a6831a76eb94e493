package ring

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Values of the kind label on the gossip message counters.
const (
	kindBroadcast = "broadcast" // deltas piggybacked on memberlist's UDP gossip
	kindReliable  = "reliable"  // deltas too big for a packet, sent over TCP
	kindPushPull  = "push_pull" // full state exchanged on join and periodically
)

// stateUnhealthy is the members gauge's state for instances that are not
// LEFT but whose heartbeat is too old.
const stateUnhealthy = "UNHEALTHY"

type metrics struct {
	members          *prometheus.GaugeVec
	ownership        prometheus.Gauge // nil unless this member is an ingester
	messagesReceived *prometheus.CounterVec
	messagesSent     *prometheus.CounterVec
	invalidMessages  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, ingester bool) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		members: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "census_ring_members",
			Help: "Instances in this member's view of the ring by state; instances with a stale heartbeat count as UNHEALTHY unless LEFT.",
		}, []string{"state"}),
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
	}
	if ingester {
		m.ownership = f.NewGauge(prometheus.GaugeOpts{
			Name: "census_ring_ownership_ratio",
			Help: "Fraction of the token space for which this ingester is the first owner clockwise.",
		})
	}
	// Export every state from the start so that dashboards see zeros
	// rather than missing series.
	for _, s := range []string{ACTIVE.String(), LEAVING.String(), LEFT.String(), stateUnhealthy} {
		m.members.WithLabelValues(s)
	}
	for _, k := range []string{kindBroadcast, kindReliable, kindPushPull} {
		m.messagesReceived.WithLabelValues(k)
		m.messagesSent.WithLabelValues(k)
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
	for _, st := range []State{ACTIVE, LEAVING, LEFT} {
		m.members.WithLabelValues(st.String()).Set(float64(counts[st]))
	}
	m.members.WithLabelValues(stateUnhealthy).Set(float64(unhealthy))
	if m.ownership != nil {
		own := 0.0
		if i, ok := s.index(selfID); ok {
			own = s.ownership[i]
		}
		m.ownership.Set(own)
	}
}
