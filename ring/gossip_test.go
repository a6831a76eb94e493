package ring_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/ring"
)

const (
	waitFor = 15 * time.Second // generous: the race detector on 2 shared cores
	tick    = 20 * time.Millisecond
)

// testConfig is a config for members on loopback that converge in seconds.
func testConfig(id string, join ...string) ring.Config {
	return ring.Config{
		BindAddress:       "127.0.0.1:0",
		Join:              join,
		InstanceID:        id,
		ReplicationFactor: 3,
		Tokens:            32,
		HeartbeatPeriod:   100 * time.Millisecond,
		HeartbeatTimeout:  time.Second,
	}
}

type member struct {
	*ring.Ring
	id     string
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

// startMember creates and runs a member; instanceAddr != "" makes it an
// ingester. Cleanup stops it and waits for Run to return.
func startMember(t testing.TB, cfg ring.Config, instanceAddr string) *member {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	r, err := ring.New(cfg, instanceAddr, nil, reg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{Ring: r, id: cfg.InstanceID, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { m.done <- r.Run(ctx) }()
	t.Cleanup(func() { m.stop(t) })
	return m
}

// stop cancels the member and waits for Run to return nil; it may be called
// more than once.
func (m *member) stop(t testing.TB) {
	t.Helper()
	m.cancel()
	select {
	case err, ok := <-m.done:
		if ok {
			require.NoError(t, err)
			close(m.done)
		}
	case <-time.After(waitFor):
		t.Fatalf("member %s did not stop within %s", m.id, waitFor)
	}
}

// view is what a member knows about the instances, without the heartbeats
// that differ from member to member.
func view(r *ring.Ring) []ring.InstanceDesc {
	var out []ring.InstanceDesc
	for _, inst := range r.Instances() {
		inst.Heartbeat = 0
		out = append(out, inst)
	}
	return out
}

func getIDs(t testing.TB, r *ring.Ring, token uint32) []string {
	t.Helper()
	got, err := r.Get(token, make([]ring.InstanceDesc, 0, 3))
	require.NoError(t, err)
	var ids []string
	for _, inst := range got {
		ids = append(ids, inst.ID)
	}
	return ids
}

func TestRing_GossipConverges(t *testing.T) {
	const ingesters = 5
	var members []*member
	join := []string{}
	for i := range ingesters {
		id := fmt.Sprintf("ingester-%d", i)
		m := startMember(t, testConfig(id, join...), fmt.Sprintf("127.0.0.1:%d", 9000+i))
		members = append(members, m)
		// Each member joins through the previous one, so news has to travel
		// through the others to reach everybody.
		join = []string{m.GossipAddr()}
	}
	watcher := startMember(t, testConfig("querier", join...), "")
	all := append(slices.Clone(members), watcher)

	// Everybody sees every ingester ACTIVE with the same tokens.
	require.Eventually(t, func() bool {
		for _, m := range all {
			if m.Ready() != nil {
				return false
			}
			insts := m.ReadInstances()
			if len(insts) != ingesters {
				return false
			}
			for _, inst := range insts {
				if inst.State != ring.ACTIVE || len(inst.Tokens) != 32 {
					return false
				}
			}
			if !slices.EqualFunc(view(m.Ring), view(members[0].Ring), instanceEqual) {
				return false
			}
		}
		return true
	}, waitFor, tick, "members did not converge")
	for i, inst := range watcher.Instances() {
		require.Equal(t, fmt.Sprintf("ingester-%d", i), inst.ID)
		require.Equal(t, fmt.Sprintf("127.0.0.1:%d", 9000+i), inst.Addr)
	}

	// Every member routes every token to the same replicas.
	rnd := rand.New(rand.NewPCG(1, 2))
	tokens := make([]uint32, 500)
	for i := range tokens {
		tokens[i] = rnd.Uint32()
	}
	for _, tok := range tokens {
		want := getIDs(t, watcher.Ring, tok)
		require.Len(t, want, 3)
		for _, m := range members {
			require.Equal(t, want, getIDs(t, m.Ring, tok), "token %d on %s", tok, m.id)
		}
	}
	require.Eventually(t, func() bool {
		return gauge(t, watcher.reg, "census_ring_members", "ACTIVE") == ingesters &&
			counterSum(t, watcher.reg, "census_ring_gossip_messages_received_total") > 0
	}, waitFor, tick)

	// A graceful leave: everybody sees the tombstone, and neither writes
	// nor reads go to it any more.
	leaver := members[4]
	leaver.stop(t)
	require.Error(t, leaver.Ready())
	rest := slices.Concat(members[:4], []*member{watcher})
	require.Eventually(t, func() bool {
		for _, m := range rest {
			i := slices.IndexFunc(m.Instances(), func(inst ring.InstanceDesc) bool { return inst.ID == leaver.id })
			if i < 0 || m.Instances()[i].State != ring.LEFT || len(m.Instances()[i].Tokens) != 0 {
				return false
			}
			if len(m.ReadInstances()) != ingesters-1 {
				return false
			}
		}
		return true
	}, waitFor, tick, "the leave did not spread")
	for _, m := range rest {
		for _, tok := range tokens {
			ids := getIDs(t, m.Ring, tok)
			require.Len(t, ids, 3)
			require.NotContains(t, ids, leaver.id)
		}
	}

	// A hung ingester: still a memberlist member, but its heartbeat goes
	// stale, and after the timeout writes and reads skip it.
	hung := members[3]
	ring.PauseHeartbeats(hung.Ring)
	others := slices.Concat(members[:3], []*member{watcher})
	require.Eventually(t, func() bool {
		for _, m := range others {
			if slices.ContainsFunc(m.ReadInstances(), func(inst ring.InstanceDesc) bool { return inst.ID == hung.id }) {
				return false
			}
		}
		return true
	}, waitFor, tick, "the hung ingester stayed healthy")
	for _, m := range others {
		i := slices.IndexFunc(m.Instances(), func(inst ring.InstanceDesc) bool { return inst.ID == hung.id })
		require.GreaterOrEqual(t, i, 0)
		require.Equal(t, ring.ACTIVE, m.Instances()[i].State, "listed, though unhealthy")
		for _, tok := range tokens {
			// Only three healthy ingesters remain, so they hold everything.
			require.ElementsMatch(t, []string{"ingester-0", "ingester-1", "ingester-2"}, getIDs(t, m.Ring, tok))
		}
	}
	require.Eventually(t, func() bool {
		return gauge(t, watcher.reg, "census_ring_members", "ACTIVE") == 3 &&
			gauge(t, watcher.reg, "census_ring_members", "UNHEALTHY") == 1 &&
			gauge(t, watcher.reg, "census_ring_members", "LEFT") == 1
	}, waitFor, tick)
}

func instanceEqual(a, b ring.InstanceDesc) bool {
	return a.ID == b.ID && a.Addr == b.Addr && a.Zone == b.Zone && a.State == b.State &&
		slices.Equal(a.Tokens, b.Tokens) && a.RegisteredAt == b.RegisteredAt
}

// TestRing_LargeEntriesConverge uses more tokens than fit a UDP packet, so
// heartbeats travel over TCP.
func TestRing_LargeEntriesConverge(t *testing.T) {
	var members []*member
	join := []string{}
	for i := range 3 {
		cfg := testConfig(fmt.Sprintf("ingester-%d", i), join...)
		cfg.Tokens = 1024
		m := startMember(t, cfg, fmt.Sprintf("127.0.0.1:%d", 9000+i))
		members = append(members, m)
		join = []string{m.GossipAddr()}
	}
	require.Eventually(t, func() bool {
		for _, m := range members {
			insts := m.ReadInstances()
			if m.Ready() != nil || len(insts) != 3 || !slices.EqualFunc(view(m.Ring), view(members[0].Ring), instanceEqual) {
				return false
			}
			if counter(t, m.reg, "census_ring_gossip_messages_received_total", "reliable") == 0 {
				return false
			}
		}
		return true
	}, waitFor, tick)
	for _, inst := range members[2].Instances() {
		require.Len(t, inst.Tokens, 1024)
	}
	// Heartbeats keep everybody healthy well past the timeout.
	require.Never(t, func() bool {
		for _, m := range members {
			if len(m.ReadInstances()) != 3 {
				return true
			}
		}
		return false
	}, 2*time.Second, tick)
}

func TestRing_JoinRetriesUntilCancelled(t *testing.T) {
	// Nothing listens on port 1, so every attempt fails.
	m := startMember(t, testConfig("ingester-0", "127.0.0.1:1"), "127.0.0.1:9000")
	require.Eventually(t, func() bool {
		err := m.Ready()
		return err != nil && strings.Contains(err.Error(), "not joined the memberlist cluster yet (peers [127.0.0.1:1])")
	}, waitFor, tick)
	require.Empty(t, m.Instances(), "an ingester registers only once joined")
	start := time.Now()
	m.stop(t)
	require.Less(t, time.Since(start), 2*time.Second, "Run returns promptly while retrying")
	require.ErrorContains(t, m.Ready(), "stopped")
}

func TestRing_SingleIngester(t *testing.T) {
	m := startMember(t, testConfig("ingester-0"), "127.0.0.1:9000")
	require.Eventually(t, func() bool { return m.Ready() == nil }, waitFor, tick)
	require.Equal(t, 3, m.ReplicationFactor())
	require.Regexp(t, `^127\.0\.0\.1:\d+$`, m.GossipAddr())
	require.NotEqual(t, "127.0.0.1:0", m.GossipAddr())
	got, err := m.Get(12345, nil)
	require.NoError(t, err)
	require.Len(t, got, 1, "fewer replicas than RF when fewer instances exist")
	require.Equal(t, "ingester-0", got[0].ID)
	require.Equal(t, "127.0.0.1:9000", got[0].Addr)
	require.Equal(t, ring.ACTIVE, got[0].State)
	require.Len(t, got[0].Tokens, 32)

	req := httptest.NewRequest(http.MethodGet, "/ring", nil)
	rec := httptest.NewRecorder()
	m.ServeHTTP(rec, req)
	require.Contains(t, rec.Body.String(), "<td>ingester-0</td>")
	require.Contains(t, rec.Body.String(), "<td>100.00%</td>")
	require.InDelta(t, 1, gauge(t, m.reg, "census_ring_ownership_ratio", ""), 1e-9)

	m.stop(t)
	require.Equal(t, ring.LEFT, m.Instances()[0].State)
	_, err = m.Get(12345, nil)
	require.ErrorIs(t, err, ring.ErrEmptyRing)
}

func TestNew_Errors(t *testing.T) {
	tests := []struct {
		name         string
		cfg          ring.Config
		instanceAddr string
		wantErr      string
	}{
		{name: "invalid config", cfg: ring.Config{BindAddress: "127.0.0.1:0"}, wantErr: "invalid ring config"},
		{name: "instance address without host", cfg: testConfig("a"), instanceAddr: ":9095", wantErr: "must name a host other members can dial"},
		{name: "unspecified instance address", cfg: testConfig("a"), instanceAddr: "0.0.0.0:9095", wantErr: "must name a host"},
		{name: "instance address without port", cfg: testConfig("a"), instanceAddr: "10.0.0.1", wantErr: "invalid instance address"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ring.New(tc.cfg, tc.instanceAddr, nil, nil)
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

// gauge returns the value of the gauge name with state label state (any
// labels when state is empty).
func gauge(t testing.TB, reg prometheus.Gatherer, name, state string) float64 {
	t.Helper()
	m := findMetric(t, reg, name, "state", state)
	if m == nil {
		return -1
	}
	return m.GetGauge().GetValue()
}

func counter(t testing.TB, reg prometheus.Gatherer, name, kind string) float64 {
	t.Helper()
	m := findMetric(t, reg, name, "kind", kind)
	if m == nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

func counterSum(t testing.TB, reg prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func findMetric(t testing.TB, reg prometheus.Gatherer, name, label, value string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if value == "" {
				return m
			}
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m
				}
			}
		}
	}
	return nil
}
