package ring

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
)

// generateTokens returns n distinct random tokens in ascending order, none of
// which is in taken. Re-drawing collisions keeps every token position owned
// by one instance, as far as this member knows the ring. chooseTokens falls
// back on it only when the ring is too fragmented to split.
func generateTokens(rnd *rand.Rand, n int, taken map[uint32]struct{}) []uint32 {
	seen := make(map[uint32]struct{}, n)
	tokens := make([]uint32, 0, n)
	for len(tokens) < n {
		t := rnd.Uint32()
		if _, ok := taken[t]; ok {
			continue
		}
		if _, ok := seen[t]; ok {
			continue
		}
		seen[t] = struct{}{}
		tokens = append(tokens, t)
	}
	slices.Sort(tokens)
	return tokens
}

// tokenSpace is the number of token positions: tokens are uint32s.
const tokenSpace = 1 << 32

// maxTakeFraction is the largest part of one of its ranges that a new
// instance takes from the owner, so that the owner keeps a piece of every
// range and no two tokens ever coincide.
const maxTakeFraction = 0.9

// tokenRange is the part of the token space a token owns: the keys in
// (start, start+size], wrapping around, go to owner.
type tokenRange struct {
	start uint32
	size  uint64
	owner int
}

// tokenCandidates is how many token sets chooseTokens draws and scores.
const tokenCandidates = 32

// chooseTokens returns n distinct tokens, ascending, for a new instance in
// zone joining a ring of insts with replication factor rf, chosen so that
// every instance ends up holding about the same share of the data:
//
//   - The instances it balances against are the JOINING and ACTIVE ones
//     (LEAVING ones are about to hand their ranges to their successors),
//     and only those of its own zone when there are any: under zone-aware
//     replication an instance holds its share of its zone's sub-ring, so
//     balance within the zone, with one replica per zone, is what counts.
//   - It takes the share L of the token space that leaves it level with the
//     most loaded instances: the sum over instances of max(0, share-L)
//     equals L. On a balanced ring of k instances that is 1/(k+1) from
//     each; on an unbalanced one it takes more from those above the level
//     and nothing from the others.
//   - Each donor gives up its part with a number of tokens proportional to
//     it, each placed inside one of the donor's larger ranges and taking
//     the same fraction of each, so that the primary shares come out level
//     whichever ranges are picked. Splitting large ranges keeps range sizes
//     even, so that later joins find ranges to split everywhere.
//   - Which ranges are split, and how many, decides how the replicas land:
//     a new token makes its instance a replica of the rf-1 ranges before
//     it, taken from the instances after it. The largest ranges alone
//     leave the new instance with a fifth more replicas than the mean on
//     small rings, so chooseTokens draws tokenCandidates choices, spread
//     over more or fewer ranges (tokenSpreads), the first of each spread
//     the largest ranges and the others random among the larger ones, and
//     keeps the one whose most loaded instance, by primary share and by
//     replicas held, is least above the mean.
//
// An instance that joins an empty ring spreads its tokens evenly from a
// random offset. chooseTokens does not modify insts.
func chooseTokens(rnd *rand.Rand, n, rf int, zone string, insts []InstanceDesc) []uint32 {
	peers, zoned := balancePeers(zone, insts)
	if zoned {
		rf = 1
	}
	ring, ranges, shares := ownedRanges(peers)
	if len(ranges) == 0 {
		offset := uint64(rnd.Uint32())
		tokens := make([]uint32, n)
		for i := range tokens {
			tokens[i] = uint32(offset + uint64(i)*tokenSpace/uint64(n))
		}
		slices.Sort(tokens)
		return tokens
	}

	take := levelTakes(shares)
	perOwner := apportion(n, take)
	// Each owner's ranges, largest first. Equal ranges are common (a new
	// ring's are all equal) and are ordered at random: ordered by position,
	// the split ones would bunch up in one part of the ring, where later
	// instances would be replicas of one another more than elsewhere.
	byOwner := make([][]tokenRange, len(peers))
	for _, rg := range ranges {
		byOwner[rg.owner] = append(byOwner[rg.owner], rg)
	}
	for _, rs := range byOwner {
		rnd.Shuffle(len(rs), func(i, j int) { rs[i], rs[j] = rs[j], rs[i] })
		slices.SortStableFunc(rs, func(a, b tokenRange) int { return cmp.Compare(b.size, a.size) })
	}

	var best []uint32
	bestScore := math.Inf(1)
	for c := range tokenCandidates {
		spread := tokenSpreads[c%len(tokenSpreads)]
		tokens := splitRanges(rnd, c >= len(tokenSpreads), spread, byOwner, perOwner, take)
		if len(tokens) < n {
			// Only a ring of ranges too small to split gets here.
			taken := make(map[uint32]struct{}, len(ring)+len(tokens))
			for _, to := range ring {
				taken[to.token] = struct{}{}
			}
			for _, t := range tokens {
				taken[t] = struct{}{}
			}
			tokens = append(tokens, generateTokens(rnd, n-len(tokens), taken)...)
		}
		slices.Sort(tokens)
		if score := imbalance(ring, len(peers), tokens, rf); score < bestScore {
			best, bestScore = tokens, score
		}
	}
	return best
}

// tokenSpreads are the fractions of its tokens a new instance puts in
// ranges of their own; the others share a range with a neighbour. Every
// range a new token lands in makes the new instance a replica of the rf-1
// ranges before it, so on small rings, where ranges are large, spreading
// over fewer ranges is what keeps its replica load at the mean.
var tokenSpreads = [...]float64{1, 0.85, 0.7, 0.55}

// splitRanges places perOwner[o] tokens in the ranges of owner o (byOwner[o],
// largest first), taking take[o] of the token space from it. The tokens go
// into spread*perOwner[o] ranges (at least one), several to a range when
// there are fewer ranges than tokens: the largest ones, or, when random is
// set, ranges drawn from twice as many largest.
func splitRanges(rnd *rand.Rand, random bool, spread float64, byOwner [][]tokenRange, perOwner []int, take []float64) []uint32 {
	var tokens []uint32
	for owner, k := range perOwner {
		if k == 0 {
			continue
		}
		rs := byOwner[owner]
		g := max(1, int(math.Round(spread*float64(k))))
		if random && len(rs) > g {
			pool := slices.Clone(rs[:min(len(rs), 2*g)])
			rnd.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
			rs = pool
		}
		// counts[i] tokens go into rs[i].
		counts := make([]int, min(g, len(rs)))
		for i := range k {
			counts[i%len(counts)]++
		}
		var used uint64
		for i := range counts {
			used += rs[i].size
		}
		frac := min(maxTakeFraction, take[owner]*tokenSpace/float64(used))
		for i, c := range counts {
			tokens = appendSplit(tokens, rs[i], c, frac)
		}
	}
	return tokens
}

// imbalance scores a new instance's tokens against ring, the sorted tokens
// of owners 0..owners-1: how far above the mean the most loaded instance is,
// counting both its primary share of the token space and the share it holds
// one of rf replicas of (the larger of the two ratios).
func imbalance(ring []tokenOwner, owners int, tokens []uint32, rf int) float64 {
	merged := make([]tokenOwner, 0, len(ring)+len(tokens))
	i, j := 0, 0
	for i < len(ring) || j < len(tokens) {
		if j == len(tokens) || (i < len(ring) && ring[i].token <= tokens[j]) {
			merged = append(merged, ring[i])
			i++
		} else {
			merged = append(merged, tokenOwner{tokens[j], owners})
			j++
		}
	}
	primary, replica := loads(merged, owners+1, rf)
	meanPrimary := 1 / float64(owners+1)
	meanReplica := meanPrimary * float64(min(rf, owners+1))
	score := 0.0
	for o := range primary {
		score = max(score, primary[o]/meanPrimary, replica[o]/meanReplica)
	}
	return score
}

// loads returns, for each of owners instances, its primary share of the
// token space on ring (tokens in ring order) and the share of the space it
// holds one of rf replicas of.
func loads(ring []tokenOwner, owners, rf int) (primary, replica []float64) {
	rf = min(rf, owners)
	primary = make([]float64, owners)
	replica = make([]float64, owners)
	replicas := make([]int, 0, rf)
	for i, to := range ring {
		prev := ring[(i+len(ring)-1)%len(ring)].token
		size := float64((uint64(to.token)-uint64(prev))%tokenSpace) / tokenSpace
		if len(ring) == 1 {
			size = 1
		}
		primary[to.owner] += size
		replicas = replicas[:0]
		for step := 0; step < len(ring) && len(replicas) < rf; step++ {
			o := ring[(i+step)%len(ring)].owner
			if !slices.Contains(replicas, o) {
				replicas = append(replicas, o)
				replica[o] += size
			}
		}
	}
	return primary, replica
}

// balancePeers returns the instances a new instance in zone balances its
// tokens against, and whether they are its zone only.
func balancePeers(zone string, insts []InstanceDesc) ([]InstanceDesc, bool) {
	var peers, sameZone []InstanceDesc
	for _, inst := range insts {
		if !inst.State.writable() || len(inst.Tokens) == 0 {
			continue
		}
		peers = append(peers, inst)
		if zone != "" && inst.Zone == zone {
			sameZone = append(sameZone, inst)
		}
	}
	if len(sameZone) > 0 {
		return sameZone, true
	}
	return peers, false
}

// tokenOwner is a token of the instance with index owner.
type tokenOwner struct {
	token uint32
	owner int
}

// ownedRanges returns the tokens of insts in ring order, the ranges they
// cut the token space into, and each instance's share of the space. A token
// shared by two instances owns an empty range, which is left out.
func ownedRanges(insts []InstanceDesc) ([]tokenOwner, []tokenRange, []float64) {
	var all []tokenOwner
	for i, inst := range insts {
		for _, t := range inst.Tokens {
			all = append(all, tokenOwner{t, i})
		}
	}
	slices.SortFunc(all, func(a, b tokenOwner) int {
		return cmp.Or(cmp.Compare(a.token, b.token), cmp.Compare(a.owner, b.owner))
	})
	shares := make([]float64, len(insts))
	ranges := make([]tokenRange, 0, len(all))
	for i, to := range all {
		prev := all[(i+len(all)-1)%len(all)].token
		size := (uint64(to.token) - uint64(prev)) % tokenSpace
		if len(all) == 1 {
			size = tokenSpace
		}
		if size == 0 {
			continue
		}
		ranges = append(ranges, tokenRange{start: prev, size: size, owner: to.owner})
		shares[to.owner] += float64(size) / tokenSpace
	}
	return all, ranges, shares
}

// levelTakes returns how much of the token space (as a fraction) a new
// instance takes from each owner: shares[i]-L for the owners above the level
// L at which the new instance's total, L, equals what they give up.
func levelTakes(shares []float64) []float64 {
	sorted := slices.Sorted(slices.Values(shares))
	slices.Reverse(sorted)
	// With the k largest shares above the level, sum(shares[:k]) - k*L = L.
	level, sum := 0.0, 0.0
	for k, s := range sorted {
		sum += s
		level = sum / float64(k+2)
		if k+1 == len(sorted) || sorted[k+1] <= level {
			break
		}
	}
	take := make([]float64, len(shares))
	for i, s := range shares {
		take[i] = max(0, s-level)
	}
	return take
}

// apportion splits n tokens between owners in proportion to weights, by
// largest remainder, with ties going to the lower index.
func apportion(n int, weights []float64) []int {
	total := 0.0
	for _, w := range weights {
		total += w
	}
	counts := make([]int, len(weights))
	if total <= 0 {
		return counts
	}
	type remainder struct {
		owner int
		rem   float64
	}
	rems := make([]remainder, 0, len(weights))
	given := 0
	for i, w := range weights {
		exact := float64(n) * w / total
		counts[i] = int(exact)
		given += counts[i]
		rems = append(rems, remainder{i, exact - float64(counts[i])})
	}
	slices.SortStableFunc(rems, func(a, b remainder) int { return cmp.Compare(b.rem, a.rem) })
	for i := 0; given < n; i++ {
		counts[rems[i%len(rems)].owner]++
		given++
	}
	return counts
}

// appendSplit appends c tokens that take the fraction frac of rg from its
// owner: the first part of the range, cut into c pieces, since a token owns
// the keys up to and including itself.
func appendSplit(tokens []uint32, rg tokenRange, c int, frac float64) []uint32 {
	chunk := uint64(frac * float64(rg.size))
	// Leave the owner at least one key, and each new token at least one.
	chunk = min(max(chunk, uint64(c)), rg.size-1)
	if chunk < uint64(c) {
		return tokens // a range of c keys or fewer cannot take c tokens
	}
	for i := 1; i <= c; i++ {
		off := (chunk*uint64(i) + uint64(c) - 1) / uint64(c) // ceil(chunk*i/c): distinct, and the last is chunk
		tokens = append(tokens, uint32(uint64(rg.start)+off))
	}
	return tokens
}

// tokensFile is the JSON form of Config.TokensFile.
type tokensFile struct {
	Tokens []uint32 `json:"tokens"`
	// RegisteredAt is when the instance registered with these tokens
	// (unix milliseconds), kept so that a restart keeps its place in the
	// order joiners choose tokens in (see Ring.joiningTokens).
	RegisteredAt int64 `json:"registered_at,omitempty"`
}

// readTokens returns the tokens file at path, or a zero one (nil Tokens)
// when there is no such file yet.
func readTokens(path string) (tokensFile, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return tokensFile{}, nil
	}
	if err != nil {
		return tokensFile{}, fmt.Errorf("read tokens file: %w", err)
	}
	var f tokensFile
	if err := json.Unmarshal(b, &f); err != nil {
		return tokensFile{}, fmt.Errorf("decode tokens file %s: %w", path, err)
	}
	if len(f.Tokens) == 0 {
		return tokensFile{}, fmt.Errorf("tokens file %s holds no tokens", path)
	}
	for i := 1; i < len(f.Tokens); i++ {
		if f.Tokens[i] <= f.Tokens[i-1] {
			return tokensFile{}, fmt.Errorf("tokens file %s: tokens are not strictly ascending at position %d", path, i)
		}
	}
	return f, nil
}

// saveTokens writes the tokens file, if the ring has one. A failure (a
// full disk) does not stop the ingester: its tokens are in the ring, where
// a restart finds them while its entry lives; only a restart after that
// chooses new tokens, which moves series but loses nothing, since reads ask
// every ingester.
func (r *Ring) saveTokens(tokens []uint32, registeredAt int64) {
	if r.cfg.TokensFile == "" {
		return
	}
	if err := writeTokens(r.cfg.TokensFile, tokensFile{Tokens: tokens, RegisteredAt: registeredAt}); err != nil {
		r.logger.Warn("Could not save the ring tokens; they are kept in the ring", "file", r.cfg.TokensFile, "err", err)
	}
}

// writeTokens saves tokens at path so that a later start sees either the
// previous file or the complete new one, even after a crash mid-write:
// write a temporary file beside it, sync, rename over, sync the directory.
func writeTokens(path string, f tokensFile) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create directory of tokens file: %w", err)
	}
	b, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("encode tokens: %w", err)
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("create temporary tokens file: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(b); err != nil {
		return fmt.Errorf("write tokens file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync tokens file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close tokens file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename tokens file into place: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory of tokens file to sync it: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory of tokens file: %w", err)
	}
	return nil
}
