package querier

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"google.golang.org/grpc"

	"github.com/census-metrics/census/ring"

	censuspb "github.com/census-metrics/census/proto"
)

// ingesterStream is one ingester's QueryStream, read one series at a time.
// It receives a frame only when the series of the previous one are used up
// and leaves the chunks encoded, so a query holds about one frame per
// ingester plus the chunks of the series the engine keeps.
//
// A failure of the ingester ends the stream and is recorded in fails, which
// decides for the whole fan-out whether the replicas cover it. A breached
// query limit ends it too and is recorded in its streams. Like every
// SeriesSet it is used by one goroutine.
type ingesterStream struct {
	inst       ring.InstanceDesc
	ctx        context.Context // The stream's; done once the querier closes.
	st         *streams
	metrics    *metrics
	logger     *slog.Logger
	begin      time.Time
	mint, maxt int64 // Chunks entirely outside are dropped.

	stream grpc.ServerStreamingClient[censuspb.QueryStreamResponse]
	done   bool
	batch  []*censuspb.StreamSeries

	builder labels.ScratchBuilder
	started bool

	// The current series: its labels as they came on the wire, decoded
	// only when asked (replicas of a series have the same, and the merge
	// decodes one), and its chunks that overlap [mint, maxt], oldest first.
	// The chunks are fresh for every series, so the merge may keep them.
	wire    []*censuspb.LabelPair
	lset    labels.Labels
	decoded bool
	chunks  []chunks.Meta
}

// openStream starts inst's QueryStream and receives its first frame, so that
// an ingester that is down is known before the streams are merged.
func (q *Queryable) openStream(ctx context.Context, inst ring.InstanceDesc, req *censuspb.QueryStreamRequest, st *streams) *ingesterStream {
	s := &ingesterStream{
		inst:    inst,
		ctx:     ctx,
		st:      st,
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
	if s.done {
		return
	}
	s.done = true
	s.batch = nil
	s.metrics.requestDuration.WithLabelValues(opQueryStream).Observe(time.Since(s.begin).Seconds())
	if err == nil {
		return
	}
	if s.st.stopped() {
		// The query stopped these streams itself (a breached limit).
		return
	}
	if cause := context.Cause(s.ctx); errors.Is(cause, errHedged) {
		err = cause
	}
	// A canceled stream is the caller's doing, not the ingester's; a
	// hedged one is the ingester's.
	if s.ctx.Err() == nil || errors.Is(err, errHedged) {
		s.metrics.requestErrors.WithLabelValues(opQueryStream).Inc()
	}
	s.logger.Debug("Ingester request failed", "operation", opQueryStream, "ingester", s.inst.ID, "addr", s.inst.Addr, "err", err)
	s.st.fails.add(s.inst, err)
}

// next moves to the next series that has chunks in the range; false means
// the stream ended, by its end or by a failure.
func (s *ingesterStream) next() bool {
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
	// The merge relies on each ingester's order; a stream out of order would
	// silently split series, so it is an error.
	if s.started && compareWireLabels(s.wire, ss.GetLabels()) >= 0 {
		return false, fmt.Errorf("stream out of order: series %s after %s", censuspb.FormatLabelPairs(ss.GetLabels()), censuspb.FormatLabelPairs(s.wire))
	}
	s.started, s.wire, s.decoded = true, ss.GetLabels(), false
	s.metrics.seriesFetched.Inc()

	wire := ss.GetChunks()
	s.metrics.chunksFetched.Add(float64(len(wire)))
	if err := s.st.req.addChunks(int64(len(wire))); err != nil {
		s.st.stop(err)
		return false, err
	}
	s.chunks = nil
	for _, c := range wire {
		if c.GetMaxTimeMs() < s.mint || c.GetMinTimeMs() > s.maxt {
			continue
		}
		// FromData keeps the bytes; samples are decoded only when iterated.
		chk, err := chunkenc.FromData(chunkenc.Encoding(c.GetEncoding()), c.GetData())
		if err != nil {
			return false, fmt.Errorf("chunk of series %s: %w", censuspb.FormatLabelPairs(s.wire), err)
		}
		if s.chunks == nil {
			s.chunks = make([]chunks.Meta, 0, len(wire))
		}
		s.chunks = append(s.chunks, chunks.Meta{Chunk: chk, MinTime: c.GetMinTimeMs(), MaxTime: c.GetMaxTimeMs()})
	}
	return len(s.chunks) > 0, nil
}

// labels returns the current series' labels, decoding and validating them
// on first use.
func (s *ingesterStream) labels() (labels.Labels, error) {
	if !s.decoded {
		lset, err := censuspb.ToLabels(&s.builder, s.wire)
		if err != nil {
			return labels.EmptyLabels(), fmt.Errorf("decode stream: %w", err)
		}
		s.lset, s.decoded = lset, true
	}
	return s.lset, nil
}

// compareWireLabels orders two label sets on the wire as labels.Compare
// orders them decoded: pair by pair, name before value, a prefix first.
func compareWireLabels(a, b []*censuspb.LabelPair) int {
	for i := range min(len(a), len(b)) {
		if c := bytes.Compare(a[i].GetName(), b[i].GetName()); c != 0 {
			return c
		}
		if c := bytes.Compare(a[i].GetValue(), b[i].GetValue()); c != 0 {
			return c
		}
	}
	return cmp.Compare(len(a), len(b))
}
