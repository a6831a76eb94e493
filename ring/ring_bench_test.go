package ring

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// BenchmarkRing_Get routes random tokens on a ring of 100 healthy ingesters
// with 128 tokens each and RF 3, the hot path of every write: without
// zones, and with the ingesters spread over three zones (zone-aware).
func BenchmarkRing_Get(b *testing.B) {
	for _, zones := range []int{0, 3} {
		b.Run(fmt.Sprintf("zones=%d", zones), func(b *testing.B) {
			now := time.Now()
			r := newTestRing(b, "bench", "", &now, nil)
			rnd := rand.New(rand.NewPCG(1, 2))
			d := desc{}
			taken := map[uint32]struct{}{}
			for i := range 100 {
				tokens := generateTokens(rnd, 128, taken)
				for _, t := range tokens {
					taken[t] = struct{}{}
				}
				id := fmt.Sprintf("ingester-%d", i)
				zone := ""
				if zones > 0 {
					zone = fmt.Sprintf("zone-%d", i%zones)
				}
				d[id] = InstanceDesc{ID: id, Addr: id + ":9095", Zone: zone, State: ACTIVE, Tokens: tokens, Heartbeat: now.UnixMilli()}
			}
			setDesc(r, d)
			if r.ZoneAwareReads() != (zones > 0) {
				b.Fatalf("zone-aware %v with %d zones", r.ZoneAwareReads(), zones)
			}
			r.now = time.Now // the real clock, as Get reads it on every call

			keys := make([]uint32, 4096)
			for i := range keys {
				keys[i] = rnd.Uint32()
			}

			b.Run("serial", func(b *testing.B) {
				b.ReportAllocs()
				buf := make([]InstanceDesc, 0, 3)
				i := 0
				for b.Loop() {
					var err error
					buf, err = r.Get(keys[i%len(keys)], buf)
					if err != nil || len(buf) != 3 {
						b.Fatalf("Get: %v, %d replicas", err, len(buf))
					}
					i++
				}
			})
			b.Run("parallel", func(b *testing.B) {
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					buf := make([]InstanceDesc, 0, 3)
					i := rand.IntN(len(keys))
					for pb.Next() {
						var err error
						buf, err = r.Get(keys[i%len(keys)], buf)
						if err != nil || len(buf) != 3 {
							b.Errorf("Get: %v, %d replicas", err, len(buf))
							return
						}
						i++
					}
				})
			})
		})
	}
}

// BenchmarkChooseTokens is the cost of an ingester joining a ring of 59
// balanced ones with 128 tokens each, paid once per join.
func BenchmarkChooseTokens(b *testing.B) {
	rnd := rand.New(rand.NewPCG(1, 2))
	var insts []InstanceDesc
	for i := range 59 {
		insts = append(insts, InstanceDesc{ID: fmt.Sprintf("ingester-%d", i), State: ACTIVE, Tokens: chooseTokens(rnd, 128, 3, "", insts)})
	}
	b.ReportAllocs()
	for b.Loop() {
		chooseTokens(rnd, 128, 3, "", insts)
	}
}
