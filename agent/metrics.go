package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/prometheus/model/timestamp"
)

// metrics are the agent's own. The distributor it sends through counts
// samples per ingester (census_distributor_ingester_samples_total).
type metrics struct {
	sent             prometheus.Counter
	failed           prometheus.Counter
	retried          prometheus.Counter
	dropped          prometheus.Counter
	droppedExemplars prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		sent: f.NewCounter(prometheus.CounterOpts{
			Name: "census_agent_samples_sent_total",
			Help: "Samples read from the agent's WAL and stored by a quorum of their ingesters.",
		}),
		failed: f.NewCounter(prometheus.CounterOpts{
			Name: "census_agent_samples_failed_total",
			Help: "Samples of sends that failed for want of a quorum; each failed attempt counts them.",
		}),
		retried: f.NewCounter(prometheus.CounterOpts{
			Name: "census_agent_samples_retried_total",
			Help: "Samples sent again after a failed attempt.",
		}),
		dropped: f.NewCounter(prometheus.CounterOpts{
			Name: "census_agent_samples_dropped_total",
			Help: "Samples never to be sent: refused as invalid or over a limit (see census_distributor_discarded_samples_total), or without a series in the WAL.",
		}),
		droppedExemplars: f.NewCounter(prometheus.CounterOpts{
			Name: "census_agent_exemplars_dropped_total",
			Help: "Exemplars read from the WAL whose sample had been sent already.",
		}),
	}
}

// registerSenderGauges registers the gauges read from a running sender.
func registerSenderGauges(reg prometheus.Registerer, s *sender, dataDir string) {
	f := promauto.With(reg)
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "census_agent_queue_samples",
		Help: "Samples read from the WAL and not yet stored: in batches being filled or sent.",
	}, func() float64 { return float64(s.queued()) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "census_agent_wal_bytes",
		Help: "Size of the agent's write-ahead log on disk, checkpoints included.",
	}, func() float64 { return float64(dirSize(dataDir)) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "census_agent_oldest_unsent_sample_age_seconds",
		Help: "Age of the oldest sample read from the WAL and not yet stored; 0 when everything read is stored.",
	}, func() float64 {
		t, ok := s.oldestUnsent()
		if !ok {
			return 0
		}
		return max(time.Since(timestamp.Time(t)).Seconds(), 0)
	})
}
