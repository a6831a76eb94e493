package censuspb

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// QueryLimit names a per-query limit the querier hands each ingester in a
// request (QueryStreamRequest.max_series and max_chunks, and
// SeriesRequest.max_series). An ingester that stops at one says which, so
// the querier can fail the query with its own limit error instead of
// taking the answer for a failed ingester.
type QueryLimit string

const (
	QueryLimitMaxSeries QueryLimit = "QUERY_MAX_SERIES"
	QueryLimitMaxChunks QueryLimit = "QUERY_MAX_CHUNKS"
)

// queryLimitDomain is the ErrorInfo domain of Census' query limits.
const queryLimitDomain = "census.metrics"

// QueryLimitStatus is the ResourceExhausted status of a read stopped at
// limit, with msg for people and an ErrorInfo detail naming the limit for
// the querier.
func QueryLimitStatus(limit QueryLimit, msg string) *status.Status {
	st := status.New(codes.ResourceExhausted, msg)
	if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: string(limit), Domain: queryLimitDomain}); err == nil {
		return withInfo
	}
	return st
}

// QueryLimitOf returns the limit a read error stopped at, or "" if err is
// not such a stop.
func QueryLimitOf(err error) QueryLimit {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.ResourceExhausted {
		return ""
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == queryLimitDomain {
			return QueryLimit(info.GetReason())
		}
	}
	return ""
}
