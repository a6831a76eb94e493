package distributor

import "github.com/census-metrics/census/ring"

// FakeRing places instance i of n at token i*2^32/n: a series' replicas are
// the RF instances from the one whose range holds its token. Tests and
// benchmarks of this package use it instead of a gossiping ring.
type FakeRing struct {
	Instances []ring.InstanceDesc
	RF        int
}

// ReplicationFactor returns RF.
func (r *FakeRing) ReplicationFactor() int { return r.RF }

// Get appends the replicas of token to buf[:0].
func (r *FakeRing) Get(token uint32, buf []ring.InstanceDesc) ([]ring.InstanceDesc, error) {
	n := len(r.Instances)
	if n == 0 {
		return buf[:0], ring.ErrEmptyRing
	}
	buf = buf[:0]
	for k := range min(r.RF, n) {
		buf = append(buf, r.Instances[(r.First(token)+k)%n])
	}
	return buf, nil
}

// First is the index of the instance whose range holds token.
func (r *FakeRing) First(token uint32) int {
	return int(uint64(token) * uint64(len(r.Instances)) >> 32)
}
