package distributor

import (
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/alecthomas/units"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// inflight bounds the HTTP pushes a distributor works on at once, by
// count and by bytes, decompressed where the protocol tells the size before
// the body is read (remote write): decoding, validating and sharding a push
// takes about 13 times its decompressed size in memory
// (BenchmarkReceiver_ConcurrentLargePushes), so without a bound a
// flood of large pushes takes the process down, and every sender then
// retries. With --distributor.adaptive-push-limit the count limit also
// follows how long pushes take (see pushLimit), which bounds the CPU they
// take from queries. Over a bound a push is refused with 429 before it is
// read, which tells a sender to back off.
type inflight struct {
	maxRequests, maxBytes int64      // 0 means no limit.
	adaptive              *pushLimit // nil when the count limit is fixed.
	requests, bytes       atomic.Int64
	throttled             *prometheus.CounterVec
}

func newInflight(cfg Config, logger *slog.Logger, reg prometheus.Registerer) *inflight {
	f := promauto.With(reg)
	in := &inflight{
		maxRequests: int64(cfg.MaxInflightPushRequests),
		maxBytes:    int64(cfg.MaxInflightPushBytes),
		throttled: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_distributor_throttled_pushes_total",
			Help: "HTTP pushes refused with 429 because the distributor was at a limit of pushes in flight, by limit: requests (--distributor.max-inflight-push-requests), adaptive (lowered while pushes are slow, --distributor.adaptive-push-limit) or bytes.",
		}, []string{"limit"}),
	}
	for _, limit := range []string{"requests", "adaptive", "bytes"} {
		in.throttled.WithLabelValues(limit)
	}
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "census_distributor_inflight_push_requests",
		Help: "HTTP pushes the distributor is working on.",
	}, func() float64 { return float64(in.requests.Load()) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "census_distributor_inflight_push_bytes",
		Help: "Bytes, as sent, of the HTTP pushes the distributor is working on.",
	}, func() float64 { return float64(in.bytes.Load()) })
	if cfg.AdaptivePushLimit && cfg.MaxInflightPushRequests > 0 {
		in.adaptive = newPushLimit(cfg.MinInflightPushRequests, cfg.MaxInflightPushRequests, cfg.PushLatencyTolerance, logger)
		f.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "census_distributor_inflight_push_requests_limit",
			Help: "Most HTTP pushes the distributor works on at once now: --distributor.max-inflight-push-requests, or less while pushes are slow (--distributor.adaptive-push-limit).",
		}, func() float64 { return float64(in.adaptive.current.Load()) })
		f.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "census_distributor_push_latency_baseline_seconds",
			Help: "How long the slowest tenth of HTTP pushes takes when the cluster keeps up, from the body read to the answer; the adaptive limit of pushes in flight comes down while they take more than --distributor.push-latency-tolerance times this.",
		}, in.adaptive.baselineSeconds)
	}
	return in
}

// acquire reserves room for a push of size bytes. It returns why not if a
// limit is reached; otherwise the caller must call release(size, ...) when
// done. A single push larger than the byte limit is let through when nothing
// else is in flight, so the byte limit never refuses a push forever.
func (in *inflight) acquire(size int64) string {
	n := in.requests.Add(1)
	if in.maxRequests > 0 && n > in.maxRequests {
		in.requests.Add(-1)
		in.throttled.WithLabelValues("requests").Inc()
		return fmt.Sprintf("too many pushes in flight: the distributor works on at most %d at once (--distributor.max-inflight-push-requests); retry later", in.maxRequests)
	}
	if in.adaptive != nil {
		if limit := in.adaptive.current.Load(); n > limit {
			in.requests.Add(-1)
			in.throttled.WithLabelValues("adaptive").Inc()
			return in.adaptive.refusal(limit)
		}
	}
	if b := in.bytes.Add(size); in.maxBytes > 0 && b > in.maxBytes && b != size {
		in.bytes.Add(-size)
		in.requests.Add(-1)
		in.throttled.WithLabelValues("bytes").Inc()
		return fmt.Sprintf("too many bytes in flight: the distributor works on at most %s of pushes at once (--distributor.max-inflight-push-bytes); retry later", units.Base2Bytes(in.maxBytes))
	}
	return ""
}

// release ends a push of size bytes that acquire let through. A push that
// reached its commit tells the adaptive limit how long it took (from its
// body read to its answer, so a slow sender's upload does not count) and
// whether an ingester refused it for load; took is 0 for one that did
// not, refused before it reached the ingesters.
func (in *inflight) release(size int64, took time.Duration, overloaded bool) {
	if in.adaptive != nil && took > 0 {
		in.adaptive.record(time.Now(), took, in.requests.Load(), overloaded)
	}
	in.bytes.Add(-size)
	in.requests.Add(-1)
}
