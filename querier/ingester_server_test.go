package querier_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/index"
	"github.com/prometheus/prometheus/util/teststorage"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/census-metrics/census/querier"
	"github.com/census-metrics/census/ring"

	censuspb "github.com/census-metrics/census/proto"
)

// testIngester serves censuspb.IngesterServer over a Prometheus TSDB the
// way the real ingester does: QueryStream sends the TSDB's own chunks, a
// few series per frame, and QueryStream and Series fail with
// ResourceExhausted beyond the request's max_series and max_chunks.
type testIngester struct {
	censuspb.UnimplementedIngesterServer
	db *tsdb.DB

	// failAfterFirstFrame makes QueryStream fail once it sent one frame.
	failAfterFirstFrame atomic.Bool
	// holdStreams keeps QueryStream open after the last frame until the
	// client cancels, so a test sees whether the querier releases it.
	holdStreams atomic.Bool
	openStreams atomic.Int64
	// holdBeforeSending makes QueryStream wait for the client to cancel
	// before it sends anything, as an ingester busy with a big selection.
	holdBeforeSending atomic.Bool
	// canceledStreams counts the streams whose context the client
	// canceled while QueryStream was serving them.
	canceledStreams atomic.Int64
	// holdCalls makes LabelNames, LabelValues and Series wait for the
	// client to cancel, as a hung ingester; canceledCalls counts them.
	holdCalls     atomic.Bool
	canceledCalls atomic.Int64

	// metadata is what MetricsMetadata answers, by metric family.
	metadata map[string][]metadata.Metadata

	// The last request of QueryStream and of Series.
	lastQueryStream atomic.Pointer[censuspb.QueryStreamRequest]
	lastSeries      atomic.Pointer[censuspb.SeriesRequest]
}

const seriesPerFrame = 3

func (s *testIngester) QueryStream(req *censuspb.QueryStreamRequest, stream grpc.ServerStreamingServer[censuspb.QueryStreamResponse]) error {
	s.lastQueryStream.Store(req)
	s.openStreams.Add(1)
	defer s.openStreams.Add(-1)
	defer func() {
		if stream.Context().Err() != nil {
			s.canceledStreams.Add(1)
		}
	}()
	if s.holdBeforeSending.Load() {
		<-stream.Context().Done()
		return stream.Context().Err()
	}
	ms, err := censuspb.ToMatchers(req.GetMatchers())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	q, err := s.db.ChunkQuerier(req.GetStartMs(), req.GetEndMs())
	if err != nil {
		return err
	}
	defer q.Close()
	set := q.Select(stream.Context(), true, nil, ms...)
	resp := &censuspb.QueryStreamResponse{}
	frames := 0
	send := func() error {
		if err := stream.Send(resp); err != nil {
			return err
		}
		frames++
		resp = &censuspb.QueryStreamResponse{}
		if s.failAfterFirstFrame.Load() {
			return status.Error(codes.Internal, "injected stream failure")
		}
		return nil
	}
	var (
		it             chunks.Iterator
		nSeries, nChks int64
	)
	for set.Next() {
		if nSeries++; req.GetMaxSeries() > 0 && nSeries > req.GetMaxSeries() {
			return censuspb.QueryLimitStatus(censuspb.QueryLimitMaxSeries, fmt.Sprintf("query limit exceeded: the query selects more than %d series (--query.max-series)", req.GetMaxSeries())).Err()
		}
		series := set.At()
		ss := &censuspb.StreamSeries{Labels: censuspb.FromLabels(nil, series.Labels())}
		it = series.Iterator(it)
		for it.Next() {
			if nChks++; req.GetMaxChunks() > 0 && nChks > req.GetMaxChunks() {
				return censuspb.QueryLimitStatus(censuspb.QueryLimitMaxChunks, fmt.Sprintf("query limit exceeded: the query reads more than %d chunks (--query.max-chunks)", req.GetMaxChunks())).Err()
			}
			m := it.At()
			ss.Chunks = append(ss.Chunks, &censuspb.Chunk{
				MinTimeMs: m.MinTime,
				MaxTimeMs: m.MaxTime,
				Encoding:  censuspb.Chunk_Encoding(m.Chunk.Encoding()),
				Data:      m.Chunk.Bytes(),
			})
		}
		if err := it.Err(); err != nil {
			return err
		}
		resp.Series = append(resp.Series, ss)
		if len(resp.Series) == seriesPerFrame {
			if err := send(); err != nil {
				return err
			}
		}
	}
	if err := set.Err(); err != nil {
		return err
	}
	if len(resp.Series) > 0 || frames == 0 {
		if err := send(); err != nil {
			return err
		}
	}
	if s.holdStreams.Load() {
		<-stream.Context().Done()
	}
	return nil
}

// hold waits, while holdCalls is set, for the client to cancel the call of
// ctx.
func (s *testIngester) hold(ctx context.Context) error {
	if !s.holdCalls.Load() {
		return nil
	}
	<-ctx.Done()
	s.canceledCalls.Add(1)
	return ctx.Err()
}

func (s *testIngester) LabelNames(ctx context.Context, req *censuspb.LabelNamesRequest) (*censuspb.LabelNamesResponse, error) {
	if err := s.hold(ctx); err != nil {
		return nil, err
	}
	ms, q, err := s.querier(req.GetMatchers(), req.GetStartMs(), req.GetEndMs())
	if err != nil {
		return nil, err
	}
	defer q.Close()
	names, _, err := q.LabelNames(ctx, &storage.LabelHints{Limit: int(req.GetLimit())}, ms...)
	return &censuspb.LabelNamesResponse{Names: names}, err
}

func (s *testIngester) LabelValues(ctx context.Context, req *censuspb.LabelValuesRequest) (*censuspb.LabelValuesResponse, error) {
	if err := s.hold(ctx); err != nil {
		return nil, err
	}
	ms, q, err := s.querier(req.GetMatchers(), req.GetStartMs(), req.GetEndMs())
	if err != nil {
		return nil, err
	}
	defer q.Close()
	values, _, err := q.LabelValues(ctx, req.GetName(), &storage.LabelHints{Limit: int(req.GetLimit())}, ms...)
	return &censuspb.LabelValuesResponse{Values: values}, err
}

func (s *testIngester) Series(ctx context.Context, req *censuspb.SeriesRequest) (*censuspb.SeriesResponse, error) {
	if err := s.hold(ctx); err != nil {
		return nil, err
	}
	s.lastSeries.Store(req)
	ms, q, err := s.querier(req.GetMatchers(), req.GetStartMs(), req.GetEndMs())
	if err != nil {
		return nil, err
	}
	defer q.Close()
	hints := &storage.SelectHints{Start: req.GetStartMs(), End: req.GetEndMs(), Func: "series", Limit: int(req.GetLimit())}
	set := q.Select(ctx, true, hints, ms...)
	resp := &censuspb.SeriesResponse{}
	for set.Next() {
		if req.GetMaxSeries() > 0 && int64(len(resp.Series)) >= req.GetMaxSeries() {
			return nil, censuspb.QueryLimitStatus(censuspb.QueryLimitMaxSeries, fmt.Sprintf("query limit exceeded: the request selects more than %d series (--query.max-series)", req.GetMaxSeries())).Err()
		}
		resp.Series = append(resp.Series, &censuspb.SeriesLabels{Labels: censuspb.FromLabels(nil, set.At().Labels())})
	}
	return resp, set.Err()
}

func (s *testIngester) QueryExemplars(ctx context.Context, req *censuspb.ExemplarsRequest) (*censuspb.ExemplarsResponse, error) {
	var sets [][]*labels.Matcher
	for _, ms := range req.GetMatcherSets() {
		m, err := censuspb.ToMatchers(ms.GetMatchers())
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		sets = append(sets, m)
	}
	eq, err := s.db.ExemplarQuerier(ctx)
	if err != nil {
		return nil, err
	}
	res, err := eq.Select(req.GetStartMs(), req.GetEndMs(), sets...)
	if err != nil {
		return nil, err
	}
	resp := &censuspb.ExemplarsResponse{}
	for _, r := range res {
		se := &censuspb.SeriesExemplars{Labels: censuspb.FromLabels(nil, r.SeriesLabels)}
		for _, e := range r.Exemplars {
			se.Exemplars = append(se.Exemplars, censuspb.FromExemplar(e))
		}
		resp.Series = append(resp.Series, se)
	}
	return resp, nil
}

func (s *testIngester) MetricsMetadata(_ context.Context, req *censuspb.MetricsMetadataRequest) (*censuspb.MetricsMetadataResponse, error) {
	resp := &censuspb.MetricsMetadataResponse{}
	families := 0
	for family, mds := range s.metadata {
		if req.GetMetric() != "" && family != req.GetMetric() {
			continue
		}
		if req.GetLimit() > 0 && int64(families) >= req.GetLimit() {
			break
		}
		families++
		for i, md := range mds {
			if req.GetLimitPerMetric() > 0 && int64(i) >= req.GetLimitPerMetric() {
				break
			}
			resp.Metadata = append(resp.Metadata, &censuspb.MetricMetadata{MetricFamily: family, Metadata: censuspb.FromMetadata(md)})
		}
	}
	return resp, nil
}

func (s *testIngester) TSDBStats(ctx context.Context, req *censuspb.TSDBStatsRequest) (*censuspb.TSDBStatsResponse, error) {
	name := req.GetLabelName()
	if name == "" {
		name = labels.MetricName
	}
	st := s.db.Head().Stats(name, int(req.GetLimit()))
	resp := &censuspb.TSDBStatsResponse{
		NumSeries:     st.NumSeries,
		MinTimeMs:     st.MinTime,
		MaxTimeMs:     st.MaxTime,
		NumLabelPairs: int64(st.IndexPostingStats.NumLabelPairs),
	}
	conv := func(in []index.Stat) []*censuspb.Stat {
		var out []*censuspb.Stat
		for _, x := range in {
			out = append(out, &censuspb.Stat{Name: x.Name, Count: x.Count})
		}
		return out
	}
	resp.CardinalityMetrics = conv(st.IndexPostingStats.CardinalityMetricsStats)
	resp.CardinalityLabels = conv(st.IndexPostingStats.CardinalityLabelStats)
	resp.LabelValueBytes = conv(st.IndexPostingStats.LabelValueStats)
	resp.LabelValuePairs = conv(st.IndexPostingStats.LabelValuePairsStats)
	// The head's chunk count, as its prometheus_tsdb_head_chunks gauge.
	q, err := s.db.ChunkQuerier(math.MinInt64, math.MaxInt64)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	set := q.Select(ctx, false, nil, labels.MustNewMatcher(labels.MatchRegexp, labels.MetricName, ".+"))
	var it chunks.Iterator
	for set.Next() {
		it = set.At().Iterator(it)
		for it.Next() {
			resp.ChunkCount++
		}
	}
	return resp, set.Err()
}

func (s *testIngester) querier(wire []*censuspb.LabelMatcher, mint, maxt int64) ([]*labels.Matcher, storage.Querier, error) {
	ms, err := censuspb.ToMatchers(wire)
	if err != nil {
		return nil, nil, status.Error(codes.InvalidArgument, err.Error())
	}
	q, err := s.db.Querier(mint, maxt)
	return ms, q, err
}

// ingesterProc is a test ingester serving on a loopback port.
type ingesterProc struct {
	*testIngester
	desc ring.InstanceDesc
	srv  *grpc.Server
}

// stop takes the ingester down; the querier's connections to it fail.
func (p *ingesterProc) stop() { p.srv.Stop() }

// startIngester serves db as ingester id on 127.0.0.1:0 until the test ends.
func startIngester(t testing.TB, id string, db *tsdb.DB) *ingesterProc {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ing := &testIngester{db: db}
	srv := grpc.NewServer(grpc.MaxSendMsgSize(censuspb.MaxMessageSize))
	censuspb.RegisterIngesterServer(srv, ing)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("serve ingester %s: %v", id, err)
		}
	})
	return &ingesterProc{testIngester: ing, desc: ring.InstanceDesc{ID: id, Addr: lis.Addr().String()}, srv: srv}
}

// fakeRing is a ring of fixed instances: ReadInstances returns instances,
// the healthy ones, and Instances also those in unhealthy, whose heartbeat
// is stale, as *ring.Ring's Instances does.
type fakeRing struct {
	instances []ring.InstanceDesc
	unhealthy []ring.InstanceDesc
	rf        int
}

func (r *fakeRing) ReadInstances() []ring.InstanceDesc { return r.instances }
func (r *fakeRing) ReplicationFactor() int             { return r.rf }

func (r *fakeRing) Instances() []ring.InstanceDesc {
	return slices.Concat(r.instances, r.unhealthy)
}

// newTestDB returns an empty TSDB that is closed when the test ends.
func newTestDB(t testing.TB) *tsdb.DB {
	t.Helper()
	return teststorage.New(t).DB
}

// sample is one float sample, comparable with require.Equal.
type sample struct {
	T int64
	F float64
}

// series is one series and its samples, oldest first.
type series struct {
	lset    labels.Labels
	samples []sample
}

// appendSeries stores every sample of ss in db.
func appendSeries(t testing.TB, db storage.AppendableV2, ss ...series) {
	t.Helper()
	app := db.AppenderV2(context.Background())
	for _, s := range ss {
		var ref storage.SeriesRef
		for _, smp := range s.samples {
			var err error
			ref, err = app.Append(ref, s.lset, 0, smp.T, smp.F, nil, nil, storage.AppendV2Options{})
			require.NoError(t, err)
		}
	}
	require.NoError(t, app.Commit())
}

// cluster is a Queryable over test ingesters.
type cluster struct {
	ring      *fakeRing
	ingesters []*ingesterProc
	queryable *querier.Queryable
	reg       *prometheus.Registry // The queryable's metrics.
}

// newCluster serves each db as one ingester, ingester-0 ..., behind a ring
// with replication factor rf.
func newCluster(t testing.TB, rf int, dbs ...*tsdb.DB) *cluster {
	t.Helper()
	c := &cluster{ring: &fakeRing{rf: rf}, reg: prometheus.NewPedanticRegistry()}
	for i, db := range dbs {
		p := startIngester(t, fmt.Sprintf("ingester-%d", i), db)
		c.ingesters = append(c.ingesters, p)
		c.ring.instances = append(c.ring.instances, p.desc)
	}
	pool := censuspb.NewClientPool()
	t.Cleanup(func() { require.NoError(t, pool.Close()) })
	c.queryable = querier.NewQueryable(c.ring, pool, nil, c.reg)
	return c
}

// The ring package's Ring is what the querier consumes.
var _ querier.Ring = (*ring.Ring)(nil)
