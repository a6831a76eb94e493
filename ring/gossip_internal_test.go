package ring

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stretchr/testify/require"
)

func TestEncodeDecodeMessage(t *testing.T) {
	insts := []InstanceDesc{
		{ID: "a", Addr: "10.0.0.1:9095", Zone: "z1", State: ACTIVE, Tokens: []uint32{0, 7, 1 << 31, ^uint32(0)}, Heartbeat: 1234, RegisteredAt: 1000},
		{ID: "b", Addr: "10.0.0.2:9095", State: LEFT, Heartbeat: 99, RegisteredAt: 10},
		{ID: "c", Addr: "10.0.0.3:9095", State: LEAVING, Tokens: []uint32{42}, Heartbeat: 5, RegisteredAt: 1},
	}
	for _, kind := range []byte{msgDelta, msgReliable, msgState} {
		b, err := encodeMessage(kind, insts)
		require.NoError(t, err)
		require.Equal(t, kind, b[0])

		gotKind, d, invalid, err := decodeMessage(b)
		require.NoError(t, err)
		require.Equal(t, kind, gotKind)
		require.Zero(t, invalid)
		require.Equal(t, desc{"a": insts[0], "b": insts[1], "c": insts[2]}, d)
	}
}

func TestDecodeMessage_Invalid(t *testing.T) {
	tests := []struct {
		name        string
		msg         string
		wantErr     string
		wantIDs     []string
		wantInvalid int
	}{
		{name: "empty", msg: "", wantErr: "empty"},
		{name: "unknown kind", msg: `x{"instances":[]}`, wantErr: "unknown ring gossip message kind"},
		{name: "not JSON", msg: `d{"instances":`, wantErr: "decode ring gossip message of 14 bytes"},
		{name: "unknown state", msg: `d{"instances":[{"id":"a","state":"BORED"}]}`, wantErr: `invalid ring state "BORED"`},
		{
			name:        "invalid entries are dropped, valid ones kept",
			msg:         `d{"instances":[{"id":"","state":"ACTIVE"},{"id":"b","state":"ACTIVE","tokens":"AQID"},{"id":"c","state":"LEFT","tokens":"AQAAAA=="},{"id":"ok","state":"ACTIVE","tokens":"AQAAAA=="}]}`,
			wantIDs:     []string{"ok"},
			wantInvalid: 3,
		},
		{
			name:    "duplicate ids keep the newest",
			msg:     `d{"instances":[{"id":"a","state":"ACTIVE","heartbeat":5},{"id":"a","state":"ACTIVE","heartbeat":3}]}`,
			wantIDs: []string{"a"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, d, invalid, err := decodeMessage([]byte(tc.msg))
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.wantInvalid, invalid)
			require.Equal(t, tc.wantIDs, sortedKeys(d))
		})
	}
	_, d, _, err := decodeMessage([]byte(`d{"instances":[{"id":"a","state":"ACTIVE","heartbeat":5},{"id":"a","state":"ACTIVE","heartbeat":3}]}`))
	require.NoError(t, err)
	require.Equal(t, int64(5), d["a"].Heartbeat)
}

func TestDecodeMessage_DoesNotRetainInput(t *testing.T) {
	b, err := encodeMessage(msgDelta, []InstanceDesc{{ID: "a", Addr: "x:1", State: ACTIVE, Tokens: []uint32{1, 2}, Heartbeat: 1}})
	require.NoError(t, err)
	_, d, _, err := decodeMessage(b)
	require.NoError(t, err)
	for i := range b {
		b[i] = 0 // memberlist reuses the buffer after NotifyMsg returns
	}
	require.Equal(t, InstanceDesc{ID: "a", Addr: "x:1", State: ACTIVE, Tokens: []uint32{1, 2}, Heartbeat: 1}, d["a"])
}

// TestBroadcast_PacketOrTCP checks that a delta with the default 128 tokens
// and realistic names fits memberlist's UDP packet, and that a bigger one is
// routed to the TCP sender instead of waiting forever in the queue.
func TestBroadcast_PacketOrTCP(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 1))
	inst := func(tokens int) InstanceDesc {
		return InstanceDesc{
			ID:           "ingester-" + strings.Repeat("x", 50),
			Addr:         "10.123.234.210:9095",
			Zone:         "europe-west4-a",
			State:        ACTIVE,
			Tokens:       generateTokens(rnd, tokens, nil),
			Heartbeat:    1_732_500_000_000,
			RegisteredAt: 1_732_500_000_000,
		}
	}
	r := newRing(Config{}, "self", "", nil, nil)

	r.descMtx.Lock()
	r.broadcastLocked(inst(128), false, nil)
	r.descMtx.Unlock()
	require.Equal(t, 1, r.queue.NumQueued())
	require.Empty(t, r.reliablePending)

	big := inst(1024)
	done := make(chan struct{})
	r.descMtx.Lock()
	r.broadcastLocked(big, false, done)
	r.descMtx.Unlock()
	require.Equal(t, 1, r.queue.NumQueued())
	require.Len(t, r.reliablePending, 1)
	require.Len(t, r.reliablec, 1)
	<-done // the caller is not left waiting for a queue that never sends it
	kind, d, _, err := decodeMessage(r.reliablePending[big.ID])
	require.NoError(t, err)
	require.Equal(t, msgReliable, kind)
	require.Equal(t, big, d[big.ID])
}

func TestParseMemberlistLine(t *testing.T) {
	tests := []struct {
		line      string
		wantLevel slog.Level
		wantText  string
	}{
		{"[DEBUG] memberlist: Initiating push/pull sync with: 127.0.0.1:7946\n", slog.LevelDebug, "Initiating push/pull sync with: 127.0.0.1:7946"},
		{"[INFO] memberlist: Suspect x has failed, no acks received\n", slog.LevelInfo, "Suspect x has failed, no acks received"},
		{"[WARN] memberlist: Refuting a dead message\n", slog.LevelWarn, "Refuting a dead message"},
		{"[ERR] memberlist: Failed to send ping\n", slog.LevelError, "Failed to send ping"},
		{"no level at all\n", slog.LevelDebug, "no level at all"},
	}
	for _, tc := range tests {
		t.Run(tc.wantText, func(t *testing.T) {
			level, text := parseMemberlistLine(tc.line)
			require.Equal(t, tc.wantLevel, level)
			require.Equal(t, tc.wantText, text)
		})
	}
}

func TestEncodeDecodeBeat(t *testing.T) {
	inst := InstanceDesc{ID: "a", Addr: "10.0.0.1:9095", State: ACTIVE, Tokens: []uint32{1, 2}, Heartbeat: 1234}
	b := encodeBeat(&inst)
	require.Equal(t, msgBeat, b[0])
	require.Less(t, len(b), 64, "a heartbeat is small, whatever the tokens")
	beat, err := decodeBeat(b)
	require.NoError(t, err)
	require.Equal(t, wireBeat{ID: "a", Version: version(&inst), Heartbeat: 1234}, beat)

	other := inst
	other.Heartbeat = 99
	require.Equal(t, version(&inst), version(&other), "the heartbeat is not part of the version")
	for name, change := range map[string]func(*InstanceDesc){
		"state":  func(i *InstanceDesc) { i.State = LEAVING },
		"tokens": func(i *InstanceDesc) { i.Tokens = []uint32{1, 3} },
		"addr":   func(i *InstanceDesc) { i.Addr = "10.0.0.2:9095" },
	} {
		changed := inst
		change(&changed)
		require.NotEqual(t, version(&inst), version(&changed), name)
	}

	for _, bad := range []string{"", "d{}", "b{", `b{"v":1,"hb":2}`} {
		_, err := decodeBeat([]byte(bad))
		require.Error(t, err, bad)
	}
}

func TestRing_MergeBeat(t *testing.T) {
	now := time.UnixMilli(10_000)
	held := InstanceDesc{ID: "a", Addr: "a:9095", State: ACTIVE, Tokens: []uint32{1, 2}, Heartbeat: 5_000}
	newer := held
	newer.Heartbeat = 9_000
	changed := newer
	changed.State = LEAVING
	tests := []struct {
		name     string
		beat     wireBeat
		want     int64 // heartbeat of a afterwards
		wantPass bool  // passed on
		wantSync bool  // a push/pull was asked for
	}{
		{name: "newer heartbeat of the version held", beat: wireBeat{ID: "a", Version: version(&held), Heartbeat: 9_000}, want: 9_000, wantPass: true},
		{name: "older heartbeat", beat: wireBeat{ID: "a", Version: version(&held), Heartbeat: 4_000}, want: 5_000},
		{name: "same heartbeat", beat: wireBeat{ID: "a", Version: version(&held), Heartbeat: 5_000}, want: 5_000},
		{name: "newer heartbeat of a version not held", beat: wireBeat{ID: "a", Version: version(&changed), Heartbeat: 9_000}, want: 5_000, wantSync: true},
		{name: "unknown instance", beat: wireBeat{ID: "b", Version: 1, Heartbeat: 9_000}, want: 5_000, wantSync: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRing(t, "self", "", &now, nil)
			setDesc(r, desc{"a": held})
			r.mergeBeat(tc.beat)
			require.Equal(t, tc.want, entry(t, r, "a").Heartbeat)
			msgs := r.queue.GetBroadcasts(0, 10_000)
			if tc.wantPass {
				require.Equal(t, [][]byte{encodeBeat(&newer)}, msgs)
			} else {
				require.Empty(t, msgs)
			}
			require.Equal(t, tc.wantSync, len(r.syncc) == 1)
		})
	}
}

// TestRing_HeartbeatsAreBeats checks what an ingester gossips: its whole
// entry when something but the heartbeat changed, else only a heartbeat;
// and that a heartbeat does not displace a whole entry still queued.
func TestRing_HeartbeatsAreBeats(t *testing.T) {
	now := time.UnixMilli(10_000)
	r := newTestRing(t, "self", "self:9095", &now, nil)
	_, err := r.register() // JOINING: a whole entry
	require.NoError(t, err)
	now = now.Add(time.Second)
	r.tick() // a heartbeat
	queued := func() (delta InstanceDesc, beat wireBeat) {
		t.Helper()
		msgs := r.queue.GetBroadcasts(0, 10_000)
		require.Len(t, msgs, 2)
		for _, m := range msgs {
			switch m[0] {
			case msgDelta:
				_, d, _, err := decodeMessage(m)
				require.NoError(t, err)
				delta = d["self"]
			case msgBeat:
				beat, err = decodeBeat(m)
				require.NoError(t, err)
			}
		}
		return delta, beat
	}
	delta, beat := queued()
	require.Equal(t, JOINING, delta.State)
	require.Equal(t, int64(10_000), delta.Heartbeat)
	require.Equal(t, wireBeat{ID: "self", Version: version(&delta), Heartbeat: 11_000}, beat)

	now = now.Add(time.Second)
	r.tick()                // a newer heartbeat replaces the queued one
	_, err = r.settleJoin() // ACTIVE: a whole entry replaces the queued one
	require.NoError(t, err)
	delta, beat = queued()
	require.Equal(t, ACTIVE, delta.State)
	require.Equal(t, int64(12_001), delta.Heartbeat)
	require.Equal(t, int64(12_000), beat.Heartbeat, "members holding the ACTIVE entry ignore this older heartbeat")
}

func TestLogLimiter(t *testing.T) {
	l := newLogLimiter(10 * time.Second)
	now := time.Unix(1000, 0)
	n, ok := l.allow("UDP packet too short (1 bytes) from=10.0.0.1:5555", now)
	require.True(t, ok)
	require.Zero(t, n)
	// Same kind from other addresses and sizes: left out, and counted.
	for i := range 5 {
		_, ok := l.allow(fmt.Sprintf("UDP packet too short (%d bytes) from=10.0.0.%d:5555", i, i), now.Add(time.Second))
		require.False(t, ok)
	}
	// Another kind is its own.
	_, ok = l.allow("Failed to decrypt packet", now.Add(time.Second))
	require.True(t, ok)
	// After the interval, the next line says how many were left out.
	n, ok = l.allow("UDP packet too short (2 bytes) from=10.0.0.9:1", now.Add(11*time.Second))
	require.True(t, ok)
	require.Equal(t, 5, n)
	n, ok = l.allow("UDP packet too short (2 bytes) from=10.0.0.9:1", now.Add(22*time.Second))
	require.True(t, ok)
	require.Zero(t, n)
}

// TestGossip_GarbagePacketsAreCountedNotLogged sends garbage to a member's
// gossip port: each packet is counted in the metric, but the log shows one
// line of the kind.
func TestGossip_GarbagePacketsAreCountedNotLogged(t *testing.T) {
	var logs syncLogBuffer
	reg := prometheus.NewPedanticRegistry()
	cfg := Config{BindAddress: "127.0.0.1:0", InstanceID: "target", ReplicationFactor: 1, Tokens: 4, HeartbeatPeriod: 100 * time.Millisecond, HeartbeatTimeout: time.Second}
	r, err := New(cfg, "", slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})), reg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})

	conn, err := net.Dial("udp", r.GossipAddr())
	require.NoError(t, err)
	defer conn.Close()
	const packets = 200
	for range packets {
		_, err := conn.Write([]byte{0xff, 0xfe, 0xfd, 0x00, 0x01})
		require.NoError(t, err)
	}
	lines := func() float64 {
		mfs, err := reg.Gather()
		require.NoError(t, err)
		for _, mf := range mfs {
			if mf.GetName() == "census_ring_memberlist_log_lines_total" {
				total := 0.0
				for _, m := range mf.GetMetric() {
					total += m.GetCounter().GetValue()
				}
				return total
			}
		}
		return 0
	}
	// Loopback UDP may drop a few under load.
	require.Eventually(t, func() bool { return lines() >= packets/2 }, 10*time.Second, 10*time.Millisecond)
	errorLines := strings.Count(logs.String(), "level=ERROR")
	require.GreaterOrEqual(t, errorLines, 1, "the first garbage packet is logged")
	require.LessOrEqual(t, errorLines, 3, "garbage is not logged once per packet:\n%s", logs.String())
}

// syncLogBuffer is a log destination safe for concurrent writes.
type syncLogBuffer struct {
	mtx sync.Mutex
	buf strings.Builder
}

func (b *syncLogBuffer) Write(p []byte) (int, error) {
	b.mtx.Lock()
	defer b.mtx.Unlock()
	return b.buf.Write(p)
}

func (b *syncLogBuffer) String() string {
	b.mtx.Lock()
	defer b.mtx.Unlock()
	return b.buf.String()
}
