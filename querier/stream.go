package querier

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"
	"google.golang.org/grpc"

	"github.com/census-metrics/census/ring"

	censuspb "github.com/census-metrics/census/proto"
)

// ingesterStream is one ingester's QueryStream as a storage.ChunkSeriesSet.
// It receives a frame only when the series of the previous one are used up
// and leaves the chunks encoded, so a query holds about one frame per
// ingester plus the chunks of the series the engine keeps.
//
// An error does not surface through Err: the stream ends and the failure is
// recorded in fails, which decides for the whole fan-out whether the
// replicas cover it. Like every SeriesSet it is used by one goroutine.
type ingesterStream struct {
	inst       ring.InstanceDesc
	ctx        context.Context // The stream's; done once the querier closes.
	fails      *failures
	metrics    *metrics
	logger     *slog.Logger
	begin      time.Time
	mint, maxt int64 // Chunks entirely outside are dropped.

	stream grpc.ServerStreamingClient[censuspb.QueryStreamResponse]
	done   bool
	batch  []*censuspb.StreamSeries

	builder labels.ScratchBuilder
	last    labels.Labels // The previous series, to check the order.
	started bool
	cur     *storage.ChunkSeriesEntry
}

// openStream starts inst's QueryStream and receives its first frame, so that
// an ingester that is down is known before the streams are merged.
func (q *Queryable) openStream(ctx context.Context, inst ring.InstanceDesc, req *censuspb.QueryStreamRequest, fails *failures) *ingesterStream {
	s := &ingesterStream{
		inst:    inst,
		ctx:     ctx,
		fails:   fails,
		metrics: q.metrics,
		logger:  q.logger,
		begin:   time.Now(),
		mint:    req.GetStartMs(),
		maxt:    req.GetEndMs(),
	}
	c, err := q.clients.Get(inst.Addr)
	if err != nil {
		s.finish(err)
		return s
	}
	if s.stream, err = c.QueryStream(ctx, req); err != nil {
		s.finish(err)
		return s
	}
	s.recv()
	return s
}

// recv receives the next frame; false means the stream ended.
func (s *ingesterStream) recv() bool {
	resp, err := s.stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = nil
		}
		s.finish(err)
		return false
	}
	s.batch = resp.GetSeries()
	return true
}

// finish ends the stream, recording err, if any, as the ingester's failure.
func (s *ingesterStream) finish(err error) {
	s.done = true
	s.batch = nil
	s.metrics.requestDuration.WithLabelValues(opQueryStream).Observe(time.Since(s.begin).Seconds())
	if err == nil {
		return
	}
	// A canceled stream is the caller's doing, not the ingester's.
	if s.ctx.Err() == nil {
		s.metrics.requestErrors.WithLabelValues(opQueryStream).Inc()
	}
	s.logger.Debug("Ingester request failed", "operation", opQueryStream, "ingester", s.inst.ID, "addr", s.inst.Addr, "err", err)
	s.fails.add(s.inst, err)
}

// Next implements storage.ChunkSeriesSet.
func (s *ingesterStream) Next() bool {
	for {
		for len(s.batch) == 0 {
			if s.done || !s.recv() {
				return false
			}
		}
		ss := s.batch[0]
		s.batch[0] = nil // The frame's other series need not outlive it.
		s.batch = s.batch[1:]
		ok, err := s.decode(ss)
		if err != nil {
			s.finish(err)
			return false
		}
		if ok {
			return true
		}
	}
}

// decode makes ss the current series; false means none of its chunks
// overlap the range, so it is skipped as the TSDB would skip it.
func (s *ingesterStream) decode(ss *censuspb.StreamSeries) (bool, error) {
	lset, err := censuspb.ToLabels(&s.builder, ss.GetLabels())
	if err != nil {
		return false, fmt.Errorf("decode stream: %w", err)
	}
	// The merge relies on each ingester's order; a stream out of order would
	// silently split series, so it is an error.
	if s.started && labels.Compare(s.last, lset) >= 0 {
		return false, fmt.Errorf("stream out of order: series %s after %s", lset, s.last)
	}
	s.started, s.last = true, lset
	s.metrics.seriesFetched.Inc()

	metas := make([]chunks.Meta, 0, len(ss.GetChunks()))
	for _, c := range ss.GetChunks() {
		if c.GetMaxTimeMs() < s.mint || c.GetMinTimeMs() > s.maxt {
			continue
		}
		// FromData keeps the bytes; samples are decoded only when iterated.
		chk, err := chunkenc.FromData(chunkenc.Encoding(c.GetEncoding()), c.GetData())
		if err != nil {
			return false, fmt.Errorf("chunk of series %s: %w", lset, err)
		}
		metas = append(metas, chunks.Meta{Chunk: chk, MinTime: c.GetMinTimeMs(), MaxTime: c.GetMaxTimeMs()})
	}
	if len(metas) == 0 {
		return false, nil
	}
	s.cur = &storage.ChunkSeriesEntry{
		Lset: lset,
		ChunkIteratorFn: func(it chunks.Iterator) chunks.Iterator {
			if r, ok := it.(interface{ Reset(...chunks.Meta) }); ok {
				r.Reset(metas...)
				return it
			}
			return storage.NewListChunkSeriesIterator(metas...)
		},
	}
	return true, nil
}

// At implements storage.ChunkSeriesSet.
func (s *ingesterStream) At() storage.ChunkSeries { return s.cur }

// Err implements storage.ChunkSeriesSet; always nil, see the type's doc.
func (*ingesterStream) Err() error { return nil }

// Warnings implements storage.ChunkSeriesSet.
func (*ingesterStream) Warnings() annotations.Annotations { return nil }

// trimmedSeriesSet limits the samples of every series to [mint, maxt]: the
// ingesters send whole chunks, which may reach beyond the range.
type trimmedSeriesSet struct {
	storage.SeriesSet
	mint, maxt int64
}

// At implements storage.SeriesSet.
func (s *trimmedSeriesSet) At() storage.Series {
	return &trimmedSeries{Series: s.SeriesSet.At(), mint: s.mint, maxt: s.maxt}
}

type trimmedSeries struct {
	storage.Series
	mint, maxt int64
}

// Iterator implements storage.Series.
func (s *trimmedSeries) Iterator(it chunkenc.Iterator) chunkenc.Iterator {
	if t, ok := it.(*trimmingIterator); ok {
		t.Iterator = s.Series.Iterator(t.Iterator)
		t.mint, t.maxt, t.started = s.mint, s.maxt, false
		return t
	}
	return &trimmingIterator{Iterator: s.Series.Iterator(it), mint: s.mint, maxt: s.maxt}
}

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
