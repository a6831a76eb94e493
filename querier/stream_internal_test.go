package querier

import (
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/stretchr/testify/require"
)

func TestTrimmingIterator(t *testing.T) {
	// Samples at 0, 10, ..., 100, trimmed to [25, 75].
	chk := chunkenc.NewXORChunk()
	app, err := chk.Appender()
	require.NoError(t, err)
	for ts := int64(0); ts <= 100; ts += 10 {
		app.Append(0, ts, float64(ts))
	}
	s := &trimmedSeries{
		Series: &storage.SeriesEntry{Lset: labels.FromStrings("a", "b"), SampleIteratorFn: chk.Iterator},
		mint:   25,
		maxt:   75,
	}

	for _, tc := range []struct {
		name  string
		steps []int64 // -1 is Next, others are Seek(t).
		want  []int64 // Timestamp after each step; -1 is ValNone.
	}{
		{name: "next only", steps: []int64{-1, -1, -1, -1, -1, -1}, want: []int64{30, 40, 50, 60, 70, -1}},
		{name: "seek before the range", steps: []int64{0, -1}, want: []int64{30, 40}},
		{name: "seek inside the range", steps: []int64{50, 50, -1}, want: []int64{50, 50, 60}},
		{name: "seek between samples", steps: []int64{41, -1}, want: []int64{50, 60}},
		{name: "seek beyond the range", steps: []int64{76}, want: []int64{-1}},
		{name: "seek to the last sample in range", steps: []int64{70, -1}, want: []int64{70, -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Reuse an iterator of another range, as the engine does.
			old := (&trimmedSeries{Series: s.Series, mint: 0, maxt: 10}).Iterator(nil)
			it := s.Iterator(old)
			require.Same(t, old, it)
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
			}
			require.NoError(t, it.Err())
		})
	}
}
