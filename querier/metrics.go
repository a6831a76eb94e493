package querier

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Operations, the values of the "operation" label: one per ingester RPC the
// querier makes.
const (
	opQueryStream = "query_stream"
	opSeries      = "series"
	opLabelNames  = "label_names"
	opLabelValues = "label_values"
)

type metrics struct {
	requestDuration *prometheus.HistogramVec
	requestErrors   *prometheus.CounterVec
	seriesFetched   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		requestDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name: "census_querier_ingester_request_duration_seconds",
			Help: "Time of one request to one ingester, by operation; for query_stream from the call until the stream ended.",
			// Native buckets where scraped that way, classic ones otherwise.
			Buckets:                        prometheus.DefBuckets,
			NativeHistogramBucketFactor:    1.1,
			NativeHistogramMaxBucketNumber: 100,
		}, []string{"operation"}),
		requestErrors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_querier_ingester_errors_total",
			Help: "Requests to an ingester that failed (connection or stream error), by operation.",
		}, []string{"operation"}),
		seriesFetched: f.NewCounter(prometheus.CounterOpts{
			Name: "census_querier_series_fetched_total",
			Help: "Series received from ingesters, counting every replica, before they are merged.",
		}),
	}
	// Pre-create the series of every operation so rates start at zero.
	for _, op := range []string{opQueryStream, opSeries, opLabelNames, opLabelValues} {
		m.requestDuration.WithLabelValues(op)
		m.requestErrors.WithLabelValues(op)
	}
	return m
}
