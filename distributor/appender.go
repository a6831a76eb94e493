package distributor

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	censuspb "github.com/census-metrics/census/proto"
	"github.com/census-metrics/census/ring"
)

// appender buffers one transaction's samples, grouped per series, and
// pushes them on Commit. Like every AppenderV2 it is not goroutine-safe.
//
// The SeriesRef it returns is the series' hash. The scrape loop caches refs
// by series and hands them back on every later scrape, so a steady scrape
// neither re-hashes nor re-validates a label set, and needs no map here.
type appender struct {
	ctx context.Context
	d   *Distributor

	series  []*censuspb.TimeSeries
	hashes  []uint64 // hashes[i] is the hash of series[i].
	last    labels.Labels
	samples int
}

var _ storage.AppenderV2 = (*appender)(nil)

// Append buffers one float sample. Native histograms, exemplars and metadata
// are not stored yet: a histogram sample is refused, the others ignored.
func (a *appender) Append(ref storage.SeriesRef, ls labels.Labels, _, t int64, v float64, h *histogram.Histogram, fh *histogram.FloatHistogram, _ storage.AppendV2Options) (storage.SeriesRef, error) {
	if h != nil || fh != nil {
		return 0, fmt.Errorf("%w: native histogram samples are not supported yet, series %s", ErrInvalidSeries, ls)
	}
	hash := uint64(ref)
	if hash == 0 {
		if err := validateLabels(ls); err != nil {
			return 0, err
		}
		hash = SeriesHash(ls)
	}
	sample := &censuspb.Sample{TimestampMs: t, Value: v}
	// Samples of one series usually arrive together (remote write sends
	// them so), so checking the previous series alone groups them.
	if n := len(a.series); n > 0 && a.hashes[n-1] == hash && labels.Equal(a.last, ls) {
		a.series[n-1].Samples = append(a.series[n-1].Samples, sample)
	} else {
		a.series = append(a.series, &censuspb.TimeSeries{
			Labels:  censuspb.FromLabels(make([]*censuspb.LabelPair, 0, ls.Len()), ls),
			Samples: []*censuspb.Sample{sample},
		})
		a.hashes = append(a.hashes, hash)
		a.last = ls
	}
	a.samples++
	return storage.SeriesRef(hash), nil
}

// validateLabels refuses label sets an ingester would refuse, so a bad
// series fails alone, at its Append, instead of failing a whole push.
func validateLabels(ls labels.Labels) error {
	if ls.IsEmpty() {
		return fmt.Errorf("%w: series has no labels", ErrInvalidSeries)
	}
	if !ls.IsValid(model.UTF8Validation) {
		return fmt.Errorf("%w: empty or non-UTF-8 label name or value in series %s", ErrInvalidSeries, ls)
	}
	if name, dup := ls.HasDuplicateLabelNames(); dup {
		return fmt.Errorf("%w: duplicate label name %q in series %s", ErrInvalidSeries, name, ls)
	}
	return nil
}

// Rollback drops the buffered samples.
func (a *appender) Rollback() error {
	a.series, a.hashes, a.last = nil, nil, labels.EmptyLabels()
	return nil
}

// Commit pushes every buffered series to its replicas concurrently, one
// request per ingester, and succeeds when each series reached a quorum
// (ReplicationFactor/2+1) of its replicas.
func (a *appender) Commit() error {
	defer a.Rollback() //nolint:errcheck // Rollback only clears buffers.
	if len(a.series) == 0 {
		return nil
	}
	a.d.metrics.receivedSamples.Add(float64(a.samples))

	batch, err := shard(a.d.ring, a.series, a.hashes)
	if err != nil {
		a.d.metrics.commits.WithLabelValues("rejected").Inc()
		return err
	}
	ctx, cancel := context.WithTimeout(a.ctx, a.d.cfg.PushTimeout)
	defer cancel()
	errs := a.d.push(ctx, batch.targets)
	if err := batch.checkQuorum(errs); err != nil {
		a.d.metrics.commits.WithLabelValues("no_quorum").Inc()
		return err
	}
	for _, err := range errs {
		if status.Code(err) == codes.InvalidArgument {
			// Every series has its quorum, but an ingester refused part of
			// the input (an out-of-order sample, say): report it so the
			// sender does not retry. Other failures are what replicas are
			// for: the quorum covers them.
			a.d.metrics.commits.WithLabelValues("invalid").Inc()
			return fmt.Errorf("%w: %w", ErrInvalidSeries, err)
		}
	}
	a.d.metrics.commits.WithLabelValues("success").Inc()
	return nil
}

// target is one ingester and the request it will receive.
type target struct {
	instance ring.InstanceDesc
	req      *censuspb.PushRequest
}

// batch is a transaction sharded onto ingesters. replicas holds, for series
// i, the indexes into targets of its replicas at [i*rf, (i+1)*rf), -1 where
// the ring had fewer than rf instances.
type batch struct {
	targets  []target
	replicas []int
	rf       int
}

// shard groups series by the ingesters that own them. Each series'
// TimeSeries is shared by the requests of all its replicas: marshalling only
// reads it.
func shard(r Ring, series []*censuspb.TimeSeries, hashes []uint64) (*batch, error) {
	rf := r.ReplicationFactor()
	b := &batch{replicas: make([]int, len(series)*rf), rf: rf}
	index := map[string]int{}
	buf := make([]ring.InstanceDesc, 0, rf)
	for i, ts := range series {
		replicas, err := r.Get(Token(hashes[i]), buf)
		if err != nil {
			return nil, fmt.Errorf("%w: find replicas for series %s: %w", ErrNoQuorum, censuspb.FormatLabelPairs(ts.Labels), err)
		}
		for k := range rf {
			if k >= len(replicas) {
				b.replicas[i*rf+k] = -1
				continue
			}
			j, ok := index[replicas[k].ID]
			if !ok {
				j = len(b.targets)
				index[replicas[k].ID] = j
				b.targets = append(b.targets, target{instance: replicas[k], req: &censuspb.PushRequest{}})
			}
			b.targets[j].req.Series = append(b.targets[j].req.Series, ts)
			b.replicas[i*rf+k] = j
		}
	}
	return b, nil
}

// checkQuorum returns an error naming the failed ingesters when any series
// was acknowledged by fewer than rf/2+1 replicas. An InvalidArgument answer
// counts as an acknowledgement: the ingester stored what it could and
// would refuse the rest again.
func (b *batch) checkQuorum(errs []error) error {
	quorum := b.rf/2 + 1
	missing := 0
	for i := 0; i < len(b.replicas); i += b.rf {
		acks := 0
		for _, j := range b.replicas[i : i+b.rf] {
			if j >= 0 && (errs[j] == nil || status.Code(errs[j]) == codes.InvalidArgument) {
				acks++
			}
		}
		if acks < quorum {
			missing++
		}
	}
	if missing == 0 {
		return nil
	}
	failed := map[string]error{}
	for j, err := range errs {
		if err != nil && status.Code(err) != codes.InvalidArgument {
			inst := b.targets[j].instance
			failed[fmt.Sprintf("%s (%s)", inst.ID, inst.Addr)] = err
		}
	}
	return noQuorumError(missing, quorum, failed)
}

// push sends each target its request concurrently and returns each one's
// error, in target order.
func (d *Distributor) push(ctx context.Context, targets []target) []error {
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for j := range targets {
		wg.Go(func() {
			errs[j] = d.pushOne(ctx, targets[j])
		})
	}
	wg.Wait()
	return errs
}

func (d *Distributor) pushOne(ctx context.Context, t target) error {
	client, err := d.clients.Get(t.instance.Addr)
	if err != nil {
		return err
	}
	start := time.Now()
	_, err = client.Push(ctx, t.req)
	d.metrics.ingesterPushes.WithLabelValues(status.Code(err).String()).Observe(time.Since(start).Seconds())
	if err != nil {
		d.logger.Debug("Push to ingester failed", "ingester", t.instance.ID, "addr", t.instance.Addr, "err", err)
	}
	return err
}
