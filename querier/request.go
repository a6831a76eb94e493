package querier

import (
	"context"
	"fmt"
	"sync/atomic"

	censuspb "github.com/census-metrics/census/proto"
)

// LimitError is the failure of a query that fetched more from the ingesters
// than a per-query limit allows. The HTTP API answers it with 422 and
// Prometheus' "execution" error type, as it answers a query over the
// engine's sample limit.
type LimitError struct {
	// Flag is the flag that sets the limit, --query.max-series or
	// --query.max-chunks.
	Flag  string
	Limit int
	// What is counted: "series" or "chunks".
	What string
}

// Error names the limit and its flag, so the user knows what to narrow or
// whom to ask.
func (e *LimitError) Error() string {
	return fmt.Sprintf("the query fetched more than %d %s from the ingesters, the limit set by %s=%d; select fewer series or a shorter range", e.Limit, e.What, e.Flag, e.Limit)
}

// request is what the HTTP API knows of one request and the reads of its
// query share: the per-query limits and counters, and whether the client
// accepts a partial response. It travels in the context, so every Select,
// label read and exemplar read of the request finds it, and reads without
// it (the PromQL test suite, other callers of the Queryable) have no limits.
type request struct {
	partialResponse bool
	maxSeries       int64 // 0: no limit
	maxChunks       int64 // 0: no limit

	series atomic.Int64 // Distinct series the merges returned, summed over Selects.
	chunks atomic.Int64 // Chunks received, every replica's copy.
	// selects counts the Selects that reached the ingesters, so label-only
	// requests do not count as queries that fetched nothing.
	selects atomic.Int64
	// noIngesters is set once a read of the request failed with
	// ErrNoIngesters, for the endpoints whose handler answers the error
	// without the error's type (remote read).
	noIngesters atomic.Bool
}

type requestKey struct{}

func withRequest(ctx context.Context, r *request) context.Context {
	return context.WithValue(ctx, requestKey{}, r)
}

// requestFrom returns the request of ctx, or nil outside the HTTP API.
func requestFrom(ctx context.Context) *request {
	r, _ := ctx.Value(requestKey{}).(*request)
	return r
}

// partialResponse reports whether the reads of ctx may answer with what the
// reachable ingesters have, however many failed.
func partialResponse(ctx context.Context) bool {
	r := requestFrom(ctx)
	return r != nil && r.partialResponse
}

// Flags of the per-query limits, which LimitError names.
const (
	maxSeriesFlag = "--query.max-series"
	maxChunksFlag = "--query.max-chunks"
)

// ingesterLimit returns the query's LimitError when err is an ingester
// stopping at a limit the querier handed it (max_series, max_chunks; see
// censuspb.QueryLimit): what that ingester alone would send breaches the
// limit, so the query is over it and every replica would stop too. It
// returns nil for any other error, and always outside the API, which has
// no limits.
func (r *request) ingesterLimit(err error) *LimitError {
	if r == nil {
		return nil
	}
	switch censuspb.QueryLimitOf(err) {
	case censuspb.QueryLimitMaxChunks:
		if r.maxChunks > 0 {
			return &LimitError{Flag: maxChunksFlag, Limit: int(r.maxChunks), What: "chunks"}
		}
	case censuspb.QueryLimitMaxSeries:
		if r.maxSeries > 0 {
			return &LimitError{Flag: maxSeriesFlag, Limit: int(r.maxSeries), What: "series"}
		}
	}
	return nil
}

// addSeries counts n more series and returns the error of a breached
// limit. A nil request counts nothing.
func (r *request) addSeries(n int64) error {
	if r == nil {
		return nil
	}
	total := r.series.Add(n)
	if r.maxSeries > 0 && total > r.maxSeries {
		return &LimitError{Flag: maxSeriesFlag, Limit: int(r.maxSeries), What: "series"}
	}
	return nil
}

// addChunks counts n more chunks and returns the error of a breached limit.
func (r *request) addChunks(n int64) error {
	if r == nil {
		return nil
	}
	total := r.chunks.Add(n)
	if r.maxChunks > 0 && total > r.maxChunks {
		return &LimitError{Flag: maxChunksFlag, Limit: int(r.maxChunks), What: "chunks"}
	}
	return nil
}
