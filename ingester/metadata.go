package ingester

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/metadata"

	censuspb "github.com/census-metrics/census/proto"
)

const (
	// metadataTTL is how long metadata stays after the last push that
	// carried it. Senders attach metadata to every push (AppenderV2's
	// contract), so an hour outlives any scrape or remote-write interval,
	// while metadata of metrics nobody sends any more goes away, as in
	// Prometheus when their targets go.
	metadataTTL = time.Hour
	// maxMetadataEntries bounds the store: a sender could make up metric
	// names without limit. Prometheus servers know a few thousand families.
	maxMetadataEntries = 100_000
)

// familyMetadata is one metadata of one metric family.
type familyMetadata struct {
	family string
	meta   metadata.Metadata
}

// metadataStore holds the metric metadata of recent pushes, per metric
// family, in memory. The TSDB keeps no metadata it can answer queries from
// (its per-series metadata in v0.316.0 has no read API), so the store is the
// ingester's own; after a restart it fills again with the next pushes.
type metadataStore struct {
	mtx        sync.Mutex                                 // Guards the fields below.
	families   map[string]map[metadata.Metadata]time.Time // Family -> metadata -> last pushed.
	entries    int
	lastExpiry time.Time
	dropped    int // Entries refused because the store was full.
}

func newMetadataStore() *metadataStore {
	return &metadataStore{families: map[string]map[metadata.Metadata]time.Time{}}
}

// update records batch as pushed at now. The strings of batch are not
// retained.
func (s *metadataStore) update(batch []familyMetadata, now time.Time) {
	s.mtx.Lock()
	defer s.mtx.Unlock()
	if now.Sub(s.lastExpiry) > metadataTTL/4 {
		s.expireLocked(now.Add(-metadataTTL))
		s.lastExpiry = now
	}
	for _, fm := range batch {
		metas, ok := s.families[fm.family]
		if ok {
			if _, ok := metas[fm.meta]; ok {
				metas[fm.meta] = now
				continue
			}
		}
		if s.entries >= maxMetadataEntries {
			s.dropped++
			continue
		}
		if !ok {
			metas = map[metadata.Metadata]time.Time{}
			s.families[strings.Clone(fm.family)] = metas
		}
		m := metadata.Metadata{Type: fm.meta.Type, Help: strings.Clone(fm.meta.Help), Unit: strings.Clone(fm.meta.Unit)}
		metas[m] = now
		s.entries++
	}
}

// expireLocked drops the metadata last pushed before cutoff.
func (s *metadataStore) expireLocked(cutoff time.Time) {
	for family, metas := range s.families {
		for m, seen := range metas {
			if seen.Before(cutoff) {
				delete(metas, m)
				s.entries--
			}
		}
		if len(metas) == 0 {
			delete(s.families, family)
		}
	}
}

// query returns the metadata of metric (every family if empty), families
// sorted by name and each family's entries by type, unit and help, at most
// limit families and perMetric entries each (0: all).
func (s *metadataStore) query(metric string, limit, perMetric int, now time.Time) []*censuspb.MetricMetadata {
	s.mtx.Lock()
	defer s.mtx.Unlock()
	s.expireLocked(now.Add(-metadataTTL))
	var families []string
	if metric != "" {
		if _, ok := s.families[metric]; ok {
			families = []string{metric}
		}
	} else {
		families = make([]string, 0, len(s.families))
		for f := range s.families {
			families = append(families, f)
		}
		slices.Sort(families)
	}
	if limit > 0 && len(families) > limit {
		families = families[:limit]
	}
	var out []*censuspb.MetricMetadata
	for _, f := range families {
		metas := make([]metadata.Metadata, 0, len(s.families[f]))
		for m := range s.families[f] {
			metas = append(metas, m)
		}
		slices.SortFunc(metas, func(a, b metadata.Metadata) int {
			return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Unit, b.Unit), cmp.Compare(a.Help, b.Help))
		})
		if perMetric > 0 && len(metas) > perMetric {
			metas = metas[:perMetric]
		}
		for _, m := range metas {
			out = append(out, &censuspb.MetricMetadata{MetricFamily: f, Metadata: censuspb.FromMetadata(m)})
		}
	}
	return out
}

// metricFamily returns the metric family of a series named name with
// metadata m, as the exposition format's # TYPE line names it: the series of
// a classic histogram or summary carry suffixes their family has not.
func metricFamily(name string, m metadata.Metadata) string {
	var suffixes []string
	switch m.Type {
	case model.MetricTypeHistogram:
		suffixes = []string{"_bucket", "_sum", "_count"}
	case model.MetricTypeGaugeHistogram:
		suffixes = []string{"_bucket", "_gsum", "_gcount", "_sum", "_count"}
	case model.MetricTypeSummary:
		suffixes = []string{"_sum", "_count"}
	case model.MetricTypeInfo:
		suffixes = []string{"_info"}
	}
	for _, s := range suffixes {
		if family, ok := strings.CutSuffix(name, s); ok && family != "" {
			return family
		}
	}
	return name
}

// MetricsMetadata returns the metadata (type, help, unit) of the metric
// families pushed to this ingester within the last hour, as Prometheus'
// /api/v1/metadata answers from its targets: per family, each distinct
// metadata once, families sorted by name.
func (i *Ingester) MetricsMetadata(_ context.Context, req *censuspb.MetricsMetadataRequest) (*censuspb.MetricsMetadataResponse, error) {
	if req.GetLimit() < 0 || req.GetLimitPerMetric() < 0 {
		return nil, fmt.Errorf("%w: limit %d and limit_per_metric %d must not be negative", errInvalidLimit, req.GetLimit(), req.GetLimitPerMetric())
	}
	if _, err := i.acquire(); err != nil {
		return nil, err
	}
	defer i.release()
	return &censuspb.MetricsMetadataResponse{
		Metadata: i.metadata.query(req.GetMetric(), int(req.GetLimit()), int(req.GetLimitPerMetric()), time.Now()),
	}, nil
}
