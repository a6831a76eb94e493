package distributor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/prometheus/prometheus/model/exemplar"
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
//
// A sample that breaks a rule (see validateSeries and checkTime) is refused
// alone: Append counts it and returns no error, so that Prometheus' remote
// write 1.0 receiver, which rolls back a whole request on an Append error,
// still stores the rest; Commit then reports every refusal in an error
// wrapping ErrInvalidSeries, after storing everything else.
type appender struct {
	ctx      context.Context
	d        *Distributor
	times    timeRange   // Timestamps accepted, fixed when the transaction starts.
	report   *pushReport // Where an HTTP push wants the outcome; nil otherwise.
	rejected rejections

	series  []pendingSeries
	floats  []floatSample // Every series' float samples; see pendingSeries.
	samples int           // Samples of every type appended.

	// Scratch space of Commit, kept for the next transaction.
	encoded []byte // Every series encoded once, back to back.
	ends    []int  // ends[i] is where series i ends in encoded.
	batch   batch
	index   map[string]int // Instance ID -> index in batch.targets.
	ringBuf []ring.InstanceDesc
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

var (
	_ storage.AppenderV2         = (*appender)(nil)
	_ storage.ExemplarAppenderV2 = (*appender)(nil)
)

// Append buffers one sample with its exemplars and metadata, or refuses it
// (see appender).
func (a *appender) Append(ref storage.SeriesRef, ls labels.Labels, st, t int64, v float64, h *histogram.Histogram, fh *histogram.FloatHistogram, opts storage.AOptions) (storage.SeriesRef, error) {
	isHistogram := h != nil || fh != nil
	hash := uint64(ref)
	if hash == 0 {
		if r, err := a.d.cfg.validateSeries(ls); err != nil {
			a.reject(r, err, isHistogram, len(opts.Exemplars))
			return 0, nil
		}
		hash = SeriesHash(ls)
	}
	if t < a.times.minT || t > a.times.maxT {
		r, err := a.d.cfg.checkTime(a.times, t, ls)
		a.reject(r, err, isHistogram, len(opts.Exemplars))
		return storage.SeriesRef(hash), nil
	}
	var hErr error
	switch {
	case fh != nil:
		hErr = fh.Validate()
	case h != nil:
		hErr = h.Validate()
	}
	if hErr != nil {
		a.reject(censuspb.ReasonInvalidHistogram, fmt.Errorf("histogram at %s in series %s: %w", formatTime(t), ls, hErr), true, len(opts.Exemplars))
		return storage.SeriesRef(hash), nil
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
	a.addExemplars(s, opts.Exemplars)
	if m := censuspb.FromMetadata(opts.Metadata); m != nil {
		s.metadata = m
	}
	a.samples++
	return storage.SeriesRef(hash), nil
}

// AppendExemplars adds exemplars to the series appended last, as
// Prometheus' remote-write receivers call it: right after the series'
// samples.
func (a *appender) AppendExemplars(ref storage.SeriesRef, ls labels.Labels, es []exemplar.Exemplar) (storage.SeriesRef, error) {
	if ref == 0 {
		// Append refused the series and counted it; its exemplars go
		// with it.
		a.rejected.exemplars += len(es)
		return 0, nil
	}
	n := len(a.series)
	if n == 0 || a.series[n-1].hash != uint64(ref) || !labels.Equal(a.series[n-1].ls, ls) {
		a.rejected.exemplars += len(es)
		return ref, fmt.Errorf("exemplars of series %s: %w: append its samples right before its exemplars", ls, storage.ErrNotFound)
	}
	a.addExemplars(&a.series[n-1], es)
	return ref, nil
}

func (a *appender) addExemplars(s *pendingSeries, es []exemplar.Exemplar) {
	// The caller may reuse the exemplars' labels after Append returns.
	for _, e := range es {
		e.Labels = e.Labels.Copy()
		s.exemplars = append(s.exemplars, censuspb.FromExemplar(e))
	}
}

// reject counts a refused sample, with its exemplars.
func (a *appender) reject(r censuspb.Reason, err error, isHistogram bool, exemplars int) {
	a.d.metrics.discarded[r].Inc()
	a.rejected.add(r, err, isHistogram, exemplars)
}

// Rollback drops the buffered samples.
func (a *appender) Rollback() error {
	a.d.putAppender(a)
	return nil
}

// Commit pushes every buffered series to its replicas concurrently, one
// request per ingester, and succeeds when each series reached a quorum
// (ReplicationFactor/2+1) of its replicas and nothing was refused. Refused
// samples (by Append's rules or by an ingester) make an error wrapping
// ErrInvalidSeries or ErrLimited once everything else is stored; a series
// short of its quorum makes one wrapping ErrNoQuorum. httpStatus tells what
// each means to a sender.
func (a *appender) Commit() (err error) {
	if rep := a.report; rep != nil {
		rep.floats, rep.histograms, rep.exemplars = len(a.floats), a.samples-len(a.floats), 0
		for i := range a.series {
			rep.exemplars += len(a.series[i].exemplars)
		}
		rep.rejected = a.rejected.floats + a.rejected.histograms
		rep.rejectedFloats, rep.rejectedHistograms, rep.rejectedExemplars = a.rejected.floats, a.rejected.histograms, a.rejected.exemplars
		defer func() {
			// The HTTP push gets the whole story from the report. Its
			// Prometheus handler sees only what must be sent again, so
			// that it keeps its own refusals (remote write 2.0 checks
			// labels itself) instead of failing the whole request.
			rep.commit(err)
			if !retryable(err) {
				err = nil
			}
		}()
	}
	// The appender goes back to the free list once nothing uses its
	// buffers: at once, unless pushes go on after the answer.
	var pushing <-chan struct{}
	defer func() {
		if pushing == nil {
			a.d.putAppender(a)
			return
		}
		go func() {
			<-pushing
			a.d.putAppender(a)
		}()
	}()
	rejected := a.rejected.err()
	if len(a.series) == 0 {
		return rejected
	}
	a.d.metrics.receivedSamples.Add(float64(a.samples))

	if err := a.encode(); err != nil {
		a.d.metrics.commits.WithLabelValues("rejected").Inc()
		return errors.Join(err, rejected)
	}
	b, err := a.shard()
	if err != nil {
		a.d.metrics.commits.WithLabelValues("rejected").Inc()
		return errors.Join(err, rejected)
	}
	var errs []error
	errs, pushing = a.d.push(a.ctx, b, isRetry(a.ctx))
	quorumErr := b.checkQuorum(errs)
	var delay time.Duration // The longest an overloaded ingester asked for.
	for j := range b.targets {
		if errs[j] != errPending {
			a.d.metrics.countIngesterSamples(&b.targets[j], errs[j], quorumErr == nil, isRetry(a.ctx))
			delay = max(delay, ingesterRetryDelay(errs[j]))
		}
	}
	if a.report != nil && delay > 0 {
		a.report.overloaded = true
	}
	if quorumErr != nil && delay > 0 {
		quorumErr = &overloadedError{err: quorumErr, retryAfter: delay}
	}
	if quorumErr != nil {
		a.d.metrics.commits.WithLabelValues("no_quorum").Inc()
		return errors.Join(quorumErr, rejected)
	}
	// Every series has its quorum, but an ingester may have refused part
	// of the input: report it so the sender does not retry. Other failures
	// are what replicas are for: the quorum covers them.
	refusedSamples, refused := b.refusals(errs)
	if a.report != nil {
		a.report.refused = refusedSamples
	}
	switch {
	case errors.Is(refused, ErrInvalidSeries):
		a.d.metrics.commits.WithLabelValues("invalid").Inc()
	case refused != nil:
		a.d.metrics.commits.WithLabelValues("limited").Inc()
	case rejected != nil:
		a.d.metrics.commits.WithLabelValues("invalid").Inc()
	default:
		a.d.metrics.commits.WithLabelValues("success").Inc()
	}
	return errors.Join(refused, rejected)
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
	samples  int   // Samples in its request.
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
// ingester's request from the encoded series. The batch and its requests
// are the appender's, reused by its next transaction.
func (a *appender) shard() (*batch, error) {
	r := a.d.ring
	rf := r.ReplicationFactor()
	b := &a.batch
	b.rf = rf
	b.targets = b.targets[:0]
	b.replicas = slices.Grow(b.replicas[:0], len(a.series)*rf)[:len(a.series)*rf]
	if a.index == nil {
		a.index = map[string]int{}
	}
	clear(a.index)
	for i := range a.series {
		replicas, err := r.Get(Token(a.series[i].hash), a.ringBuf)
		if err != nil {
			return nil, fmt.Errorf("%w: find replicas for series %s: %w", ErrNoQuorum, a.series[i].ls, err)
		}
		a.ringBuf = replicas
		size := censuspb.SizePushRequestSeries(len(a.seriesBytes(i)))
		for k := range rf {
			if k >= len(replicas) {
				b.replicas[i*rf+k] = -1
				continue
			}
			j, ok := a.index[replicas[k].ID]
			if !ok {
				j = len(b.targets)
				a.index[replicas[k].ID] = j
				if j < cap(b.targets) {
					// Reuse the series list and request buffer of an
					// earlier transaction's target.
					b.targets = b.targets[:j+1]
					t := &b.targets[j]
					t.instance, t.series, t.size, t.samples = replicas[k], t.series[:0], 0, 0
				} else {
					b.targets = append(b.targets, target{instance: replicas[k]})
				}
			}
			b.targets[j].series = append(b.targets[j].series, i)
			b.targets[j].size += size
			b.targets[j].samples += a.series[i].count + len(a.series[i].histograms)
			b.replicas[i*rf+k] = j
		}
	}
	for j := range b.targets {
		t := &b.targets[j]
		t.req = slices.Grow(t.req[:0], t.size)
		for _, i := range t.series {
			t.req = censuspb.AppendPushRequestSeries(t.req, a.seriesBytes(i))
		}
	}
	return b, nil
}

// checkQuorum returns an error naming the failed ingesters when any series
// was acknowledged by fewer than rf/2+1 replicas. An ingester that refused
// part of the input (InvalidArgument, ResourceExhausted when full) stored the rest
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

// refusals reports what the ingesters refused of an acknowledged push: an
// error wrapping ErrInvalidSeries if any of them refused input, else one
// wrapping ErrLimited if any was full, naming the first refusal of each
// kind; and about how many samples were refused: each replica of a series
// refuses the same samples, so the ingesters' count is divided by the
// replication factor.
func (b *batch) refusals(errs []error) (int, error) {
	var (
		invalid, limited error
		samples          int64
	)
	for j, err := range errs {
		if err == nil || !acknowledged(err) {
			continue
		}
		st, _ := status.FromError(err)
		re := newRefusalError(b.targets[j].instance.ID, st)
		samples += re.samples()
		switch {
		case st.Code() == codes.InvalidArgument && invalid == nil:
			invalid = fmt.Errorf("%w: %w", ErrInvalidSeries, re)
		case st.Code() == codes.ResourceExhausted && limited == nil:
			limited = fmt.Errorf("%w: %w", ErrLimited, re)
		}
	}
	n := int((samples + int64(b.rf) - 1) / int64(b.rf))
	if invalid != nil {
		return n, invalid
	}
	return n, limited
}

// acknowledged reports whether an ingester's answer means it stored what
// it could of its request: success, or a refusal of part of it. gRPC's own
// ResourceExhausted (a request over the ingester's size limit) stored
// nothing, and carries no PushResponse.
func acknowledged(err error) bool {
	switch status.Code(err) {
	case codes.OK, codes.InvalidArgument:
		return true
	case codes.ResourceExhausted:
		st, _ := status.FromError(err)
		return newRefusalError("", st).capacity()
	}
	return false
}

// errPending is the answer of an ingester whose push was still in flight
// when its commit was answered.
var errPending = errors.New("push still in flight")

// maxLatePushes bounds the pushes that go on after their commit was
// answered: each holds its commit's buffers until its ingester answers or
// the push timeout ends it. Beyond the bound, such pushes are canceled, and
// their ingesters miss those samples as they would have by failing.
const maxLatePushes = 256

// push sends each target of b its request concurrently, under the push
// timeout. It returns once every series has a quorum of acknowledgements,
// every target has answered, or ctx ends: a slow or hung replica does not
// hold a commit whose quorum answered already. The answers are in target
// order, errPending for pushes still in flight; those go on in the
// background, so the slow replica still gets its samples, and are counted
// when they end. The channel closes when the last push has ended and b's
// buffers are free again.
func (d *Distributor) push(ctx context.Context, b *batch, retry bool) ([]error, <-chan struct{}) {
	n := len(b.targets)
	// The pushes outlive the request once its quorum answered, so they
	// do not end with its context, only with the timeout.
	pushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.PushTimeout)
	type answer struct {
		j   int
		err error
	}
	answers := make(chan answer, n)
	for j := range b.targets {
		go func() { answers <- answer{j, d.pushOne(pushCtx, &b.targets[j])} }()
	}
	errs := make([]error, n)
	for j := range errs {
		errs[j] = errPending
	}
	q := newQuorumCount(b)
	got := 0
wait:
	for got < n && !q.met() {
		select {
		case a := <-answers:
			got++
			errs[a.j] = a.err
			if acknowledged(a.err) {
				q.ack(b, a.j)
			}
		case <-ctx.Done():
			break wait
		}
	}
	done := make(chan struct{})
	if got == n {
		cancel()
		close(done)
		return errs, done
	}
	answered := slices.Clone(errs)
	if d.latePushes.Add(int64(n-got)) > maxLatePushes {
		cancel()
	}
	go func() {
		defer close(done)
		defer cancel()
		for ; got < n; got++ {
			a := <-answers
			d.latePushes.Add(-1)
			d.metrics.countIngesterSamples(&b.targets[a.j], a.err, true, retry)
		}
	}()
	return answered, done
}

// quorumCount follows, as a commit's answers come in, how many series
// still lack a quorum of acknowledgements.
type quorumCount struct {
	need    []int // Per series, acknowledgements still needed.
	missing int   // Series with need > 0.
}

func newQuorumCount(b *batch) *quorumCount {
	quorum := b.rf/2 + 1
	series := len(b.replicas) / max(b.rf, 1)
	q := &quorumCount{need: make([]int, series), missing: series}
	for i := range q.need {
		q.need[i] = quorum
	}
	return q
}

// ack counts target j's acknowledgement for each of its series.
func (q *quorumCount) ack(b *batch, j int) {
	for _, i := range b.targets[j].series {
		if q.need[i]--; q.need[i] == 0 {
			q.missing--
		}
	}
}

func (q *quorumCount) met() bool { return q.missing == 0 }

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
