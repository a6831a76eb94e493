package ingester

import (
	"context"
	"fmt"

	"github.com/prometheus/prometheus/model/labels"

	censuspb "github.com/census-metrics/census/proto"
)

// QueryExemplars returns, per series, the exemplars in [start_ms, end_ms] of
// the series that match any of the request's matcher sets, as Prometheus'
// /api/v1/query_exemplars answers from one TSDB.
func (i *Ingester) QueryExemplars(ctx context.Context, req *censuspb.ExemplarsRequest) (*censuspb.ExemplarsResponse, error) {
	sets := make([][]*labels.Matcher, 0, len(req.GetMatcherSets()))
	for _, set := range req.GetMatcherSets() {
		ms, err := toMatchers(set.GetMatchers())
		if err != nil {
			return nil, err
		}
		sets = append(sets, ms)
	}
	db, err := i.acquire()
	if err != nil {
		return nil, err
	}
	defer i.release()

	if i.cfg.MaxExemplars == 0 || len(sets) == 0 {
		return &censuspb.ExemplarsResponse{}, nil
	}
	q, err := db.ExemplarQuerier(ctx)
	if err != nil {
		return nil, fmt.Errorf("open exemplar querier: %w", err)
	}
	results, err := q.Select(req.GetStartMs(), req.GetEndMs(), sets...)
	if err != nil {
		return nil, fmt.Errorf("select exemplars: %w", err)
	}
	// The exemplar storage is in memory and its labels are immutable
	// strings, so the response may view them after the querier is gone.
	resp := &censuspb.ExemplarsResponse{Series: make([]*censuspb.SeriesExemplars, 0, len(results))}
	for _, r := range results {
		s := &censuspb.SeriesExemplars{
			Labels:    censuspb.FromLabels(nil, r.SeriesLabels),
			Exemplars: make([]*censuspb.Exemplar, 0, len(r.Exemplars)),
		}
		for _, e := range r.Exemplars {
			s.Exemplars = append(s.Exemplars, censuspb.FromExemplar(e))
		}
		resp.Series = append(resp.Series, s)
	}
	return resp, nil
}
