package querier

import (
	"cmp"
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"

	"github.com/grafana/regexp"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/util/annotations"
	"github.com/prometheus/prometheus/util/httputil"

	censuspb "github.com/census-metrics/census/proto"
)

// metricMetadata returns the metadata of the metric families the ingesters
// know, each distinct entry once however many replicas reported it, with
// the semantics of Prometheus' /api/v1/metadata: metric selects one family
// (empty: all), at most limitPerMetric entries per family and limit
// families (negative: no limit).
func (q *Queryable) metricMetadata(ctx context.Context, metric string, limit, limitPerMetric int) (map[string][]metadata.Metadata, annotations.Annotations, error) {
	out := map[string][]metadata.Metadata{}
	if limit == 0 {
		return out, nil, nil
	}
	req := &censuspb.MetricsMetadataRequest{Metric: metric, Limit: int64(max(limit, 0)), LimitPerMetric: int64(max(limitPerMetric, 0))}
	results, fails := fanOut(ctx, q, opMetricsMetadata, func(ctx context.Context, c censuspb.IngesterClient) ([]*censuspb.MetricMetadata, error) {
		resp, err := c.MetricsMetadata(ctx, req)
		return resp.GetMetadata(), err
	})
	if err := fails.err(); err != nil {
		return nil, nil, err
	}
	for _, res := range results {
		for _, mm := range res {
			family, md := mm.GetMetricFamily(), mm.GetMetadata().ToMetadata()
			if slices.Contains(out[family], md) {
				continue
			}
			out[family] = append(out[family], md)
		}
	}
	families := make([]string, 0, len(out))
	for family, mds := range out {
		families = append(families, family)
		// Prometheus answers in no particular order; a stable one makes
		// answers comparable.
		slices.SortFunc(mds, func(a, b metadata.Metadata) int {
			return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Help, b.Help), cmp.Compare(a.Unit, b.Unit))
		})
		if limitPerMetric > 0 && len(mds) > limitPerMetric {
			out[family] = mds[:limitPerMetric]
		}
	}
	if limit > 0 && len(families) > limit {
		slices.Sort(families)
		for _, family := range families[limit:] {
			delete(out, family)
		}
	}
	return out, fails.warnings(), nil
}

// metadataHandler serves /api/v1/metadata from the ingesters: Prometheus'
// own handler reads the metadata of its scrape targets, which a querier
// has none of. Parameters, answers and errors are Prometheus'.
func metadataHandler(q *Queryable, cors *regexp.Regexp) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httputil.SetCORS(w, cors, r)
		parse := func(name string) (int, bool) {
			s := r.FormValue(name)
			if s == "" {
				return -1, true
			}
			n, err := strconv.Atoi(s)
			if err != nil {
				respondError(w, errorBadData, errors.New(name+" must be a number"))
				return 0, false
			}
			return n, true
		}
		limit, ok := parse("limit")
		if !ok {
			return
		}
		limitPerMetric, ok := parse("limit_per_metric")
		if !ok {
			return
		}
		md, ws, err := q.metricMetadata(r.Context(), r.FormValue("metric"), limit, limitPerMetric)
		if err != nil {
			respondError(w, storageErrorType(r.Context(), err), err)
			return
		}
		respond(w, md, ws)
	})
}
