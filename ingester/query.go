package ingester

import (
	"context"
	"fmt"
	"strings"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunks"

	censuspb "github.com/census-metrics/census/proto"
)

// Limits of one QueryStream frame. A frame is sent once it holds
// maxFrameSeries series or maxFrameBytes of chunk data, whichever comes
// first: big enough to amortise a message, far below MaxMessageSize.
const (
	maxFrameSeries = 128
	maxFrameBytes  = 1 << 20
)

// QueryStream streams, sorted by labels, every series that matches the
// request's matchers and has chunks overlapping [start_ms, end_ms], with its
// chunks as the TSDB encodes them (XOR for floats, HISTOGRAM and
// FLOAT_HISTOGRAM for native histograms). Chunks are whole, so they may hold
// samples outside the range; the querier trims them. A query that would read
// more than the request's max_series series or max_chunks chunks (the
// querier's --query.max-series and --query.max-chunks) fails with
// ResourceExhausted; a caller that goes away stops the
// reading at the next series.
func (i *Ingester) QueryStream(req *censuspb.QueryStreamRequest, stream censuspb.Ingester_QueryStreamServer) error {
	return i.queryStream(stream.Context(), req, stream)
}

func (i *Ingester) queryStream(ctx context.Context, req *censuspb.QueryStreamRequest, stream censuspb.Ingester_QueryStreamServer) (err error) {
	ms, err := toMatchers(req.GetMatchers())
	if err != nil {
		return err
	}
	db, err := i.acquire()
	if err != nil {
		return err
	}
	defer i.release()
	defer i.reading()()

	q, err := db.ChunkQuerier(req.GetStartMs(), req.GetEndMs())
	if err != nil {
		return fmt.Errorf("open chunk querier: %w", err)
	}
	defer func() {
		if cerr := q.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close chunk querier: %w", cerr)
		}
	}()

	// DisableTrimming keeps chunks whole: trimming would decode and
	// re-encode every chunk that crosses the range's edges, work the
	// querier does anyway when it reads the samples.
	hints := &storage.SelectHints{Start: req.GetStartMs(), End: req.GetEndMs(), DisableTrimming: true}
	set := q.Select(ctx, true, hints, ms...)
	f := frame{stream: stream, metrics: i.metrics, resp: &censuspb.QueryStreamResponse{}}
	var (
		it             chunks.Iterator
		series, chunkN int64
		maxSeries      = req.GetMaxSeries()
		maxChunks      = req.GetMaxChunks()
	)
	for set.Next() {
		// Stop between series once the caller is gone: a big selection
		// must not keep reading the TSDB for nobody.
		if err := ctx.Err(); err != nil {
			return err
		}
		series++
		if maxSeries > 0 && series > maxSeries {
			return &queryLimitError{censuspb.QueryLimitMaxSeries, fmt.Sprintf("the query selects more than %d series (--query.max-series); select fewer series with more specific matchers", maxSeries)}
		}
		s := set.At()
		out := &censuspb.StreamSeries{Labels: censuspb.FromLabels(nil, s.Labels())}
		it = s.Iterator(it)
		for it.Next() {
			chunkN++
			if maxChunks > 0 && chunkN > maxChunks {
				return &queryLimitError{censuspb.QueryLimitMaxChunks, fmt.Sprintf("the query reads more than %d chunks (--query.max-chunks); select fewer series or a shorter time range", maxChunks)}
			}
			out.Chunks = append(out.Chunks, f.chunk(it.At()))
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("read chunks of series %s: %w", s.Labels(), err)
		}
		if err := f.add(out); err != nil {
			return err
		}
	}
	if err := set.Err(); err != nil {
		return fmt.Errorf("select series: %w", err)
	}
	return f.flush()
}

// frame batches series into QueryStreamResponse messages.
type frame struct {
	stream  censuspb.Ingester_QueryStreamServer
	metrics *metrics
	resp    *censuspb.QueryStreamResponse // Fresh per frame: gRPC may hold a sent one.
	// data backs the bytes of every chunk in resp. The chunks the querier
	// hands out alias TSDB memory (head chunks, memory-mapped files) that
	// is only safe to read while the querier is open, and gRPC may read a
	// message after SendMsg returns (stats handlers), so each frame copies
	// its chunks into a buffer of its own, never reused.
	data []byte
}

// chunk converts m to the wire, copying its bytes into the frame's buffer.
// The querier already hands out a copy of the head's open chunk, taken under
// the series lock (v0.316.0 populateWithDelChunkSeriesIterator.next with
// copyHeadChunk, which applies because trimming is off and Census never
// deletes), so the bytes read here are never appended to concurrently.
func (f *frame) chunk(m chunks.Meta) *censuspb.Chunk {
	// When append moves data to a bigger array, the chunks taken so far
	// keep theirs: it is never written again.
	start := len(f.data)
	f.data = append(f.data, m.Chunk.Bytes()...)
	return &censuspb.Chunk{
		MinTimeMs: m.MinTime,
		MaxTimeMs: m.MaxTime,
		// Wire encoding numbers equal chunkenc.Encoding, pinned by a test.
		Encoding: censuspb.Chunk_Encoding(m.Chunk.Encoding()),
		Data:     f.data[start:len(f.data):len(f.data)],
	}
}

// add appends s to the frame and sends the frame once it is full.
func (f *frame) add(s *censuspb.StreamSeries) error {
	f.resp.Series = append(f.resp.Series, s)
	if len(f.resp.Series) >= maxFrameSeries || len(f.data) >= maxFrameBytes {
		return f.flush()
	}
	return nil
}

// flush sends the series gathered so far, if any, and starts a new frame.
func (f *frame) flush() error {
	if len(f.resp.Series) == 0 {
		return nil
	}
	if err := f.stream.Send(f.resp); err != nil {
		return fmt.Errorf("send query stream frame: %w", err)
	}
	f.metrics.streamSeriesSent.Add(float64(len(f.resp.Series)))
	f.resp = &censuspb.QueryStreamResponse{}
	f.data = nil
	return nil
}

// LabelNames returns the sorted label names of the series that match the
// request's matchers in [start_ms, end_ms]; a limit keeps the smallest.
func (i *Ingester) LabelNames(ctx context.Context, req *censuspb.LabelNamesRequest) (*censuspb.LabelNamesResponse, error) {
	names, err := i.labelNames(ctx, req)
	if err != nil {
		return nil, err
	}
	return &censuspb.LabelNamesResponse{Names: names}, nil
}

func (i *Ingester) labelNames(ctx context.Context, req *censuspb.LabelNamesRequest) (_ []string, err error) {
	ms, hints, err := labelArgs(req.GetMatchers(), req.GetLimit())
	if err != nil {
		return nil, err
	}
	q, release, err := i.querier(req.GetStartMs(), req.GetEndMs())
	if err != nil {
		return nil, err
	}
	defer release(&err)

	names, _, err := q.LabelNames(ctx, hints, ms...)
	if err != nil {
		return nil, fmt.Errorf("label names: %w", err)
	}
	return ownedStrings(names, hints.Limit), nil
}

// LabelValues returns the sorted values of the request's label over the
// series that match its matchers in [start_ms, end_ms]; a limit keeps the
// smallest.
func (i *Ingester) LabelValues(ctx context.Context, req *censuspb.LabelValuesRequest) (*censuspb.LabelValuesResponse, error) {
	values, err := i.labelValues(ctx, req)
	if err != nil {
		return nil, err
	}
	return &censuspb.LabelValuesResponse{Values: values}, nil
}

func (i *Ingester) labelValues(ctx context.Context, req *censuspb.LabelValuesRequest) (_ []string, err error) {
	ms, hints, err := labelArgs(req.GetMatchers(), req.GetLimit())
	if err != nil {
		return nil, err
	}
	q, release, err := i.querier(req.GetStartMs(), req.GetEndMs())
	if err != nil {
		return nil, err
	}
	defer release(&err)

	values, _, err := q.LabelValues(ctx, req.GetName(), hints, ms...)
	if err != nil {
		return nil, fmt.Errorf("values of label %q: %w", req.GetName(), err)
	}
	return ownedStrings(values, hints.Limit), nil
}

// Series returns the label sets, sorted, of the series that match the
// request's matchers and have samples in [start_ms, end_ms]; a limit keeps
// the smallest.
func (i *Ingester) Series(ctx context.Context, req *censuspb.SeriesRequest) (*censuspb.SeriesResponse, error) {
	series, err := i.series(ctx, req)
	if err != nil {
		return nil, err
	}
	return &censuspb.SeriesResponse{Series: series}, nil
}

func (i *Ingester) series(ctx context.Context, req *censuspb.SeriesRequest) (_ []*censuspb.SeriesLabels, err error) {
	ms, lh, err := labelArgs(req.GetMatchers(), req.GetLimit())
	if err != nil {
		return nil, err
	}
	q, release, err := i.querier(req.GetStartMs(), req.GetEndMs())
	if err != nil {
		return nil, err
	}
	defer release(&err)

	// Func "series" tells the TSDB to read the index only, no chunks.
	hints := &storage.SelectHints{Start: req.GetStartMs(), End: req.GetEndMs(), Limit: lh.Limit, Func: "series"}
	set := q.Select(ctx, true, hints, ms...)
	var out []*censuspb.SeriesLabels
	maxSeries := int(req.GetMaxSeries())
	for set.Next() {
		if lh.Limit > 0 && len(out) >= lh.Limit {
			break
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if maxSeries > 0 && len(out) >= maxSeries {
			return nil, &queryLimitError{censuspb.QueryLimitMaxSeries, fmt.Sprintf("the request selects more than %d series (--query.max-series); select fewer series with more specific matchers or a limit", maxSeries)}
		}
		// Label sets of selected series are built on the heap (stringlabels),
		// so unlike label names and values they outlive the querier.
		out = append(out, &censuspb.SeriesLabels{Labels: censuspb.FromLabels(nil, set.At().Labels())})
	}
	if err := set.Err(); err != nil {
		return nil, fmt.Errorf("select series: %w", err)
	}
	return out, nil
}

// querier opens a TSDB querier over [mint, maxt] and holds the TSDB open
// for it. release closes both and records a close error in *err if it is nil.
func (i *Ingester) querier(mint, maxt int64) (storage.Querier, func(err *error), error) {
	db, err := i.acquire()
	if err != nil {
		return nil, nil, err
	}
	q, err := db.Querier(mint, maxt)
	if err != nil {
		i.release()
		return nil, nil, fmt.Errorf("open querier: %w", err)
	}
	done := i.reading()
	release := func(err *error) {
		if cerr := q.Close(); cerr != nil && *err == nil {
			*err = fmt.Errorf("close querier: %w", cerr)
		}
		done()
		i.release()
	}
	return q, release, nil
}

// reading counts a read of the TSDB in flight until the returned function
// is called: while any is, pushes append on fewer cores (appendPush).
func (i *Ingester) reading() (done func()) {
	i.queries.Add(1)
	return func() { i.queries.Add(-1) }
}

// labelArgs converts the matchers and limit shared by the label and series
// requests. The hints ask for the smallest values under the limit, so every
// replica of a series answers the same.
func labelArgs(wire []*censuspb.LabelMatcher, limit int64) ([]*labels.Matcher, *storage.LabelHints, error) {
	if limit < 0 {
		return nil, nil, fmt.Errorf("%w: %d is negative", errInvalidLimit, limit)
	}
	ms, err := toMatchers(wire)
	if err != nil {
		return nil, nil, err
	}
	return ms, &storage.LabelHints{Limit: int(limit), LimitSmallest: limit > 0}, nil
}

func toMatchers(wire []*censuspb.LabelMatcher) ([]*labels.Matcher, error) {
	ms, err := censuspb.ToMatchers(wire)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errInvalidMatchers, err)
	}
	return ms, nil
}

// ownedStrings copies up to limit (0: all) of ss, because the querier's
// strings may point into memory-mapped index files that are unmapped once
// it is closed, before the response is marshalled.
func ownedStrings(ss []string, limit int) []string {
	if limit > 0 && len(ss) > limit {
		ss = ss[:limit]
	}
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.Clone(s)
	}
	return out
}
