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
// pushes them on Commit. Like every AppenderV2 it is not goroutine-safe;
// after Commit or Rollback it goes back to its distributor's pool.
//
// The SeriesRef it returns is the series' hash. The scrape loop caches refs
// by series and hands them back on every later scrape, so a steady scrape
// neither re-hashes nor re-validates a label set, and needs no map here.
type appender struct {
	ctx context.Context
	d   *Distributor

	series  []pendingSeries
	floats  []floatSample // Every series' float samples; see pendingSeries.
	samples int           // Samples of every type appended.

	// Scratch space of Commit, kept for the next transaction.
	encoded  []byte // Every series encoded once, back to back.
	ends     []int  // ends[i] is where series i ends in encoded.
	replicas []int  // See batch.
}

// pendingSeries is one series of the transaction. Its float samples are
// floats[first : first+count]: samples of one series arrive together (the
// scrape loop and remote write send them so), and a series that comes back
// after another one starts a new pendingSeries.
type pendingSeries struct {
	ls           labels.Labels
	hash         uint64
	first, count int
	histograms   []*censuspb.Histogram
	exemplars    []*censuspb.Exemplar
	metadata     *censuspb.Metadata
}

type floatSample struct {
	st, t int64
	v     float64
}

var _ storage.AppenderV2 = (*appender)(nil)

// Append buffers one sample with its exemplars and metadata.
func (a *appender) Append(ref storage.SeriesRef, ls labels.Labels, st, t int64, v float64, h *histogram.Histogram, fh *histogram.FloatHistogram, opts storage.AppendV2Options) (storage.SeriesRef, error) {
	hash := uint64(ref)
	if hash == 0 {
		if err := validateLabels(ls); err != nil {
			return 0, err
		}
		hash = SeriesHash(ls)
	}
	n := len(a.series)
	if n == 0 || a.series[n-1].hash != hash || !labels.Equal(a.series[n-1].ls, ls) {
		a.series = append(a.series, pendingSeries{ls: ls, hash: hash, first: len(a.floats)})
		n++
	}
	s := &a.series[n-1]
	switch {
	case fh != nil:
		wire := censuspb.FromFloatHistogram(t, fh.Copy())
		wire.StartTimestampMs = st
		s.histograms = append(s.histograms, wire)
	case h != nil:
		wire := censuspb.FromHistogram(t, h.Copy())
		wire.StartTimestampMs = st
		s.histograms = append(s.histograms, wire)
	default:
		a.floats = append(a.floats, floatSample{st: st, t: t, v: v})
		s.count++
	}
	// The caller may reuse the exemplars' labels after Append returns.
	for _, e := range opts.Exemplars {
		e.Labels = e.Labels.Copy()
		s.exemplars = append(s.exemplars, censuspb.FromExemplar(e))
	}
	if m := censuspb.FromMetadata(opts.Metadata); m != nil {
		s.metadata = m
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
	a.d.putAppender(a)
	return nil
}

// Commit pushes every buffered series to its replicas concurrently, one
// request per ingester, and succeeds when each series reached a quorum
// (ReplicationFactor/2+1) of its replicas.
func (a *appender) Commit() error {
	defer a.d.putAppender(a)
	if len(a.series) == 0 {
		return nil
	}
	a.d.metrics.receivedSamples.Add(float64(a.samples))

	if err := a.encode(); err != nil {
		a.d.metrics.commits.WithLabelValues("rejected").Inc()
		return err
	}
	b, err := a.shard()
	if err != nil {
		a.d.metrics.commits.WithLabelValues("rejected").Inc()
		return err
	}
	ctx, cancel := context.WithTimeout(a.ctx, a.d.cfg.PushTimeout)
	defer cancel()
	errs := a.d.push(ctx, b.targets)
	if err := b.checkQuorum(errs); err != nil {
		a.d.metrics.commits.WithLabelValues("no_quorum").Inc()
		return err
	}
	for _, err := range errs {
		// Every series has its quorum, but an ingester refused part of the
		// input: report it so the sender does not retry. Other failures
		// are what replicas are for: the quorum covers them.
		switch status.Code(err) {
		case codes.InvalidArgument:
			a.d.metrics.commits.WithLabelValues("invalid").Inc()
			return fmt.Errorf("%w: %w", ErrInvalidSeries, err)
		case codes.ResourceExhausted:
			a.d.metrics.commits.WithLabelValues("limited").Inc()
			return fmt.Errorf("%w: %w", ErrLimited, err)
		}
	}
	a.d.metrics.commits.WithLabelValues("success").Inc()
	return nil
}

// encode writes every series once, as an encoded censuspb.TimeSeries, so
// that building each replica's request only copies bytes.
func (a *appender) encode() error {
	var err error
	for i := range a.series {
		s := &a.series[i]
		a.encoded = censuspb.AppendSeriesLabels(a.encoded, s.ls)
		for _, f := range a.floats[s.first : s.first+s.count] {
			a.encoded = censuspb.AppendSampleWithStart(a.encoded, f.st, f.t, f.v)
		}
		for _, h := range s.histograms {
			if a.encoded, err = censuspb.AppendHistogram(a.encoded, h); err != nil {
				return fmt.Errorf("%w: encode histogram of series %s: %w", ErrInvalidSeries, s.ls, err)
			}
		}
		for _, e := range s.exemplars {
			if a.encoded, err = censuspb.AppendExemplar(a.encoded, e); err != nil {
				return fmt.Errorf("%w: encode exemplar of series %s: %w", ErrInvalidSeries, s.ls, err)
			}
		}
		if s.metadata != nil {
			if a.encoded, err = censuspb.AppendMetadata(a.encoded, s.metadata); err != nil {
				return fmt.Errorf("%w: encode metadata of series %s: %w", ErrInvalidSeries, s.ls, err)
			}
		}
		a.ends = append(a.ends, len(a.encoded))
	}
	return nil
}

// seriesBytes returns encoded series i.
func (a *appender) seriesBytes(i int) []byte {
	start := 0
	if i > 0 {
		start = a.ends[i-1]
	}
	return a.encoded[start:a.ends[i]]
}

// target is one ingester and the request it will receive.
type target struct {
	instance ring.InstanceDesc
	series   []int // Indexes of the series it owns.
	size     int   // Bytes of its request.
	req      censuspb.EncodedPushRequest
}

// batch is a transaction sharded onto ingesters. replicas holds, for series
// i, the indexes into targets of its replicas at [i*rf, (i+1)*rf), -1 where
// the ring had fewer than rf instances.
type batch struct {
	targets  []target
	replicas []int
	rf       int
}

// shard groups the series by the ingesters that own them and builds each
// ingester's request from the encoded series.
func (a *appender) shard() (*batch, error) {
	r := a.d.ring
	rf := r.ReplicationFactor()
	a.replicas = append(a.replicas[:0], make([]int, len(a.series)*rf)...)
	b := &batch{replicas: a.replicas, rf: rf}
	index := map[string]int{}
	buf := make([]ring.InstanceDesc, 0, rf)
	for i := range a.series {
		replicas, err := r.Get(Token(a.series[i].hash), buf)
		if err != nil {
			return nil, fmt.Errorf("%w: find replicas for series %s: %w", ErrNoQuorum, a.series[i].ls, err)
		}
		size := censuspb.SizePushRequestSeries(len(a.seriesBytes(i)))
		for k := range rf {
			if k >= len(replicas) {
				b.replicas[i*rf+k] = -1
				continue
			}
			j, ok := index[replicas[k].ID]
			if !ok {
				j = len(b.targets)
				index[replicas[k].ID] = j
				b.targets = append(b.targets, target{instance: replicas[k]})
			}
			b.targets[j].series = append(b.targets[j].series, i)
			b.targets[j].size += size
			b.replicas[i*rf+k] = j
		}
	}
	for j := range b.targets {
		t := &b.targets[j]
		t.req = make(censuspb.EncodedPushRequest, 0, t.size)
		for _, i := range t.series {
			t.req = censuspb.AppendPushRequestSeries(t.req, a.seriesBytes(i))
		}
	}
	return b, nil
}

// checkQuorum returns an error naming the failed ingesters when any series
// was acknowledged by fewer than rf/2+1 replicas. An ingester that refused
// part of the input (InvalidArgument, ResourceExhausted) stored the rest
// and would refuse the same again, so its answer counts as an
// acknowledgement.
func (b *batch) checkQuorum(errs []error) error {
	quorum := b.rf/2 + 1
	missing := 0
	for i := 0; i < len(b.replicas); i += b.rf {
		acks := 0
		for _, j := range b.replicas[i : i+b.rf] {
			if j >= 0 && acknowledged(errs[j]) {
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
		if !acknowledged(err) {
			inst := b.targets[j].instance
			failed[fmt.Sprintf("%s (%s)", inst.ID, inst.Addr)] = err
		}
	}
	return noQuorumError(missing, quorum, failed)
}

func acknowledged(err error) bool {
	switch status.Code(err) {
	case codes.OK, codes.InvalidArgument, codes.ResourceExhausted:
		return true
	}
	return false
}

// push sends each target its request concurrently and returns each one's
// error, in target order.
func (d *Distributor) push(ctx context.Context, targets []target) []error {
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for j := range targets {
		wg.Go(func() {
			errs[j] = d.pushOne(ctx, &targets[j])
		})
	}
	wg.Wait()
	return errs
}

func (d *Distributor) pushOne(ctx context.Context, t *target) error {
	conn, err := d.clients.Conn(t.instance.Addr)
	if err != nil {
		return err
	}
	start := time.Now()
	_, err = censuspb.PushEncoded(ctx, conn, t.req)
	d.metrics.ingesterPushes.WithLabelValues(status.Code(err).String()).Observe(time.Since(start).Seconds())
	if err != nil {
		d.logger.Debug("Push to ingester failed", "ingester", t.instance.ID, "addr", t.instance.Addr, "err", err)
	}
	return err
}
