package ingester

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
)

// A sender retries a push it got no acknowledgement for: a 503 because too
// few replicas acknowledged, a timeout. Replicas that took the push the first
// time then see its samples again, and by then the series may have moved
// on: the TSDB refuses a sample behind the newest of its series (out of
// order), behind the out-of-order window (too old) or behind the head
// (out of bounds), and it takes an identical sample only at the series'
// newest timestamp. A 400 tells the sender never to retry, so it drops the
// rest of its batch, though every sample of it is stored.
//
// So a sample the time rules refused is looked up once the push is
// committed, and if the ingester holds the same value at that timestamp, in
// the head, the out-of-order head or a block, or from earlier in the same
// push, it is success: neither stored again nor discarded. Only refused
// samples pay: one querier per push, opened on the first refusal's lookup,
// and one Select per series over its refused samples' time range.

// maxPooledRefusals bounds the refusals a pooled pushState keeps room for.
const maxPooledRefusals = 4096

// refusal is one sample of a push that a time rule refused, kept until the
// push is committed.
type refusal struct {
	series int // In pushState.refusedSeries.
	s      sample
	err    error // The rule's, for rejectSample.
}

// refusedSeries is a series with refusals in a push, and their time range.
type refusedSeries struct {
	ls         labels.Labels
	mint, maxt int64
}

// refuse notes that err, a time rule, refused s of the series ls.
func (st *pushState) refuse(ls labels.Labels, s sample, err error) {
	g := len(st.refusedSeries) - 1
	// A series' refusals come together, unless it is repeated in the push.
	if g < 0 || !labels.Equal(st.refusedSeries[g].ls, ls) {
		g = st.refusedSeriesIndex(ls)
	}
	rs := &st.refusedSeries[g]
	rs.mint, rs.maxt = min(rs.mint, s.t), max(rs.maxt, s.t)
	st.refused = append(st.refused, refusal{series: g, s: s, err: err})
}

// refusedSeriesIndex returns the index of ls in st.refusedSeries, adding it
// if it is new.
func (st *pushState) refusedSeriesIndex(ls labels.Labels) int {
	if st.refusedByHash == nil {
		st.refusedByHash = map[uint64]int{}
	}
	h := ls.Hash()
	if g, ok := st.refusedByHash[h]; ok && labels.Equal(st.refusedSeries[g].ls, ls) {
		return g
	}
	// On a hash collision the second series gets its own entry, not in
	// the map: at worst one more Select.
	g := len(st.refusedSeries)
	if _, ok := st.refusedByHash[h]; !ok {
		st.refusedByHash[h] = g
	}
	st.refusedSeries = append(st.refusedSeries, refusedSeries{ls: ls, mint: math.MaxInt64, maxt: math.MinInt64})
	return g
}

// resolveRefusals runs once the push is committed, before its WAL fsync
// (so that a stored sample it finds, committed by an earlier push, is on
// disk once this push is acknowledged). It counts every refusal whose
// sample the ingester holds identically as resent, and rejects the others
// in st.rej, in the order they were refused.
func (st *pushState) resolveRefusals(ctx context.Context) {
	if len(st.refused) == 0 {
		return
	}
	stored, lookupErr := st.lookupRefusals(ctx)
	for k, r := range st.refused {
		if stored[k] {
			st.resent++
			continue
		}
		err := r.err
		if lookupErr != nil {
			err = fmt.Errorf("%w (and looking up whether it is stored already failed: %v)", err, lookupErr)
		}
		st.rejectSample(st.refusedSeries[r.series].ls, r.s.t, err)
	}
}

// lookupRefusals reports, per refusal, whether the ingester holds its sample
// identically. On an error, what it found until then still holds.
func (st *pushState) lookupRefusals(ctx context.Context) (stored []bool, err error) {
	stored = slices.Grow(st.refusedStored[:0], len(st.refused))[:len(st.refused)]
	clear(stored)
	st.refusedStored = stored

	// Refusals by series, then time, for one forward pass of each series'
	// iterator.
	order := st.refusedOrder[:0]
	for k := range st.refused {
		order = append(order, k)
	}
	slices.SortFunc(order, func(a, b int) int {
		ra, rb := &st.refused[a], &st.refused[b]
		if ra.series != rb.series {
			return ra.series - rb.series
		}
		switch {
		case ra.s.t < rb.s.t:
			return -1
		case ra.s.t > rb.s.t:
			return 1
		}
		return 0
	})
	st.refusedOrder = order

	mint, maxt := int64(math.MaxInt64), int64(math.MinInt64)
	for _, rs := range st.refusedSeries {
		mint, maxt = min(mint, rs.mint), max(maxt, rs.maxt)
	}
	q, err := st.db.Querier(mint, maxt)
	if err != nil {
		return stored, fmt.Errorf("open querier over [%d, %d]: %w", mint, maxt, err)
	}
	defer func() {
		if cerr := q.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close querier: %w", cerr)
		}
	}()

	var (
		matchers []*labels.Matcher
		it       chunkenc.Iterator
	)
	for start := 0; start < len(order); {
		g := st.refused[order[start]].series
		end := start + 1
		for end < len(order) && st.refused[order[end]].series == g {
			end++
		}
		rs := &st.refusedSeries[g]
		matchers = matchers[:0]
		rs.ls.Range(func(l labels.Label) {
			matchers = append(matchers, labels.MustNewMatcher(labels.MatchEqual, l.Name, l.Value))
		})
		set := q.Select(ctx, false, &storage.SelectHints{Start: rs.mint, End: rs.maxt}, matchers...)
		for set.Next() {
			s := set.At()
			// The matchers also match series with more labels.
			if !labels.Equal(s.Labels(), rs.ls) {
				continue
			}
			it = s.Iterator(it)
			for _, k := range order[start:end] {
				want := st.refused[k].s
				vt := it.Seek(want.t)
				if vt == chunkenc.ValNone {
					break
				}
				if it.AtT() == want.t {
					stored[k] = storedIdentical(it, vt, want)
				}
			}
			if err := it.Err(); err != nil {
				return stored, fmt.Errorf("read series %s: %w", formatSeries(rs.ls), err)
			}
		}
		if err := set.Err(); err != nil {
			return stored, fmt.Errorf("select series %s: %w", formatSeries(rs.ls), err)
		}
		start = end
	}
	return stored, nil
}

// storedIdentical reports whether the sample it is at, of type vt, is want:
// float bits equal, or histograms equal. A stale marker of a histogram series
// is stored as a histogram with a stale sum.
func storedIdentical(it chunkenc.Iterator, vt chunkenc.ValueType, want sample) bool {
	switch vt {
	case chunkenc.ValFloat:
		_, v := it.At()
		return want.h == nil && want.fh == nil && math.Float64bits(v) == math.Float64bits(want.v)
	case chunkenc.ValHistogram:
		_, h := it.AtHistogram(nil)
		switch {
		case want.h != nil:
			return histogramsEqual(h, want.h)
		case want.fh == nil:
			return value.IsStaleNaN(want.v) && value.IsStaleNaN(h.Sum)
		}
	case chunkenc.ValFloatHistogram:
		_, fh := it.AtFloatHistogram(nil)
		switch {
		case want.fh != nil:
			return floatHistogramsEqual(fh, want.fh)
		case want.h == nil:
			return value.IsStaleNaN(want.v) && value.IsStaleNaN(fh.Sum)
		}
	}
	return false
}

// histogramsEqual reports whether a and b are equal, ignoring empty
// buckets: the TSDB adds empty buckets to the histograms of a chunk when a
// later one has more (recoding), so one may come back with buckets it was
// not pushed with.
func histogramsEqual(a, b *histogram.Histogram) bool {
	return a.Equals(b) || a.Copy().Compact(0).Equals(b.Copy().Compact(0))
}

// floatHistogramsEqual is histogramsEqual for float histograms.
func floatHistogramsEqual(a, b *histogram.FloatHistogram) bool {
	return a.Equals(b) || a.Copy().Compact(0).Equals(b.Copy().Compact(0))
}
