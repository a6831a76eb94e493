package ingester

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/prometheus/tsdb"

	censuspb "github.com/census-metrics/census/proto"
)

// metrics are the ingester's own; the TSDB registers its prometheus_tsdb_*
// metrics on the same registerer.
type metrics struct {
	samplesAppended    prometheus.Counter
	samplesResent      prometheus.Counter
	discardedSamples   *prometheus.CounterVec
	discardedExemplars *prometheus.CounterVec
	pushRequests       *prometheus.CounterVec
	throttledPushes    prometheus.Counter
	streamSeriesSent   prometheus.Counter
	walFsyncDuration   prometheus.Histogram
	seriesLimit        prometheus.Gauge
	seriesPerMetric    prometheus.Gauge
	storageFree        prometheus.Gauge
	storageReserve     prometheus.Gauge
	diskFull           prometheus.Gauge

	// The hand-off: sent by a decommissioning ingester, per target, and
	// taken by its targets.
	handOffSentBytes    *prometheus.CounterVec
	handOffAckedBytes   *prometheus.CounterVec
	handOffSentSeries   *prometheus.CounterVec
	handOffAckedSeries  *prometheus.CounterVec
	handOffFailures     *prometheus.CounterVec
	handOffReceived     *prometheus.CounterVec
	decommissionState   prometheus.Gauge
	decommissionSeconds prometheus.Gauge
}

// newMetrics registers the ingester's metrics on reg. db returns the open
// TSDB, or nil before it opens and after it closes; queries counts the
// reads in flight.
func newMetrics(reg prometheus.Registerer, db func() *tsdb.DB, queries *atomic.Int64) *metrics {
	f := promauto.With(reg)
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "census_ingester_queries_in_flight",
		Help: "Reads of the TSDB in flight (query streams, label and series requests); while any is, pushes append on at most --ingester.max-concurrent-appends-during-queries.",
	}, func() float64 { return float64(queries.Load()) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "census_ingester_head_series",
		Help: "Series in the TSDB head, the in-memory part of the store.",
	}, func() float64 {
		if d := db(); d != nil {
			return float64(d.Head().NumSeries())
		}
		return 0
	})
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "census_ingester_disk_bytes_per_sample",
		Help: "Bytes on disk per sample in the TSDB's blocks (head and WAL excluded); 0 before the first block.",
	}, func() float64 {
		if d := db(); d != nil {
			return bytesPerSample(d.Blocks())
		}
		return 0
	})
	m := &metrics{
		handOffSentBytes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_ingester_handoff_sent_bytes_total",
			Help: "Block bytes a decommissioning ingester sent, by target instance.",
		}, []string{"target"}),
		handOffAckedBytes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_ingester_handoff_acked_bytes_total",
			Help: "Block bytes a decommissioning ingester sent that their target persisted and acknowledged, by target instance.",
		}, []string{"target"}),
		handOffSentSeries: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_ingester_handoff_sent_series_total",
			Help: "Series (counted once per block) a decommissioning ingester sent, by target instance.",
		}, []string{"target"}),
		handOffAckedSeries: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_ingester_handoff_acked_series_total",
			Help: "Series (counted once per block) a decommissioning ingester sent that their target persisted and acknowledged, by target instance.",
		}, []string{"target"}),
		handOffFailures: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_ingester_handoff_failures_total",
			Help: "Block hand-offs that failed and will be retried, by target instance.",
		}, []string{"target"}),
		handOffReceived: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_ingester_handoff_received_blocks_total",
			Help: "Blocks handed off to this ingester by decommissioning ones, by outcome: stored, duplicate (a resend of a block it holds) or failed.",
		}, []string{"outcome"}),
		decommissionState: f.NewGauge(prometheus.GaugeOpts{
			Name: "census_ingester_decommission_state",
			Help: "0: not decommissioning; 1: handing off its series; 2: handed off, leaving.",
		}),
		decommissionSeconds: f.NewGauge(prometheus.GaugeOpts{
			Name: "census_ingester_decommission_duration_seconds",
			Help: "How long the decommission has run, or took once handed off.",
		}),
		samplesAppended: f.NewCounter(prometheus.CounterOpts{
			Name: "census_ingester_samples_appended_total",
			Help: "Samples (floats and native histograms) committed to the TSDB by pushes.",
		}),
		samplesResent: f.NewCounter(prometheus.CounterOpts{
			Name: "census_ingester_resent_samples_total",
			Help: "Samples of pushes that the time rules refused but this ingester already held with the same value, as a sender's retry repeats them: success, neither stored again nor discarded.",
		}),
		discardedSamples: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_ingester_discarded_samples_total",
			Help: "Samples a push refused, by reason: the rule or limit that refused them.",
		}, []string{"reason"}),
		discardedExemplars: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_ingester_discarded_exemplars_total",
			Help: "Exemplars a push left out while storing their samples, by reason.",
		}, []string{"reason"}),
		pushRequests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_ingester_push_requests_total",
			Help: "Push requests by the gRPC status code they returned.",
		}, []string{"code"}),
		throttledPushes: f.NewCounter(prometheus.CounterOpts{
			Name: "census_ingester_throttled_pushes_total",
			Help: "Pushes refused with Unavailable because the ingester already worked on --ingester.max-inflight-push-requests of them, or --ingester.max-inflight-push-bytes, or found no append slot within 1s (--ingester.max-concurrent-appends, --ingester.max-concurrent-appends-during-queries).",
		}),
		streamSeriesSent: f.NewCounter(prometheus.CounterOpts{
			Name: "census_ingester_query_stream_series_sent_total",
			Help: "Series sent by QueryStream.",
		}),
		walFsyncDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "census_ingester_wal_fsync_duration_seconds",
			Help:    "Duration of the WAL fsyncs pushes wait for (--storage.wal-fsync); each serves every push that waited at once.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 8), // 100µs to 1.6s.
		}),
		seriesLimit: f.NewGauge(prometheus.GaugeOpts{
			Name: "census_ingester_series_limit",
			Help: "Most series this ingester holds (--ingester.max-series, derived from memory when 0).",
		}),
		seriesPerMetric: f.NewGauge(prometheus.GaugeOpts{
			Name: "census_ingester_series_per_metric_limit",
			Help: "Most series of one metric name this ingester holds (--ingester.max-series-per-metric).",
		}),
		storageFree: f.NewGauge(prometheus.GaugeOpts{
			Name: "census_ingester_storage_free_bytes",
			Help: "Free bytes of the --storage.path volume, read every second.",
		}),
		storageReserve: f.NewGauge(prometheus.GaugeOpts{
			Name: "census_ingester_storage_min_free_bytes",
			Help: "Free bytes of the --storage.path volume below which pushes are refused (--storage.min-free-bytes, derived from the volume's size when 0).",
		}),
		diskFull: f.NewGauge(prometheus.GaugeOpts{
			Name: "census_ingester_disk_full",
			Help: "1 while pushes are refused because the --storage.path volume has less free space than census_ingester_storage_min_free_bytes, or the TSDB was opened read-only on a full volume; else 0.",
		}),
	}
	// Every reason exists from the start, so a rate over it never misses
	// the first discard.
	for r := range censuspb.NumReasons {
		m.discardedSamples.WithLabelValues(r.String())
	}
	for _, outcome := range []string{"stored", "duplicate", "failed"} {
		m.handOffReceived.WithLabelValues(outcome)
	}
	return m
}

// bytesPerSample is the bytes on disk per sample over blocks.
func bytesPerSample(blocks []*tsdb.Block) float64 {
	var size, samples int64
	for _, b := range blocks {
		size += b.Size()
		samples += int64(b.Meta().Stats.NumSamples)
	}
	if samples == 0 {
		return 0
	}
	return float64(size) / float64(samples)
}
