package distributor

import (
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// The adaptive limit looks at pushes window by window: a window ends at the
// first push that ends pushLimitWindow after it began, once it has seen
// pushLimitMinSamples pushes, so that a quiet distributor does not judge
// the cluster by a push or two.
const (
	pushLimitWindow     = time.Second
	pushLimitMinSamples = 20
	// pushLimitQuantile of a window's push latencies is what is compared
	// with the baseline: queueing shows in the slow pushes first.
	pushLimitQuantile = 0.9
	// A congested window cuts the limit by at least pushLimitMinCut and at
	// most pushLimitMaxCut (multiplicative decrease); a window where the
	// ingesters refused pushes for load cuts it by pushLimitMaxCut.
	pushLimitMinCut = 0.1
	pushLimitMaxCut = 0.5
	// pushLimitLearn is how far a window at no more than the floor of
	// pushes in flight moves the baseline towards its latency.
	pushLimitLearn = 0.25
)

// Push latencies are counted in buckets growing by latencyGrowth from
// latencyBase: about 20% resolution, well under any useful tolerance, from
// 100µs to about 30s, past the longest push timeout anyone sets.
const (
	latencyBase    = 100 * time.Microsecond
	latencyGrowth  = 1.2
	latencyBuckets = 70
)

// pushLimit is the adaptive part of the limit of HTTP pushes in flight
// (--distributor.adaptive-push-limit). The count limit alone bounds memory
// but not CPU: 256 senders never exceed 256 pushes in flight, yet on a
// saturated cluster each of them waits seconds in the ingesters' queues
// while queries starve. pushLimit follows how long pushes take instead, as
// TCP's congestion control follows round trips: while a window's slow
// pushes take at most tolerance times the baseline, the limit grows by
// about its square root (additive increase), if the pushes in flight came
// near it; when they take longer, or an ingester refused pushes for load,
// it shrinks by the ratio of the two, by 10% to 50% (multiplicative
// decrease), never below the floor. Pushes over it are refused with 429 at
// once, so their senders back off instead of queueing.
//
// The baseline is the latency of an uncongested cluster: the least a
// window saw, learnt towards each window that had no more pushes in flight
// than the floor, since those cannot have queued behind each other. So it
// does not creep up under a long overload (the limit would give up), and
// it still follows pushes that take longer for good, bigger ones say: the
// limit falls to the floor, and the windows there teach it the new
// latency.
//
// It starts at the ceiling, --distributor.max-inflight-push-requests, so a
// cluster that keeps up never refuses more than before.
type pushLimit struct {
	floor, ceiling float64
	tolerance      float64
	logger         *slog.Logger

	// current is the limit in force, read by every push.
	current atomic.Int64

	mtx      sync.Mutex // Guards the fields below.
	limit    float64
	baseline time.Duration // 0 until the first window ends.
	recent   time.Duration // The last window's pushLimitQuantile.
	why      string        // Why the limit last came down, for refusals.
	window   latencyWindow
}

// latencyWindow is what one window saw.
type latencyWindow struct {
	start      time.Time
	n          int
	buckets    [latencyBuckets]int
	peak       int64 // Most pushes in flight as one ended.
	overloaded bool  // An ingester refused a push for load.
}

func newPushLimit(floor, ceiling int, tolerance float64, logger *slog.Logger) *pushLimit {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	l := &pushLimit{
		floor:     float64(min(floor, ceiling)),
		ceiling:   float64(ceiling),
		tolerance: tolerance,
		logger:    logger,
		limit:     float64(ceiling),
	}
	l.current.Store(int64(ceiling))
	return l
}

// record counts a push that ended at now after took, with inflight pushes
// in flight (itself included), overloaded if an ingester refused it for
// load, and adapts the limit when that ends a window.
func (l *pushLimit) record(now time.Time, took time.Duration, inflight int64, overloaded bool) {
	l.mtx.Lock()
	defer l.mtx.Unlock()
	w := &l.window
	if w.n == 0 {
		w.start = now
	}
	w.n++
	w.buckets[latencyBucket(took)]++
	w.peak = max(w.peak, inflight)
	w.overloaded = w.overloaded || overloaded
	if w.n < pushLimitMinSamples || now.Sub(w.start) < pushLimitWindow {
		return
	}
	l.adapt()
	*w = latencyWindow{}
}

// adapt moves the baseline and the limit by the window that just ended.
func (l *pushLimit) adapt() {
	w := &l.window
	l.recent = w.quantile(pushLimitQuantile)
	switch {
	case l.baseline == 0:
		l.baseline = l.recent
	case float64(w.peak) <= l.floor:
		l.baseline += time.Duration(pushLimitLearn * float64(l.recent-l.baseline))
	case l.recent < l.baseline:
		l.baseline = l.recent
	}
	was := l.limit
	slow := float64(l.recent) > l.tolerance*float64(l.baseline)
	switch {
	case w.overloaded:
		l.limit *= 1 - pushLimitMaxCut
		l.why = "ingesters refuse pushes over their limits"
	case slow:
		ratio := l.tolerance * float64(l.baseline) / float64(l.recent)
		l.limit *= min(1-pushLimitMinCut, max(1-pushLimitMaxCut, ratio))
		l.why = fmt.Sprintf("pushes take %s against %s before", l.recent.Round(time.Millisecond), l.baseline.Round(time.Millisecond))
	case float64(w.peak) >= l.limit/2:
		// Grow only a limit in use: one that nobody came near says
		// nothing about the pushes it would let through.
		l.limit += max(1, math.Sqrt(l.limit))
	}
	l.limit = min(l.ceiling, max(l.floor, l.limit))
	l.current.Store(int64(l.limit))
	switch {
	case was == l.ceiling && l.limit < l.ceiling:
		l.logger.Warn("Limiting HTTP pushes in flight: the cluster is slow to store them; pushes over the limit answer 429", "limit", int64(l.limit), "reason", l.why)
	case was < l.ceiling && l.limit == l.ceiling:
		l.logger.Info("HTTP pushes in flight back at their configured limit", "limit", int64(l.limit), "latency", l.recent, "baseline", l.baseline)
	case int64(was) != int64(l.limit):
		l.logger.Debug("Limit of HTTP pushes in flight changed", "from", int64(was), "to", int64(l.limit), "latency", l.recent, "baseline", l.baseline)
	}
}

// refusal says why a push over the limit in force is refused.
func (l *pushLimit) refusal(limit int64) string {
	l.mtx.Lock()
	why := l.why
	l.mtx.Unlock()
	return fmt.Sprintf("too many pushes in flight: the distributor works on at most %d at once while %s (--distributor.adaptive-push-limit, from --distributor.min-inflight-push-requests=%d to --distributor.max-inflight-push-requests=%d); retry later",
		limit, why, int64(l.floor), int64(l.ceiling))
}

// baselineSeconds returns the baseline latency, for its gauge.
func (l *pushLimit) baselineSeconds() float64 {
	l.mtx.Lock()
	defer l.mtx.Unlock()
	return l.baseline.Seconds()
}

// latencyBucket returns the bucket counting d: the first whose upper bound,
// latencyBase*latencyGrowth^i, is at least d.
func latencyBucket(d time.Duration) int {
	if d <= latencyBase {
		return 0
	}
	i := int(math.Ceil(math.Log(float64(d)/float64(latencyBase)) / math.Log(latencyGrowth)))
	return min(i, latencyBuckets-1)
}

// quantile returns the upper bound of the bucket that holds the q-quantile
// of the window's latencies.
func (w *latencyWindow) quantile(q float64) time.Duration {
	rank := int(math.Ceil(q * float64(w.n)))
	seen := 0
	for i, c := range w.buckets {
		if seen += c; seen >= rank {
			return time.Duration(float64(latencyBase) * math.Pow(latencyGrowth, float64(i)))
		}
	}
	return time.Duration(float64(latencyBase) * math.Pow(latencyGrowth, latencyBuckets-1))
}
