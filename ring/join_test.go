package ring_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/ring"
)

// TestRing_SimultaneousStartsBalance starts groups of 3 and 10 ingesters
// at once on loopback (TestRing_ThirtyMembers starts 27 in three zones),
// each joining a random earlier one, over repeated rounds: fresh, restarted with the tokens files of the previous
// round, and with stale files (every other ingester keeps its file, the
// others get one of an unrelated ring). Every round must end with every
// instance ACTIVE and the most loaded one within 1.10 of the mean primary
// share, as sequential joins are.
func TestRing_SimultaneousStartsBalance(t *testing.T) {
	if testing.Short() {
		t.Skip("rounds of up to 10 memberlist members take several seconds")
	}
	tests := []struct {
		name   string
		size   int
		rounds []string // "fresh", "restart" or "stale"
	}{
		{name: "3", size: 3, rounds: []string{"fresh", "restart", "stale", "fresh"}},
		{name: "10", size: 10, rounds: []string{"fresh", "stale", "restart"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			rnd := rand.New(rand.NewPCG(uint64(tc.size), 1))
			for round, kind := range tc.rounds {
				prepareTokensFiles(t, dir, tc.size, kind, rnd)
				worst, took := simultaneousStart(t, dir, tc.size, rnd)
				t.Logf("%d ingesters, round %d (%s): max/mean primary share %.3f, all ACTIVE after %s", tc.size, round+1, kind, worst, took.Round(time.Millisecond))
				require.LessOrEqual(t, worst, 1.10, "round %d (%s) of %d ingesters started at once", round+1, kind, tc.size)
			}
		})
	}
}

func tokensPath(dir string, i int) string {
	return filepath.Join(dir, fmt.Sprintf("ingester-%02d", i), "tokens")
}

// prepareTokensFiles leaves the tokens files of the previous round in dir
// as they are ("restart"), removes them ("fresh"), or keeps every other one
// and gives the others files of an unrelated, earlier ring ("stale").
func prepareTokensFiles(t testing.TB, dir string, n int, kind string, rnd *rand.Rand) {
	t.Helper()
	for i := range n {
		path := tokensPath(dir, i)
		switch {
		case kind == "fresh":
			require.NoError(t, os.RemoveAll(path))
		case kind == "stale" && i%2 == 1:
			// A ring this instance was alone in, long ago.
			b, err := json.Marshal(map[string]any{"tokens": ring.ChooseTokens(rnd.Uint64(), 32, 3, nil), "registered_at": 1000 + i})
			require.NoError(t, err)
			require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
			require.NoError(t, os.WriteFile(path, b, 0o644))
		}
	}
}

// simultaneousStart runs n ingesters at once until all are ACTIVE in one
// agreed ring, stops them, and returns the max/mean primary share and how
// long they took.
func simultaneousStart(t *testing.T, dir string, n int, rnd *rand.Rand) (float64, time.Duration) {
	t.Helper()
	var members []*member
	for i := range n {
		var join []string
		if i > 0 {
			join = []string{members[rnd.IntN(i)].GossipAddr()}
		}
		cfg := clusterConfig(fmt.Sprintf("ingester-%02d", i), join...)
		cfg.TokensFile = tokensPath(dir, i)
		members = append(members, newMember(t, cfg, fmt.Sprintf("127.0.0.1:%d", 12000+i), nil))
	}
	start := time.Now()
	for _, m := range members {
		m.run()
	}
	defer stopAll(t, members)
	eventually(t, members, 90*time.Second, func() bool {
		for _, m := range members {
			if m.Ready() != nil || len(m.ReadInstances()) != n {
				return false
			}
			for _, inst := range m.Instances() {
				if inst.State != ring.ACTIVE {
					return false
				}
			}
		}
		return sameRing(members)
	}, fmt.Sprintf("%d ingesters started at once converge", n))
	return zoneMaxOverMean(members[0].Instances(), ""), time.Since(start)
}
