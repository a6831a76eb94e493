package ring

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// newTestRing returns a Ring without memberlist whose clock reads *now.
func newTestRing(t testing.TB, id, instanceAddr string, now *time.Time, reg prometheus.Registerer) *Ring {
	t.Helper()
	cfg := Config{
		BindAddress:       "127.0.0.1:0",
		InstanceID:        id,
		ReplicationFactor: 3,
		Tokens:            4,
		Zone:              "z1",
		HeartbeatPeriod:   time.Second,
		HeartbeatTimeout:  10 * time.Second,
	}
	require.NoError(t, cfg.Validate())
	r := newRing(cfg, id, instanceAddr, nil, reg)
	r.now = func() time.Time { return *now }
	return r
}

// setDesc replaces r's descriptor, as gossip would.
func setDesc(r *Ring, d desc) {
	r.descMtx.Lock()
	defer r.descMtx.Unlock()
	r.desc = d
	r.rebuildLocked()
}

func TestRing_Register(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	other := InstanceDesc{ID: "other", Addr: "o:9095", State: ACTIVE, Tokens: []uint32{1, 2, 3}, Heartbeat: 999_000}
	tests := []struct {
		name          string
		previous      *InstanceDesc // this instance's entry already in the ring
		wantTokens    []uint32      // nil: freshly drawn
		wantHeartbeat int64
	}{
		{name: "new instance", wantHeartbeat: 1_000_000},
		{
			name:          "restart reuses the tokens of the previous incarnation",
			previous:      &InstanceDesc{ID: "self", Addr: "old:9095", State: ACTIVE, Tokens: []uint32{10, 20, 30, 40}, Heartbeat: 990_000},
			wantTokens:    []uint32{10, 20, 30, 40},
			wantHeartbeat: 1_000_000,
		},
		{
			name:          "heartbeat beats a previous incarnation with a clock ahead",
			previous:      &InstanceDesc{ID: "self", Addr: "old:9095", State: LEAVING, Tokens: []uint32{10, 20, 30, 40}, Heartbeat: 1_005_000},
			wantTokens:    []uint32{10, 20, 30, 40},
			wantHeartbeat: 1_005_001,
		},
		{
			name:          "after a tombstone new tokens are drawn",
			previous:      &InstanceDesc{ID: "self", Addr: "old:9095", State: LEFT, Heartbeat: 990_000},
			wantHeartbeat: 1_000_000,
		},
		{
			name:          "a different token count draws new tokens",
			previous:      &InstanceDesc{ID: "self", Addr: "old:9095", State: ACTIVE, Tokens: []uint32{10, 20}, Heartbeat: 990_000},
			wantHeartbeat: 1_000_000,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRing(t, "self", "self:9095", &now, nil)
			d := desc{"other": other}
			if tc.previous != nil {
				d["self"] = *tc.previous
			}
			setDesc(r, d)
			require.ErrorContains(t, r.Ready(), "not running yet")
			r.started.Store(true)
			require.ErrorContains(t, r.Ready(), "not joined")
			r.joined.Store(true)

			self := r.register()

			require.NoError(t, r.Ready())
			require.Equal(t, "self:9095", self.Addr)
			require.Equal(t, "z1", self.Zone)
			require.Equal(t, ACTIVE, self.State)
			require.Equal(t, tc.wantHeartbeat, self.Heartbeat)
			require.Equal(t, int64(1_000_000), self.RegisteredAt)
			if tc.wantTokens != nil {
				require.Equal(t, tc.wantTokens, self.Tokens)
			} else {
				require.Len(t, self.Tokens, 4)
				require.True(t, slices.IsSorted(self.Tokens))
				for _, tok := range other.Tokens {
					require.NotContains(t, self.Tokens, tok)
				}
				if tc.previous != nil {
					require.NotEqual(t, tc.previous.Tokens, self.Tokens)
				}
			}
			require.Equal(t, []InstanceDesc{other, self}, r.Instances())
			require.Equal(t, 1, r.queue.NumQueued(), "the registration is broadcast")
		})
	}
}

func TestRing_TickAndLeave(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	reg := prometheus.NewPedanticRegistry()
	r := newTestRing(t, "self", "self:9095", &now, reg)
	setDesc(r, desc{
		"gone":  {ID: "gone", State: LEFT, Heartbeat: 1_000_000 - 100_000 - 1}, // older than 10 heartbeat timeouts
		"quiet": {ID: "quiet", State: ACTIVE, Tokens: []uint32{1}, Heartbeat: 1_000_000 - 10_001},
	})
	r.joined.Store(true)
	self := r.register()

	now = now.Add(time.Second)
	self = r.tick(self)
	require.Equal(t, int64(1_001_000), self.Heartbeat)
	require.Equal(t, []string{"quiet", "self"}, ids(r.Instances()), "old tombstone forgotten")
	require.Equal(t, []string{"self"}, ids(r.ReadInstances()), "quiet is unhealthy")
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP census_ring_members Instances in this member's view of the ring by state; instances with a stale heartbeat count as UNHEALTHY unless LEFT.
# TYPE census_ring_members gauge
census_ring_members{state="ACTIVE"} 1
census_ring_members{state="LEAVING"} 0
census_ring_members{state="LEFT"} 0
census_ring_members{state="UNHEALTHY"} 1
`), "census_ring_members"))
	own := testutil.ToFloat64(r.metrics.ownership)
	// quiet's token 1 owns the wrap-around from self's last token.
	require.InDelta(t, 1-float64(uint64(1<<32)-uint64(self.Tokens[3])+1)/(1<<32), own, 1e-12)

	PauseHeartbeats(r)
	now = now.Add(time.Second)
	self = r.tick(self)
	require.Equal(t, int64(1_001_000), self.Heartbeat, "paused heartbeats")
}

func TestRing_Status(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	r := newTestRing(t, "watcher", "", &now, nil)
	setDesc(r, desc{
		"ing-1": {ID: "ing-1", Addr: "10.0.0.1:9095", Zone: "z1", State: ACTIVE, Tokens: []uint32{0, 1 << 31}, Heartbeat: 999_500, RegisteredAt: 900_000},
		"ing-2": {ID: "ing-2", Addr: "10.0.0.2:9095", Zone: "z2", State: ACTIVE, Tokens: []uint32{1 << 30}, Heartbeat: 980_000, RegisteredAt: 900_000},
		"ing-3": {ID: "ing-3", Addr: "10.0.0.3:9095", State: LEFT, Heartbeat: 995_000, RegisteredAt: 800_000},
	})
	want := []InstanceStatus{
		{ID: "ing-1", Zone: "z1", State: ACTIVE, Addr: "10.0.0.1:9095", Tokens: 2, OwnershipPercent: 75, Heartbeat: 999_500, HeartbeatAgeSeconds: 0.5, RegisteredAt: 900_000, Healthy: true},
		{ID: "ing-2", Zone: "z2", State: ACTIVE, Addr: "10.0.0.2:9095", Tokens: 1, OwnershipPercent: 25, Heartbeat: 980_000, HeartbeatAgeSeconds: 20, RegisteredAt: 900_000, Healthy: false},
		{ID: "ing-3", State: LEFT, Addr: "10.0.0.3:9095", Heartbeat: 995_000, HeartbeatAgeSeconds: 5, RegisteredAt: 800_000, Healthy: false},
	}

	t.Run("json", func(t *testing.T) {
		req := httptest.NewRequest(http.MethodGet, "/ring", nil)
		req.Header.Set("Accept", "application/json, text/plain")
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		require.Equal(t, http.StatusOK, rec.Code)
		require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
		var got []InstanceStatus
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &got))
		require.Equal(t, want, got)
		require.Contains(t, rec.Body.String(), `"state":"LEFT"`)
	})

	t.Run("html", func(t *testing.T) {
		req := httptest.NewRequest(http.MethodGet, "/ring", nil)
		req.Header.Set("Accept", "text/html")
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		require.Equal(t, http.StatusOK, rec.Code)
		require.Equal(t, "text/html; charset=utf-8", rec.Header().Get("Content-Type"))
		body := rec.Body.String()
		for _, row := range []string{
			`<tr><td>ing-1</td><td>z1</td><td>ACTIVE</td><td>10.0.0.1:9095</td><td>2</td><td>75.00%</td><td>500ms ago</td><td>healthy</td></tr>`,
			`<tr class="unhealthy"><td>ing-2</td><td>z2</td><td>ACTIVE</td><td>10.0.0.2:9095</td><td>1</td><td>25.00%</td><td>20s ago</td><td>unhealthy</td></tr>`,
			`<tr class="unhealthy"><td>ing-3</td><td></td><td>LEFT</td><td>10.0.0.3:9095</td><td>0</td><td>0.00%</td><td>5s ago</td><td>unhealthy</td></tr>`,
		} {
			require.Contains(t, body, row)
		}
	})
}
