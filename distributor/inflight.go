package distributor

import (
	"fmt"
	"sync/atomic"

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
// retries. Over a bound a push is refused with 429 before it is read,
// which tells a sender to back off.
type inflight struct {
	maxRequests, maxBytes int64 // 0 means no limit.
	requests, bytes       atomic.Int64
	throttled             *prometheus.CounterVec
}

func newInflight(maxRequests int, maxBytes units.Base2Bytes, reg prometheus.Registerer) *inflight {
	f := promauto.With(reg)
	in := &inflight{
		maxRequests: int64(maxRequests),
		maxBytes:    int64(maxBytes),
		throttled: f.NewCounterVec(prometheus.CounterOpts{
			Name: "census_distributor_throttled_pushes_total",
			Help: "HTTP pushes refused with 429 because the distributor was at a limit of pushes in flight, by limit: requests or bytes.",
		}, []string{"limit"}),
	}
	in.throttled.WithLabelValues("requests")
	in.throttled.WithLabelValues("bytes")
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "census_distributor_inflight_push_requests",
		Help: "HTTP pushes the distributor is working on.",
	}, func() float64 { return float64(in.requests.Load()) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "census_distributor_inflight_push_bytes",
		Help: "Bytes, as sent, of the HTTP pushes the distributor is working on.",
	}, func() float64 { return float64(in.bytes.Load()) })
	return in
}

// acquire reserves room for a push of size bytes. It returns why not if a
// limit is reached; otherwise the caller must call release(size) when done.
// A single push larger than the byte limit is let through when nothing
// else is in flight, so the byte limit never refuses a push forever.
func (in *inflight) acquire(size int64) string {
	if n := in.requests.Add(1); in.maxRequests > 0 && n > in.maxRequests {
		in.requests.Add(-1)
		in.throttled.WithLabelValues("requests").Inc()
		return fmt.Sprintf("too many pushes in flight: the distributor works on at most %d at once (--distributor.max-inflight-push-requests); retry later", in.maxRequests)
	}
	if b := in.bytes.Add(size); in.maxBytes > 0 && b > in.maxBytes && b != size {
		in.bytes.Add(-size)
		in.requests.Add(-1)
		in.throttled.WithLabelValues("bytes").Inc()
		return fmt.Sprintf("too many bytes in flight: the distributor works on at most %s of pushes at once (--distributor.max-inflight-push-bytes); retry later", units.Base2Bytes(in.maxBytes))
	}
	return ""
}

func (in *inflight) release(size int64) {
	in.bytes.Add(-size)
	in.requests.Add(-1)
}
