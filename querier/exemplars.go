package querier

import (
	"cmp"
	"context"
	"math"
	"slices"

	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"

	censuspb "github.com/census-metrics/census/proto"
)

// ExemplarQuerier implements storage.ExemplarQueryable: the exemplars of the
// ingesters, each once however many replicas hold it.
func (q *Queryable) ExemplarQuerier(ctx context.Context) (storage.ExemplarQuerier, error) {
	return &exemplarQuerier{q: q, ctx: ctx}, nil
}

// exemplarQuerier keeps the context it was made with because
// storage.ExemplarQuerier's Select takes none, and the request's
// cancellation and partial-response choice must reach the fan-out.
type exemplarQuerier struct {
	q   *Queryable
	ctx context.Context
}

// Select returns, sorted by series, the exemplars in [start, end] of the
// series that match any of the matcher sets, as Prometheus' exemplar
// storage does.
func (e *exemplarQuerier) Select(start, end int64, matcherSets ...[]*labels.Matcher) ([]exemplar.QueryResult, error) {
	req := &censuspb.ExemplarsRequest{StartMs: start, EndMs: end}
	for _, ms := range matcherSets {
		req.MatcherSets = append(req.MatcherSets, &censuspb.MatcherSet{Matchers: censuspb.FromMatchers(ms)})
	}
	results, fails := fanOut(e.ctx, e.q, opQueryExemplars, func(ctx context.Context, c censuspb.IngesterClient) ([]exemplar.QueryResult, error) {
		resp, err := c.QueryExemplars(ctx, req)
		if err != nil {
			return nil, err
		}
		var b labels.ScratchBuilder
		res := make([]exemplar.QueryResult, 0, len(resp.GetSeries()))
		for _, s := range resp.GetSeries() {
			ls, err := censuspb.ToLabels(&b, s.GetLabels())
			if err != nil {
				return nil, err
			}
			r := exemplar.QueryResult{SeriesLabels: ls, Exemplars: make([]exemplar.Exemplar, 0, len(s.GetExemplars()))}
			for _, pe := range s.GetExemplars() {
				ex, err := censuspb.ToExemplar(&b, pe)
				if err != nil {
					return nil, err
				}
				r.Exemplars = append(r.Exemplars, ex)
			}
			res = append(res, r)
		}
		return res, nil
	})
	if err := fails.err(); err != nil {
		return nil, err
	}
	out := []exemplar.QueryResult{}
	for _, res := range results {
		out = append(out, res...)
	}
	// Replicas of a series become one result with each exemplar once.
	slices.SortStableFunc(out, func(a, b exemplar.QueryResult) int { return labels.Compare(a.SeriesLabels, b.SeriesLabels) })
	merged := out[:0]
	for _, r := range out {
		if n := len(merged); n > 0 && labels.Equal(merged[n-1].SeriesLabels, r.SeriesLabels) {
			merged[n-1].Exemplars = append(merged[n-1].Exemplars, r.Exemplars...)
			continue
		}
		merged = append(merged, r)
	}
	for i := range merged {
		merged[i].Exemplars = dedupExemplars(merged[i].Exemplars)
	}
	return merged, nil
}

// dedupExemplars sorts es by time and keeps each exemplar once.
func dedupExemplars(es []exemplar.Exemplar) []exemplar.Exemplar {
	slices.SortFunc(es, func(a, b exemplar.Exemplar) int {
		return cmp.Or(
			cmp.Compare(a.Ts, b.Ts),
			cmp.Compare(math.Float64bits(a.Value), math.Float64bits(b.Value)),
			labels.Compare(a.Labels, b.Labels),
		)
	})
	return slices.CompactFunc(es, func(a, b exemplar.Exemplar) bool {
		return a.Ts == b.Ts && math.Float64bits(a.Value) == math.Float64bits(b.Value) && labels.Equal(a.Labels, b.Labels)
	})
}
