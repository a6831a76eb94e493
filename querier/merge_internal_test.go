package querier

import (
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/stretchr/testify/require"
)

// xorChunk returns a chunk with a sample at each of ts, valued ts.
func xorChunk(t *testing.T, ts ...int64) chunks.Meta {
	t.Helper()
	chk := chunkenc.NewXORChunk()
	app, err := chk.Appender()
	require.NoError(t, err)
	for _, s := range ts {
		app.Append(0, s, float64(s))
	}
	return chunks.Meta{Chunk: chk, MinTime: ts[0], MaxTime: ts[len(ts)-1]}
}

func TestMergedSeries_Iterator(t *testing.T) {
	// Samples at 0, 10, ..., 100 in three chunks, trimmed to [25, 75].
	disjoint := func(t *testing.T) []chunks.Meta {
		return []chunks.Meta{xorChunk(t, 0, 10, 20, 30), xorChunk(t, 40, 50, 60, 70), xorChunk(t, 80, 90, 100)}
	}
	// The same samples from two replicas that differ: each chunk overlaps
	// another, and their union is every sample.
	overlapping := func(t *testing.T) []chunks.Meta {
		return []chunks.Meta{xorChunk(t, 0, 20, 40, 60, 80, 100), xorChunk(t, 0, 10, 30, 50, 70, 90, 100)}
	}
	steps := []struct {
		name  string
		steps []int64 // -1 is Next, others are Seek(t).
		want  []int64 // Timestamp after each step; -1 is ValNone.
	}{
		{name: "next only", steps: []int64{-1, -1, -1, -1, -1, -1}, want: []int64{30, 40, 50, 60, 70, -1}},
		{name: "seek before the range", steps: []int64{0, -1}, want: []int64{30, 40}},
		{name: "seek inside the range", steps: []int64{50, 50, -1}, want: []int64{50, 50, 60}},
		{name: "seek between samples", steps: []int64{41, -1}, want: []int64{50, 60}},
		{name: "seek backwards stays", steps: []int64{60, 30, -1}, want: []int64{60, 60, 70}},
		{name: "seek across a chunk boundary", steps: []int64{35, -1, -1, -1, -1}, want: []int64{40, 50, 60, 70, -1}},
		{name: "seek beyond the range", steps: []int64{76}, want: []int64{-1}},
		{name: "seek to the last sample in range", steps: []int64{70, -1}, want: []int64{70, -1}},
	}
	for _, kind := range []struct {
		name   string
		chunks func(*testing.T) []chunks.Meta
	}{{"disjoint chunks", disjoint}, {"overlapping replicas", overlapping}} {
		for _, tc := range steps {
			t.Run(kind.name+"/"+tc.name, func(t *testing.T) {
				chks := kind.chunks(t)
				s := &mergedSeries{lset: labels.FromStrings("a", "b"), chunks: chks, mint: 25, maxt: 75, trim: true}
				s.overlapping = dedupChunks(&s.chunks, len(chks) > 1)
				// Reuse an iterator of another range, as the engine does.
				old := (&mergedSeries{chunks: chks, overlapping: s.overlapping, mint: 0, maxt: 10, trim: true}).Iterator(nil)
				it := s.Iterator(old)
				if !s.overlapping {
					require.Same(t, old, it)
				}
				for i, step := range tc.steps {
					var vt chunkenc.ValueType
					if step < 0 {
						vt = it.Next()
					} else {
						vt = it.Seek(step)
					}
					if tc.want[i] < 0 {
						require.Equal(t, chunkenc.ValNone, vt, "step %d", i)
						continue
					}
					require.Equal(t, chunkenc.ValFloat, vt, "step %d", i)
					ts, v := it.At()
					require.Equal(t, tc.want[i], ts, "step %d", i)
					require.Equal(t, float64(tc.want[i]), v)
					require.Equal(t, tc.want[i], it.AtT())
				}
				require.NoError(t, it.Err())
			})
		}
	}
}

func TestDedupChunks(t *testing.T) {
	a, b, c := xorChunk(t, 0, 10), xorChunk(t, 20, 30), xorChunk(t, 40, 50)
	differentB := xorChunk(t, 20, 25, 30) // Same time range as b, other samples.
	for _, tc := range []struct {
		name            string
		in              []chunks.Meta
		several         bool
		want            []chunks.Meta
		wantOverlapping bool
	}{
		{name: "one replica", in: []chunks.Meta{a, b, c}, want: []chunks.Meta{a, b, c}},
		{name: "three identical replicas", several: true, in: []chunks.Meta{a, b, c, a, b, c, a, b, c}, want: []chunks.Meta{a, b, c}},
		{name: "a replica missing a chunk", several: true, in: []chunks.Meta{a, b, c, a, c}, want: []chunks.Meta{a, b, c}},
		{name: "replicas that differ", several: true, in: []chunks.Meta{a, b, c, a, differentB, c}, want: []chunks.Meta{a, b, differentB, c}, wantOverlapping: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := append([]chunks.Meta(nil), tc.in...)
			require.Equal(t, tc.wantOverlapping, dedupChunks(&got, tc.several))
			require.Len(t, got, len(tc.want))
			for i := range got {
				require.Equal(t, tc.want[i].MinTime, got[i].MinTime)
				require.Equal(t, tc.want[i].MaxTime, got[i].MaxTime)
				require.Equal(t, tc.want[i].Chunk.Bytes(), got[i].Chunk.Bytes())
			}
		})
	}
}
