package querier

import (
	"bytes"
	"cmp"
	"slices"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"
)

// replicaMerge merges the streams of the ingesters, each sorted by labels,
// into one sorted stream of series, each series once. It holds one series
// per stream at a time, and merges the replicas of a series as soon as all
// of them arrived: chunks that are byte for byte the same on several
// replicas (the common case, since every replica received the same pushes)
// are kept once, so the engine holds a single copy. Only when replicas
// really differ (one missed pushes, or restarted) are the remaining
// overlapping chunks merged sample by sample.
type replicaMerge struct {
	st    *streams
	live  []*ingesterStream // Streams with a current series; set on first use.
	limit int               // Most series to return; 0 means no limit.
	n     int               // Series returned so far.
	mint  int64             // Samples outside [mint, maxt] are hidden,
	maxt  int64             // as the TSDB trims them.
	trim  bool

	begun bool
	err   error
	cur   mergedSeries
	from  []int // Indexes into live of the streams that hold cur.
}

func newReplicaMerge(st *streams, limit int, mint, maxt int64, trim bool) *replicaMerge {
	return &replicaMerge{st: st, limit: limit, mint: mint, maxt: maxt, trim: trim}
}

// next moves to the next merged series.
func (m *replicaMerge) next() bool {
	if m.err != nil {
		return false
	}
	if !m.begun {
		// Waits until every stream has its first frame or failed.
		m.begun = true
		for _, s := range m.st.live() {
			if s.next() {
				m.live = append(m.live, s)
			}
		}
	} else {
		// Advance the streams that held the previous series; drop those that
		// ended.
		kept := m.live[:0]
		for i, s := range m.live {
			if slices.Contains(m.from, i) && !s.next() {
				continue
			}
			kept = append(kept, s)
		}
		clear(m.live[len(kept):])
		m.live = kept
	}
	if err := m.st.err(); err != nil {
		m.err = err
		return false
	}
	if len(m.live) == 0 || (m.limit > 0 && m.n >= m.limit) {
		return false
	}

	// The smallest series of the streams; linear, since there are few
	// ingesters and most series are on all of them.
	m.from = m.from[:0]
	for i, s := range m.live {
		if len(m.from) == 0 {
			m.from = append(m.from, i)
			continue
		}
		switch c := compareWireLabels(s.wire, m.live[m.from[0]].wire); {
		case c < 0:
			m.from = append(m.from[:0], i)
		case c == 0:
			m.from = append(m.from, i)
		}
	}

	first := m.live[m.from[0]]
	lset, err := first.labels()
	if err != nil {
		// The ingester sent labels it cannot have stored: it is broken, and
		// the read fails rather than guess.
		m.err = &IngesterError{Instance: first.inst, Err: err}
		return false
	}
	m.cur = mergedSeries{lset: lset, chunks: first.chunks, mint: m.mint, maxt: m.maxt, trim: m.trim}
	for _, i := range m.from[1:] {
		m.cur.chunks = append(m.cur.chunks, m.live[i].chunks...)
	}
	m.cur.overlapping = dedupChunks(&m.cur.chunks, len(m.from) > 1)
	for _, i := range m.from {
		m.live[i].chunks = nil // The merged series owns them now.
	}
	m.n++
	if err := m.st.req.addSeries(1); err != nil {
		m.st.stop(err)
		m.err = err
		return false
	}
	return true
}

// dedupChunks sorts *chks by time and removes the chunks that are identical
// to another, which replicas usually send. It reports whether the chunks
// left overlap in time, so that their samples must be merged. several says
// that *chks came from several replicas; one replica's chunks are already
// in order and distinct.
func dedupChunks(chks *[]chunks.Meta, several bool) (overlapping bool) {
	c := *chks
	if several {
		slices.SortFunc(c, func(a, b chunks.Meta) int {
			return cmp.Or(
				cmp.Compare(a.MinTime, b.MinTime),
				cmp.Compare(a.MaxTime, b.MaxTime),
				cmp.Compare(a.Chunk.Encoding(), b.Chunk.Encoding()),
				bytes.Compare(a.Chunk.Bytes(), b.Chunk.Bytes()),
			)
		})
		c = slices.CompactFunc(c, func(a, b chunks.Meta) bool {
			return a.MinTime == b.MinTime && a.MaxTime == b.MaxTime &&
				a.Chunk.Encoding() == b.Chunk.Encoding() && bytes.Equal(a.Chunk.Bytes(), b.Chunk.Bytes())
		})
		*chks = c
	}
	for i := 1; i < len(c); i++ {
		if c[i].MinTime <= c[i-1].MaxTime {
			return true
		}
	}
	return false
}

// mergedSeries is one series with the deduplicated chunks of its replicas.
// As a storage.Series it iterates the samples in [mint, maxt] when trim is
// set; as a storage.ChunkSeries it returns the chunks as they are.
type mergedSeries struct {
	lset        labels.Labels
	chunks      []chunks.Meta // Sorted by MinTime.
	overlapping bool
	mint, maxt  int64
	trim        bool
}

// Labels implements storage.Series.
func (s *mergedSeries) Labels() labels.Labels { return s.lset }

// Iterator implements storage.Series. Chunks that do not overlap are read
// one after another, as the TSDB reads a series; overlapping ones (replicas
// that differ) are merged sample by sample, each timestamp once.
func (s *mergedSeries) Iterator(it chunkenc.Iterator) chunkenc.Iterator {
	mint, maxt := s.mint, s.maxt
	if !s.trim {
		mint, maxt = minTime, maxTime
	}
	if !s.overlapping {
		if cl, ok := it.(*chunkListIterator); ok {
			cl.reset(s.chunks, mint, maxt)
			return cl
		}
		cl := &chunkListIterator{}
		cl.reset(s.chunks, mint, maxt)
		return cl
	}
	its := make([]chunkenc.Iterator, len(s.chunks))
	for i, c := range s.chunks {
		its[i] = c.Chunk.Iterator(nil)
	}
	return &trimmingIterator{Iterator: storage.ChainSampleIteratorFromIterators(nil, its), mint: mint, maxt: maxt}
}

// chunkSeries returns s as a storage.ChunkSeries: its chunks as they are,
// or, where replicas differ, re-encoded from their merged samples.
func (s *mergedSeries) chunkSeries() storage.ChunkSeries {
	if !s.overlapping {
		chks := s.chunks
		return &storage.ChunkSeriesEntry{
			Lset: s.lset,
			ChunkIteratorFn: func(it chunks.Iterator) chunks.Iterator {
				if r, ok := it.(interface{ Reset(...chunks.Meta) }); ok {
					r.Reset(chks...)
					return it
				}
				return storage.NewListChunkSeriesIterator(chks...)
			},
		}
	}
	parts := make([]storage.ChunkSeries, len(s.chunks))
	for i, c := range s.chunks {
		parts[i] = &storage.ChunkSeriesEntry{
			Lset:            s.lset,
			ChunkIteratorFn: func(chunks.Iterator) chunks.Iterator { return storage.NewListChunkSeriesIterator(c) },
		}
	}
	return storage.NewCompactingChunkSeriesMerger(storage.ChainedSeriesMerge)(parts...)
}

const (
	minTime = int64(-1 << 63)
	maxTime = int64(1<<63 - 1)
)

// chunkListIterator iterates the samples in [mint, maxt] of chunks that are
// sorted and do not overlap, decoding one chunk at a time.
type chunkListIterator struct {
	chunks     []chunks.Meta
	mint, maxt int64

	i   int               // The chunk cur iterates; -1 before the first.
	cur chunkenc.Iterator // Reused from chunk to chunk.
	vt  chunkenc.ValueType
	// started is set by the first Next or Seek; done once the samples in
	// range are exhausted.
	started, done bool
	err           error
}

func (it *chunkListIterator) reset(chks []chunks.Meta, mint, maxt millis) {
	*it = chunkListIterator{chunks: chks, mint: mint, maxt: maxt, i: -1, cur: it.cur}
}

// open makes chunk i the current one; false means there is none in range.
func (it *chunkListIterator) open(i int) bool {
	if i >= len(it.chunks) || it.chunks[i].MinTime > it.maxt {
		it.stop()
		return false
	}
	it.i = i
	it.cur = it.chunks[i].Chunk.Iterator(it.cur)
	return true
}

func (it *chunkListIterator) stop() chunkenc.ValueType {
	it.done, it.vt = true, chunkenc.ValNone
	return chunkenc.ValNone
}

// settle ends the iteration at a sample beyond maxt, or records vt.
func (it *chunkListIterator) settle(vt chunkenc.ValueType) chunkenc.ValueType {
	if it.cur.AtT() > it.maxt {
		return it.stop()
	}
	it.vt = vt
	return vt
}

// Next implements chunkenc.Iterator.
func (it *chunkListIterator) Next() chunkenc.ValueType {
	if it.done {
		return chunkenc.ValNone
	}
	if !it.started {
		return it.Seek(it.mint)
	}
	vt := it.cur.Next()
	for vt == chunkenc.ValNone {
		if err := it.cur.Err(); err != nil {
			it.err = err
			return it.stop()
		}
		if !it.open(it.i + 1) {
			return chunkenc.ValNone
		}
		vt = it.cur.Next()
	}
	return it.settle(vt)
}

// Seek implements chunkenc.Iterator.
func (it *chunkListIterator) Seek(t millis) chunkenc.ValueType {
	if it.done {
		return chunkenc.ValNone
	}
	t = max(t, it.mint)
	if it.vt != chunkenc.ValNone && it.cur.AtT() >= t {
		return it.vt
	}
	it.started = true
	// Skip the chunks that end before t without decoding them.
	i := max(it.i, 0)
	for i < len(it.chunks) && it.chunks[i].MaxTime < t {
		i++
	}
	if i != it.i && !it.open(i) {
		return chunkenc.ValNone
	}
	vt := it.cur.Seek(t)
	for vt == chunkenc.ValNone {
		if err := it.cur.Err(); err != nil {
			it.err = err
			return it.stop()
		}
		if !it.open(it.i + 1) {
			return chunkenc.ValNone
		}
		vt = it.cur.Seek(t)
	}
	return it.settle(vt)
}

// At implements chunkenc.Iterator.
func (it *chunkListIterator) At() (int64, float64) { return it.cur.At() }

// AtHistogram implements chunkenc.Iterator.
func (it *chunkListIterator) AtHistogram(h *histogram.Histogram) (int64, *histogram.Histogram) {
	return it.cur.AtHistogram(h)
}

// AtFloatHistogram implements chunkenc.Iterator.
func (it *chunkListIterator) AtFloatHistogram(fh *histogram.FloatHistogram) (int64, *histogram.FloatHistogram) {
	return it.cur.AtFloatHistogram(fh)
}

// AtT implements chunkenc.Iterator.
func (it *chunkListIterator) AtT() int64 { return it.cur.AtT() }

// AtST implements chunkenc.Iterator.
func (it *chunkListIterator) AtST() int64 { return it.cur.AtST() }

// Err implements chunkenc.Iterator.
func (it *chunkListIterator) Err() error { return it.err }

// trimmingIterator hides the samples of the iterator it wraps that lie
// outside [mint, maxt].
type trimmingIterator struct {
	chunkenc.Iterator
	mint, maxt int64
	started    bool
}

// Next implements chunkenc.Iterator.
func (it *trimmingIterator) Next() chunkenc.ValueType {
	if !it.started {
		return it.Seek(it.mint)
	}
	return it.inRange(it.Iterator.Next())
}

// Seek implements chunkenc.Iterator.
func (it *trimmingIterator) Seek(t millis) chunkenc.ValueType {
	it.started = true
	return it.inRange(it.Iterator.Seek(max(t, it.mint)))
}

// millis is int64 under another name, only so that go vet's stdmethods
// check, which takes every Seek(int64) for a broken io.Seeker, accepts
// chunkenc.Iterator's Seek.
type millis = int64

func (it *trimmingIterator) inRange(vt chunkenc.ValueType) chunkenc.ValueType {
	if vt == chunkenc.ValNone || it.Iterator.AtT() > it.maxt {
		return chunkenc.ValNone
	}
	return vt
}

// mergedSeriesSet is a replicaMerge as a storage.SeriesSet.
type mergedSeriesSet struct{ m *replicaMerge }

// Next implements storage.SeriesSet.
func (s mergedSeriesSet) Next() bool { return s.m.next() }

// At implements storage.SeriesSet.
func (s mergedSeriesSet) At() storage.Series {
	cur := s.m.cur
	return &cur
}

// Err implements storage.SeriesSet.
func (s mergedSeriesSet) Err() error { return s.m.errOrFailure() }

// Warnings implements storage.SeriesSet.
func (s mergedSeriesSet) Warnings() annotations.Annotations { return s.m.st.fails.warnings() }

// mergedChunkSeriesSet is a replicaMerge as a storage.ChunkSeriesSet.
type mergedChunkSeriesSet struct{ m *replicaMerge }

// Next implements storage.ChunkSeriesSet.
func (s mergedChunkSeriesSet) Next() bool { return s.m.next() }

// At implements storage.ChunkSeriesSet.
func (s mergedChunkSeriesSet) At() storage.ChunkSeries { return s.m.cur.chunkSeries() }

// Err implements storage.ChunkSeriesSet.
func (s mergedChunkSeriesSet) Err() error { return s.m.errOrFailure() }

// Warnings implements storage.ChunkSeriesSet.
func (s mergedChunkSeriesSet) Warnings() annotations.Annotations { return s.m.st.fails.warnings() }

// errOrFailure is the error of the merge: a breached limit, or more failed
// ingesters than the replicas cover.
func (m *replicaMerge) errOrFailure() error {
	if m.err != nil {
		return m.err
	}
	if !m.begun {
		m.st.live() // Wait for the streams, so that failures to open count.
	}
	return m.st.err()
}
