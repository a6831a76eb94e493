package distributor

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// limitDriver feeds a pushLimit whole windows of pushes on a fake clock.
type limitDriver struct {
	t   testing.TB
	l   *pushLimit
	now time.Time
}

func newLimitDriver(t testing.TB, floor, ceiling int) *limitDriver {
	return &limitDriver{t: t, l: newPushLimit(floor, ceiling, 2, nil), now: time.Unix(1e9, 0)}
}

// window records one window of pushes that each took took, with inflight
// pushes in flight, and returns the limit after it.
func (d *limitDriver) window(took time.Duration, inflight int64, overloaded bool) int64 {
	d.t.Helper()
	for range pushLimitMinSamples - 1 {
		d.l.record(d.now, took, inflight, overloaded)
	}
	d.now = d.now.Add(pushLimitWindow)
	d.l.record(d.now, took, inflight, overloaded)
	d.now = d.now.Add(time.Millisecond)
	require.Zero(d.t, d.l.window.n, "the window ended")
	return d.l.current.Load()
}

// windows records n windows alike and returns the limit after each.
func (d *limitDriver) windows(n int, took time.Duration, inflight int64, overloaded bool) []int64 {
	var out []int64
	for range n {
		out = append(out, d.window(took, inflight, overloaded))
	}
	return out
}

func TestPushLimit(t *testing.T) {
	const floor, ceiling = 8, 256
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, d *limitDriver)
	}{
		{name: "a cluster that keeps up keeps the ceiling", run: func(t *testing.T, d *limitDriver) {
			got := d.windows(10, 20*time.Millisecond, 200, false)
			got = append(got, d.windows(10, 35*time.Millisecond, 256, false)...) // Slower, within the tolerance of 2.
			for _, l := range got {
				require.EqualValues(t, ceiling, l)
			}
		}},
		{name: "pushes ten times slower halve the limit down to the floor", run: func(t *testing.T, d *limitDriver) {
			d.windows(3, 20*time.Millisecond, 100, false)
			require.Equal(t, []int64{128, 64, 32, 16, 8, 8, 8}, d.windows(7, 200*time.Millisecond, 256, false))
		}},
		{name: "a mild slowdown cuts by the ratio to the tolerated latency", run: func(t *testing.T, d *limitDriver) {
			d.windows(3, 20*time.Millisecond, 100, false)
			l := d.window(50*time.Millisecond, 256, false) // 2*20/50: cut by about 20%.
			require.Less(t, l, int64(230), "more than 10%")
			require.Greater(t, l, int64(179), "less than 30%")
		}},
		{name: "a slowdown just past the tolerance still cuts by 10%", run: func(t *testing.T, d *limitDriver) {
			d.windows(3, 20*time.Millisecond, 100, false)
			require.EqualValues(t, 230, d.window(46*time.Millisecond, 256, false))
		}},
		{name: "ingesters refusing pushes for load halve it at any latency", run: func(t *testing.T, d *limitDriver) {
			d.windows(3, 20*time.Millisecond, 100, false)
			require.Equal(t, []int64{128, 64}, d.windows(2, 20*time.Millisecond, 256, true))
		}},
		{name: "the limit grows back by its square root while pushes are fast", run: func(t *testing.T, d *limitDriver) {
			d.windows(3, 20*time.Millisecond, 100, false)
			d.windows(5, 200*time.Millisecond, 256, true)
			require.EqualValues(t, floor, d.l.current.Load())
			got := d.windows(40, 20*time.Millisecond, 256, false)
			require.Equal(t, []int64{10, 14, 17, 22}, got[:4], "8+√8 = 10.8, +√10.8 = 14.1, and so on")
			require.EqualValues(t, ceiling, got[len(got)-1])
			for i := 1; i < len(got); i++ {
				require.GreaterOrEqual(t, got[i], got[i-1])
			}
		}},
		{name: "a limit nobody comes near does not grow", run: func(t *testing.T, d *limitDriver) {
			d.windows(3, 20*time.Millisecond, 100, false)
			require.EqualValues(t, 128, d.window(200*time.Millisecond, 256, false))
			require.Equal(t, []int64{128, 128, 128}, d.windows(3, 20*time.Millisecond, 63, false))
			require.EqualValues(t, 139, d.window(20*time.Millisecond, 64, false))
		}},
		{name: "the baseline does not creep up under a long overload", run: func(t *testing.T, d *limitDriver) {
			d.windows(3, 20*time.Millisecond, 100, false)
			base := d.l.baseline
			for _, l := range d.windows(100, 200*time.Millisecond, 256, false) {
				require.LessOrEqual(t, l, int64(128))
			}
			require.Equal(t, base, d.l.baseline)
			require.EqualValues(t, floor, d.l.current.Load())
		}},
		{name: "windows at the floor teach it pushes that are slower for good", run: func(t *testing.T, d *limitDriver) {
			d.windows(3, 20*time.Millisecond, 100, false)
			d.windows(5, 200*time.Millisecond, 256, false)
			require.EqualValues(t, floor, d.l.current.Load())
			// At the floor nothing queues: these pushes are slow by
			// themselves, bigger ones say, and the limit opens again.
			got := d.windows(20, 200*time.Millisecond, floor, false)
			require.InEpsilon(t, 200*time.Millisecond, d.l.baseline, 0.25)
			require.Greater(t, got[len(got)-1], int64(floor))
		}},
		{name: "a faster window lowers the baseline at once", run: func(t *testing.T, d *limitDriver) {
			d.windows(3, 50*time.Millisecond, 100, false)
			d.window(5*time.Millisecond, 100, false)
			require.Less(t, d.l.baseline, 6*time.Millisecond)
			require.EqualValues(t, 128, d.window(50*time.Millisecond, 256, false))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, newLimitDriver(t, floor, ceiling))
		})
	}
}

// TestPushLimit_Window: a window ends only once it has lasted
// pushLimitWindow and seen pushLimitMinSamples pushes, so a few pushes on
// a quiet distributor move nothing.
func TestPushLimit_Window(t *testing.T) {
	d := newLimitDriver(t, 8, 256)
	d.windows(3, 20*time.Millisecond, 100, false)
	for range pushLimitMinSamples - 1 {
		d.now = d.now.Add(time.Minute)
		d.l.record(d.now, time.Second, 256, false)
		require.EqualValues(t, 256, d.l.current.Load())
	}
	d.l.record(d.now, time.Second, 256, false)
	require.EqualValues(t, 128, d.l.current.Load())

	for range 10 * pushLimitMinSamples {
		d.l.record(d.now, time.Second, 256, false)
	}
	d.now = d.now.Add(pushLimitWindow - time.Millisecond)
	d.l.record(d.now, time.Second, 256, false)
	require.EqualValues(t, 128, d.l.current.Load(), "a window lasts pushLimitWindow however many pushes it sees")
}

// TestPushLimit_FloorAboveCeiling: a floor over the ceiling is the
// ceiling: the configured maximum is never exceeded.
func TestPushLimit_FloorAboveCeiling(t *testing.T) {
	d := newLimitDriver(t, 8, 2)
	d.windows(2, 20*time.Millisecond, 2, false)
	require.Equal(t, []int64{2, 2}, d.windows(2, time.Second, 2, true))
	require.Equal(t, []int64{2, 2}, d.windows(2, 20*time.Millisecond, 2, false))
}

func TestLatencyBucket(t *testing.T) {
	require.Equal(t, 0, latencyBucket(0))
	require.Equal(t, 0, latencyBucket(latencyBase))
	require.Equal(t, 1, latencyBucket(latencyBase+1))
	require.Equal(t, latencyBuckets-1, latencyBucket(time.Hour))
	for _, d := range []time.Duration{time.Millisecond, 20 * time.Millisecond, 3 * time.Second} {
		w := latencyWindow{n: 1}
		w.buckets[latencyBucket(d)]++
		q := w.quantile(pushLimitQuantile)
		require.GreaterOrEqual(t, q, d, "a bucket's bound is at least what it counts")
		require.Less(t, q, time.Duration(float64(d)*latencyGrowth)+1)
	}
}

// TestInflight_AdaptiveLimit: over the adaptive limit, a push is refused
// naming the flag and why, counted as adaptive; the fixed limits keep
// their own refusals, and the current limit is exported.
func TestInflight_AdaptiveLimit(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	in := newInflight(Config{MaxInflightPushRequests: 4, AdaptivePushLimit: true, MinInflightPushRequests: 1, PushLatencyTolerance: 2}, nil, reg)
	in.adaptive.current.Store(2)
	in.adaptive.why = "pushes take 200ms against 20ms before"
	require.Empty(t, in.acquire(1))
	require.Empty(t, in.acquire(1))
	msg := in.acquire(1)
	require.Equal(t, "too many pushes in flight: the distributor works on at most 2 at once while pushes take 200ms against 20ms before (--distributor.adaptive-push-limit, from --distributor.min-inflight-push-requests=1 to --distributor.max-inflight-push-requests=4); retry later", msg)
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP census_distributor_inflight_push_requests HTTP pushes the distributor is working on.
# TYPE census_distributor_inflight_push_requests gauge
census_distributor_inflight_push_requests 2
# HELP census_distributor_inflight_push_requests_limit Most HTTP pushes the distributor works on at once now: --distributor.max-inflight-push-requests, or less while pushes are slow (--distributor.adaptive-push-limit).
# TYPE census_distributor_inflight_push_requests_limit gauge
census_distributor_inflight_push_requests_limit 2
# HELP census_distributor_throttled_pushes_total HTTP pushes refused with 429 because the distributor was at a limit of pushes in flight, by limit: requests (--distributor.max-inflight-push-requests), adaptive (lowered while pushes are slow, --distributor.adaptive-push-limit) or bytes.
# TYPE census_distributor_throttled_pushes_total counter
census_distributor_throttled_pushes_total{limit="adaptive"} 1
census_distributor_throttled_pushes_total{limit="bytes"} 0
census_distributor_throttled_pushes_total{limit="requests"} 0
`), "census_distributor_inflight_push_requests", "census_distributor_inflight_push_requests_limit", "census_distributor_throttled_pushes_total"))

	in.release(1, 0, false)
	require.Empty(t, in.acquire(1), "a push that ended makes room")
	require.Zero(t, in.adaptive.window.n, "a push that never reached its commit says nothing of latency")
	in.release(1, 30*time.Millisecond, false)
	require.Equal(t, 1, in.adaptive.window.n)
}
