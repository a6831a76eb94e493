package querier

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Operations, the values of the "operation" label: one per ingester RPC the
// querier makes.
const (
	opQueryStream     = "query_stream"
	opSeries          = "series"
	opLabelNames      = "label_names"
	opLabelValues     = "label_values"
	opQueryExemplars  = "query_exemplars"
	opMetricsMetadata = "metrics_metadata"
	opTSDBStats       = "tsdb_stats"
)

type metrics struct {
	requestDuration *prometheus.HistogramVec
	requestErrors   *prometheus.CounterVec
	seriesFetched   prometheus.Counter
	chunksFetched   prometheus.Counter
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
		chunksFetched: f.NewCounter(prometheus.CounterOpts{
			Name: "census_querier_chunks_fetched_total",
			Help: "Chunks received from ingesters, counting every replica, before they are merged.",
		}),
	}
	// Pre-create the series of every operation so rates start at zero.
	for _, op := range []string{opQueryStream, opSeries, opLabelNames, opLabelValues, opQueryExemplars, opMetricsMetadata, opTSDBStats} {
		m.requestDuration.WithLabelValues(op)
		m.requestErrors.WithLabelValues(op)
	}
	return m
}

// apiMetrics are those of the HTTP API: one set per NewAPI.
type apiMetrics struct {
	requestDuration *prometheus.HistogramVec
	querySeries     prometheus.Histogram
	queryChunks     prometheus.Histogram
}

func newAPIMetrics(reg prometheus.Registerer) *apiMetrics {
	f := promauto.With(reg)
	return &apiMetrics{
		requestDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:                           "census_querier_request_duration_seconds",
			Help:                           "Time to answer one HTTP API request, by endpoint (the route, e.g. /api/v1/query_range) and status code.",
			Buckets:                        []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
			NativeHistogramBucketFactor:    1.1,
			NativeHistogramMaxBucketNumber: 100,
		}, []string{"endpoint", "code", "method"}),
		querySeries: f.NewHistogram(prometheus.HistogramOpts{
			Name:                           "census_querier_query_series_fetched",
			Help:                           "Series one request fetched from the ingesters, each once however many replicas sent it; requests that selected series only.",
			Buckets:                        prometheus.ExponentialBuckets(1, 4, 12),
			NativeHistogramBucketFactor:    1.1,
			NativeHistogramMaxBucketNumber: 100,
		}),
		queryChunks: f.NewHistogram(prometheus.HistogramOpts{
			Name:                           "census_querier_query_chunks_fetched",
			Help:                           "Chunks one request fetched from the ingesters, every replica's copy; requests that selected series only.",
			Buckets:                        prometheus.ExponentialBuckets(1, 4, 14),
			NativeHistogramBucketFactor:    1.1,
			NativeHistogramMaxBucketNumber: 100,
		}),
	}
}
