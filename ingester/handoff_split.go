package ingester

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/index"
)

// Target is an ingester that a decommissioning ingester hands series to.
type Target struct {
	ID   string
	Addr string
}

// OwnersFunc appends to buf[:0] the ingesters that are to hold the series
// ls once the leaving ingesters are gone: its replicas in the ring among
// the instances that are not leaving.
type OwnersFunc func(ls labels.Labels, buf []Target) ([]Target, error)

// errNoOwners is a series for which the ring lists no ingester to take it.
var errNoOwners = errors.New("the ring lists no ingester that is not leaving to take the series")

// targetSeries are the series of one block that one target is to own.
type targetSeries struct {
	target Target
	refs   []storage.SeriesRef // Ascending, as the block's postings.
}

// planBlock returns, by target ID, the series of b each target is to own,
// asking owners for every series.
func planBlock(ctx context.Context, b *tsdb.Block, owners OwnersFunc) (map[string]*targetSeries, error) {
	ir, err := b.Index()
	if err != nil {
		return nil, err
	}
	defer ir.Close()
	name, value := index.AllPostingsKey()
	p, err := ir.Postings(ctx, name, value)
	if err != nil {
		return nil, err
	}
	plan := map[string]*targetSeries{}
	var (
		builder labels.ScratchBuilder
		buf     []Target
	)
	for p.Next() {
		ref := p.At()
		if err := ir.Series(ref, &builder, nil); err != nil {
			return nil, fmt.Errorf("read series %d of block %s: %w", ref, b.Meta().ULID, err)
		}
		ls := builder.Labels()
		if buf, err = owners(ls, buf[:0]); err != nil {
			return nil, err
		}
		if len(buf) == 0 {
			return nil, fmt.Errorf("%w: %s", errNoOwners, ls)
		}
		for _, t := range buf {
			ts := plan[t.ID]
			if ts == nil {
				ts = &targetSeries{target: t}
				plan[t.ID] = ts
			}
			ts.refs = append(ts.refs, ref)
		}
	}
	return plan, p.Err()
}

// splitter writes the part of a block that one target is to own as a block
// of its own, copying the chunks as they are: nothing is decoded or
// re-encoded, and the new block's index holds only those series.
type splitter struct {
	compactor *tsdb.LeveledCompactor
}

func newSplitter(ctx context.Context, logger *slog.Logger) (*splitter, error) {
	// The ranges matter only to Plan, which a split never calls.
	c, err := tsdb.NewLeveledCompactorWithOptions(ctx, nil, logger, []int64{(2 * time.Hour).Milliseconds()}, chunkenc.NewPool(), tsdb.LeveledCompactorOptions{})
	if err != nil {
		return nil, err
	}
	return &splitter{compactor: c}, nil
}

// split writes, into a new block under dest, the series refs of the block
// b (whose directory is b.Dir()). The new block is marked as coming from
// out-of-order samples, so that on its receiver it does not raise the
// head's lowest accepted timestamp to its end (the TSDB lets in-order
// samples only follow the newest in-order block), and it names no parent:
// a receiver deletes any block named as a parent of one it loads. It
// returns the new block's directory, or "" when the series have no
// samples.
func (s *splitter) split(b *tsdb.Block, refs []storage.SeriesRef, dest string) (string, ulid.ULID, error) {
	uids, err := s.compactor.CompactWithBlockPopulator(dest, []string{b.Dir()}, []*tsdb.Block{b}, seriesPopulator{refs: refs})
	if err != nil {
		return "", ulid.ULID{}, fmt.Errorf("split block %s: %w", b.Meta().ULID, err)
	}
	if len(uids) == 0 {
		return "", ulid.ULID{}, nil
	}
	dir := filepath.Join(dest, uids[0].String())
	meta, err := readMeta(dir)
	if err != nil {
		return "", ulid.ULID{}, err
	}
	meta.Compaction.Parents = nil
	meta.Compaction.SetOutOfOrder()
	if err := writeMeta(dir, meta); err != nil {
		return "", ulid.ULID{}, fmt.Errorf("write meta.json of split block %s: %w", uids[0], err)
	}
	return dir, uids[0], nil
}

// seriesPopulator populates a block with the given series of its one
// source block, by handing the TSDB's own populator their postings instead
// of all of them.
type seriesPopulator struct {
	refs []storage.SeriesRef
}

func (p seriesPopulator) PopulateBlock(ctx context.Context, metrics *tsdb.CompactorMetrics, logger *slog.Logger, pool chunkenc.Pool, merge storage.VerticalChunkSeriesMergeFunc, blocks []tsdb.BlockReader, meta *tsdb.BlockMeta, indexw tsdb.IndexWriter, chunkw tsdb.ChunkWriter, _ tsdb.IndexReaderPostingsFunc) error {
	refs := slices.Clone(p.refs) // The postings iterator may be read more than once.
	return tsdb.DefaultBlockPopulator{}.PopulateBlock(ctx, metrics, logger, pool, merge, blocks, meta, indexw, chunkw,
		func(context.Context, tsdb.IndexReader) index.Postings { return index.NewListPostings(refs) })
}
