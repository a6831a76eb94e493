package ring

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// BenchmarkRing_Get routes random tokens on a ring of 100 healthy ingesters
// with 128 tokens each and RF 3, the hot path of every write.
func BenchmarkRing_Get(b *testing.B) {
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
		d[id] = InstanceDesc{ID: id, Addr: id + ":9095", State: ACTIVE, Tokens: tokens, Heartbeat: now.UnixMilli()}
	}
	setDesc(r, d)
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
}
