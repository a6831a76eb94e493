package distributor

import (
	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/prometheus/model/labels"
)

// labelSeparator ends every label name and value in the hashed byte stream.
// 0xff never occurs in valid UTF-8, so no two label sets share a stream.
const labelSeparator = 0xff

// SeriesHash is the shard key of a series: xxhash64 over each label's name
// and value, in sorted label order, each followed by 0xff.
//
// It decides which ingesters own a series: changing it re-shards every
// cluster, so TestSeriesHash pins its values. It is written here rather than
// taken from labels.Labels.Hash, whose value depends on the labels build tag.
func SeriesHash(ls labels.Labels) uint64 {
	// One Sum64 over the whole stream costs a third less than writing
	// each string to an xxhash.Digest; the stack buffer holds a typical
	// series.
	var buf [1024]byte
	b := buf[:0]
	ls.Range(func(l labels.Label) {
		b = append(b, l.Name...)
		b = append(b, labelSeparator)
		b = append(b, l.Value...)
		b = append(b, labelSeparator)
	})
	return xxhash.Sum64(b)
}

// Token folds a series hash into a position on the ring, keeping entropy
// from both halves.
func Token(hash uint64) uint32 {
	return uint32(hash) ^ uint32(hash>>32)
}
