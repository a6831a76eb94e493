package ring_test

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/census-metrics/census/ring"
)

// BenchmarkRing_Convergence measures gossip on loopback with the default
// timings (heartbeat period 15s, so 200ms gossip rounds and 30s push/pulls)
// and 128 tokens per ingester, for 10, 50 and 100 ingesters in one process:
//
//   - join-s: the whole cluster restarting at once with its tokens files,
//     each member joining a random earlier one, until every member has
//     every ingester ACTIVE in the same descriptor (reported once);
//   - ns/op: one change (a heartbeat of a random ingester) until every
//     member has it.
//
// Each size takes several seconds; run it with -benchtime=5x.
func BenchmarkRing_Convergence(b *testing.B) {
	for _, n := range []int{10, 50, 100} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			benchmarkConvergence(b, n)
		})
	}
}

func benchmarkConvergence(b *testing.B, n int) {
	dir := b.TempDir()
	var insts []ring.InstanceDesc
	for i := range n {
		id := fmt.Sprintf("ingester-%03d", i)
		tokens := ring.ChooseTokens(uint64(i), 128, 3, insts)
		insts = append(insts, ring.InstanceDesc{ID: id, State: ring.ACTIVE, Tokens: tokens})
		f, err := json.Marshal(map[string]any{"tokens": tokens, "registered_at": i + 1})
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, id), f, 0o644); err != nil {
			b.Fatal(err)
		}
	}

	rnd := rand.New(rand.NewPCG(1, 2))
	var members []*member
	for i := range n {
		var cfg ring.Config
		cfg.RegisterFlags(flag.NewFlagSet("bench", flag.PanicOnError))
		cfg.BindAddress = "127.0.0.1:0"
		cfg.InstanceID = insts[i].ID
		cfg.TokensFile = filepath.Join(dir, insts[i].ID)
		if i > 0 {
			cfg.Join = []string{members[rnd.IntN(i)].GossipAddr()}
		}
		members = append(members, newMember(b, cfg, fmt.Sprintf("127.0.0.1:%d", 20000+i), nil))
	}
	b.Cleanup(func() { stopAll(b, members) })

	start := time.Now()
	for _, m := range members {
		m.run()
	}
	eventually(b, members, 2*time.Minute, func() bool {
		for _, m := range members {
			if m.Ready() != nil || len(m.ReadInstances()) != n {
				return false
			}
		}
		return sameRing(members)
	}, "the cluster converges")
	joined := time.Since(start)

	for b.Loop() {
		m := members[rnd.IntN(n)]
		hb := ring.Heartbeat(m.Ring)
		deadline := time.Now().Add(time.Minute)
		for !allHave(members, m.id, hb) {
			if time.Now().After(deadline) {
				b.Fatalf("heartbeat %d of %s did not reach every member within a minute", hb, m.id)
			}
			time.Sleep(time.Millisecond)
		}
	}
	b.ReportMetric(joined.Seconds(), "join-s")
}

func allHave(members []*member, id string, hb int64) bool {
	for _, m := range members {
		if ring.HeartbeatOf(m.Ring, id) < hb {
			return false
		}
	}
	return true
}
