package querier

import (
	"cmp"
	"context"
	"math"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/index"
	"google.golang.org/protobuf/proto"

	censuspb "github.com/census-metrics/census/proto"
)

// clusterStats gives /api/v1/status/tsdb the cardinality of the whole
// cluster, gathered from the ingesters' TSDBStats. The API's interface has
// no context, so a fan-out is bounded by timeout instead of the request.
//
// Every series is stored on min(RF, ingesters) ingesters, so the counts of
// series (in total, per metric name, per label pair) and of chunks are the
// sums over the ingesters divided by that many copies. When ingesters are
// down, the divisor shrinks in proportion to those that answered: the
// counts are then estimates. Counts of distinct values (label values per
// name, their bytes, label pairs) cannot be summed: they are the largest
// any ingester reports, exact when one ingester holds every value (RF equal
// to the number of ingesters) and a lower bound otherwise. The top lists
// merge each ingester's top list, asked for twice the requested length so
// that entries near the cut are rarely undercounted.
type clusterStats struct {
	emptyTSDB
	q       *Queryable
	timeout time.Duration
	// chunks is the cluster's head chunk count of the latest Stats: the API
	// reads it from its gatherer (prometheus_tsdb_head_chunks) right after
	// calling Stats. Concurrent requests may read each other's count.
	chunks atomic.Int64
	valid  atomic.Bool // Set once chunks holds a count.
}

// Stats implements v1.TSDBAdminStats.
func (s *clusterStats) Stats(statsByLabelName string, limit int) (*tsdb.Stats, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	req := &censuspb.TSDBStatsRequest{Limit: int64(2 * limit), LabelName: statsByLabelName}
	results, fails := fanOut(ctx, s.q, opTSDBStats, func(ctx context.Context, c censuspb.IngesterClient) (*censuspb.TSDBStatsResponse, error) {
		return c.TSDBStats(ctx, req)
	})
	if err := fails.err(); err != nil {
		return nil, err
	}

	out := &tsdb.Stats{MinTime: math.MaxInt64, MaxTime: math.MinInt64, IndexPostingStats: &index.PostingsStats{}}
	total := len(fails.all)
	answered := 0
	for _, r := range results {
		if r != nil {
			answered++
		}
	}
	copies := float64(min(s.q.ring.ReplicationFactor(), total)) * float64(answered) / float64(total)
	perCopy := func(n float64) uint64 {
		if copies <= 0 {
			return 0
		}
		return uint64(math.Round(n / copies))
	}

	var numSeries, chunks float64
	metrics, pairs := map[string]float64{}, map[string]float64{}
	labelValues, labelBytes := map[string]uint64{}, map[string]uint64{}
	for _, r := range results {
		if r == nil {
			continue
		}
		numSeries += float64(r.GetNumSeries())
		chunks += float64(r.GetChunkCount())
		if r.GetNumSeries() > 0 {
			out.MinTime = min(out.MinTime, r.GetMinTimeMs())
			out.MaxTime = max(out.MaxTime, r.GetMaxTimeMs())
		}
		out.IndexPostingStats.NumLabelPairs = max(out.IndexPostingStats.NumLabelPairs, int(r.GetNumLabelPairs()))
		for _, st := range r.GetCardinalityMetrics() {
			metrics[st.GetName()] += float64(st.GetCount())
		}
		for _, st := range r.GetLabelValuePairs() {
			pairs[st.GetName()] += float64(st.GetCount())
		}
		for _, st := range r.GetCardinalityLabels() {
			labelValues[st.GetName()] = max(labelValues[st.GetName()], st.GetCount())
		}
		for _, st := range r.GetLabelValueBytes() {
			labelBytes[st.GetName()] = max(labelBytes[st.GetName()], st.GetCount())
		}
	}
	out.NumSeries = perCopy(numSeries)
	ps := out.IndexPostingStats
	ps.CardinalityMetricsStats = topStats(metrics, perCopy, limit)
	ps.LabelValuePairsStats = topStats(pairs, perCopy, limit)
	identity := func(n float64) uint64 { return uint64(n) }
	ps.CardinalityLabelStats = topStats(toFloats(labelValues), identity, limit)
	ps.LabelValueStats = topStats(toFloats(labelBytes), identity, limit)
	s.setChunks(int64(perCopy(chunks)))
	return out, nil
}

func (s *clusterStats) setChunks(n int64) {
	s.chunks.Store(n)
	s.valid.Store(true)
}

func toFloats(m map[string]uint64) map[string]float64 {
	out := make(map[string]float64, len(m))
	for k, v := range m {
		out[k] = float64(v)
	}
	return out
}

// topStats returns the limit largest counts, largest first, ties by name.
func topStats(m map[string]float64, count func(float64) uint64, limit int) []index.Stat {
	out := make([]index.Stat, 0, len(m))
	for name, n := range m {
		out = append(out, index.Stat{Name: name, Count: count(n)})
	}
	slices.SortFunc(out, func(a, b index.Stat) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Name, b.Name))
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// headChunksMetric is the gauge the API's /status/tsdb reads the chunk
// count from.
const headChunksMetric = "prometheus_tsdb_head_chunks"

// statsGatherer is the API's gatherer: the process's metrics, with
// prometheus_tsdb_head_chunks replaced by the cluster's count once
// /status/tsdb computed one.
type statsGatherer struct {
	prometheus.Gatherer
	stats *clusterStats
}

// Gather implements prometheus.Gatherer.
func (g statsGatherer) Gather() ([]*dto.MetricFamily, error) {
	mfs, err := g.Gatherer.Gather()
	if !g.stats.valid.Load() {
		return mfs, err
	}
	mfs = slices.DeleteFunc(mfs, func(mf *dto.MetricFamily) bool { return mf.GetName() == headChunksMetric })
	mfs = append(mfs, &dto.MetricFamily{
		Name:   proto.String(headChunksMetric),
		Help:   proto.String("Chunks in the heads of the ingesters, each once however many replicas hold it."),
		Type:   dto.MetricType_GAUGE.Enum(),
		Metric: []*dto.Metric{{Gauge: &dto.Gauge{Value: proto.Float64(float64(g.stats.chunks.Load()))}}},
	})
	return mfs, err
}
