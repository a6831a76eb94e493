package ingester

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/prometheus/tsdb"
)

// metrics are the ingester's own; the TSDB registers its prometheus_tsdb_*
// metrics on the same registerer.
type metrics struct {
	samplesAppended  prometheus.Counter
	pushRequests     *prometheus.CounterVec
	streamSeriesSent prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, head *tsdb.Head) *metrics {
	f := promauto.With(reg)
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "census_ingester_head_series",
		Help: "Series in the TSDB head, the in-memory part of the store.",
	}, func() float64 { return float64(head.NumSeries()) })
	return &metrics{
		samplesAppended: f.NewCounter(prometheus.CounterOpts{
			Name: "census_ingester_samples_appended_total",
			Help: "Samples committed to the TSDB by pushes.",
		}),
		pushRequests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_ingester_push_requests_total",
			Help: "Push requests by the gRPC status code they returned.",
		}, []string{"code"}),
		streamSeriesSent: f.NewCounter(prometheus.CounterOpts{
			Name: "census_ingester_query_stream_series_sent_total",
			Help: "Series sent by QueryStream.",
		}),
	}
}
