package ingester

import (
	"context"
	"fmt"
	"strings"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/index"

	censuspb "github.com/census-metrics/census/proto"
)

const (
	// defaultStatsLimit and maxStatsLimit are Prometheus'
	// /api/v1/status/tsdb's default and largest limit.
	defaultStatsLimit = 10
	maxStatsLimit     = 10_000
)

// TSDBStats returns the cardinality statistics of the TSDB head, as
// Prometheus' /api/v1/status/tsdb does for its own: series count, time range
// and chunk count of the head, and its top label statistics.
func (i *Ingester) TSDBStats(_ context.Context, req *censuspb.TSDBStatsRequest) (*censuspb.TSDBStatsResponse, error) {
	limit := int(req.GetLimit())
	switch {
	case req.GetLimit() < 0 || req.GetLimit() > maxStatsLimit:
		return nil, fmt.Errorf("%w: %d is not between 0 and %d", errInvalidLimit, req.GetLimit(), maxStatsLimit)
	case limit == 0:
		limit = defaultStatsLimit
	}
	byLabel := req.GetLabelName()
	if byLabel == "" {
		byLabel = labels.MetricName
	}
	db, err := i.acquire()
	if err != nil {
		return nil, err
	}
	defer i.release()

	s := db.Head().Stats(byLabel, limit)
	resp := &censuspb.TSDBStatsResponse{
		NumSeries:  s.NumSeries,
		MinTimeMs:  s.MinTime,
		MaxTimeMs:  s.MaxTime,
		ChunkCount: i.headChunks(),
	}
	if p := s.IndexPostingStats; p != nil {
		resp.NumLabelPairs = int64(p.NumLabelPairs)
		resp.CardinalityMetrics = fromStats(p.CardinalityMetricsStats)
		resp.CardinalityLabels = fromStats(p.CardinalityLabelStats)
		resp.LabelValueBytes = fromStats(p.LabelValueStats)
		resp.LabelValuePairs = fromStats(p.LabelValuePairsStats)
	}
	return resp, nil
}

// headChunks reads the TSDB's prometheus_tsdb_head_chunks gauge, as
// Prometheus' API does: the head keeps no other count. -1 if it is missing.
func (i *Ingester) headChunks() int64 {
	mfs, err := i.tsdbReg.local.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() == "prometheus_tsdb_head_chunks" && len(mf.GetMetric()) > 0 {
			return int64(mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
	return -1
}

// fromStats converts index statistics, copying names: they may view the
// head's postings.
func fromStats(stats []index.Stat) []*censuspb.Stat {
	out := make([]*censuspb.Stat, 0, len(stats))
	for _, s := range stats {
		out = append(out, &censuspb.Stat{Name: strings.Clone(s.Name), Count: s.Count})
	}
	return out
}
