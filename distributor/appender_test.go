package distributor_test

import (
	"context"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/metadata"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/census-metrics/census/distributor"
	censuspb "github.com/census-metrics/census/proto"
	"github.com/census-metrics/census/ring"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeIngester records what it is pushed, or fails with err.
type fakeIngester struct {
	censuspb.UnimplementedIngesterServer
	id string

	mtx    sync.Mutex // Guards the fields below.
	err    error
	hold   chan struct{}          // If set, a push waits until it is closed: a hung ingester.
	held   chan struct{}          // If set, gets a value as a push starts to wait on hold.
	pushed map[string][]float64   // series (as text) -> values, in push order
	series []*censuspb.TimeSeries // every series pushed, in push order
}

func (f *fakeIngester) Push(ctx context.Context, req *censuspb.PushRequest) (*censuspb.PushResponse, error) {
	f.mtx.Lock()
	hold, held := f.hold, f.held
	f.mtx.Unlock()
	if hold != nil {
		if held != nil {
			held <- struct{}{}
		}
		select {
		case <-hold:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	f.mtx.Lock()
	defer f.mtx.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	f.series = append(f.series, req.Series...)
	for _, ts := range req.Series {
		key := censuspb.FormatLabelPairs(ts.Labels)
		for _, s := range ts.Samples {
			f.pushed[key] = append(f.pushed[key], s.Value)
		}
	}
	return &censuspb.PushResponse{}, nil
}

func (f *fakeIngester) allSeries() []*censuspb.TimeSeries {
	f.mtx.Lock()
	defer f.mtx.Unlock()
	return append([]*censuspb.TimeSeries(nil), f.series...)
}

func (f *fakeIngester) setErr(err error) {
	f.mtx.Lock()
	defer f.mtx.Unlock()
	f.err = err
}

func (f *fakeIngester) values(ls labels.Labels) []float64 {
	f.mtx.Lock()
	defer f.mtx.Unlock()
	return f.pushed[censuspb.FormatLabelPairs(censuspb.FromLabels(nil, ls))]
}

// cluster starts n fake ingesters on loopback and a distributor over them.
func cluster(t *testing.T, n, rf int) (*distributor.Distributor, []*fakeIngester, *prometheus.Registry) {
	t.Helper()
	return clusterWithConfig(t, n, rf, distributor.Config{PushTimeout: 5 * time.Second})
}

// clusterWithConfig is cluster with the distributor configured by cfg.
func clusterWithConfig(t *testing.T, n, rf int, cfg distributor.Config) (*distributor.Distributor, []*fakeIngester, *prometheus.Registry) {
	t.Helper()
	fr := &distributor.FakeRing{RF: rf}
	var fakes []*fakeIngester
	for i := range n {
		f := &fakeIngester{id: string(rune('a' + i)), pushed: map[string][]float64{}}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		srv := grpc.NewServer()
		censuspb.RegisterIngesterServer(srv, f)
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(srv.Stop)
		fakes = append(fakes, f)
		fr.Instances = append(fr.Instances, ring.InstanceDesc{ID: "ingester-" + f.id, Addr: ln.Addr().String(), State: ring.ACTIVE})
	}
	clients := censuspb.NewClientPool()
	t.Cleanup(func() { _ = clients.Close() })
	reg := prometheus.NewPedanticRegistry()
	d, err := distributor.New(cfg, fr, clients, nil, reg)
	require.NoError(t, err)
	return d, fakes, reg
}

// replicaIndexes returns which fake ingesters own ls under FakeRing.
func replicaIndexes(ls labels.Labels, n, rf int) []int {
	first := (&distributor.FakeRing{Instances: make([]ring.InstanceDesc, n)}).First(distributor.Token(distributor.SeriesHash(ls)))
	var out []int
	for k := range min(rf, n) {
		out = append(out, (first+k)%n)
	}
	sort.Ints(out)
	return out
}

func testSeries(n int) []labels.Labels {
	out := make([]labels.Labels, n)
	for i := range out {
		out[i] = labels.FromStrings("__name__", "requests_total", "instance", "host-"+string(rune('A'+i%26))+string(rune('a'+i/26)), "job", "api")
	}
	return out
}

func TestAppender_ShardsEverySeriesToItsReplicas(t *testing.T) {
	const n, rf = 5, 3
	d, fakes, reg := cluster(t, n, rf)
	series := testSeries(50)

	app := d.AppenderV2(context.Background())
	refs := make([]storage.SeriesRef, len(series))
	for i, ls := range series {
		ref, err := app.Append(0, ls, 0, 1000, float64(i), nil, nil, storage.AOptions{})
		require.NoError(t, err)
		require.Equal(t, storage.SeriesRef(distributor.SeriesHash(ls)), ref, "the ref is the series hash")
		refs[i] = ref
		// A second sample of the same series joins the first.
		_, err = app.Append(ref, ls, 0, 2000, float64(i)+0.5, nil, nil, storage.AOptions{})
		require.NoError(t, err)
	}
	require.NoError(t, app.Commit())

	// The commit answers once a quorum of each series' replicas stored
	// it; the last replica may store it a moment later.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for i, ls := range series {
			owners := replicaIndexes(ls, n, rf)
			for j, f := range fakes {
				if slicesContains(owners, j) {
					assert.Equal(c, []float64{float64(i), float64(i) + 0.5}, f.values(ls), "series %s on owner %d", ls, j)
				} else {
					assert.Empty(c, f.values(ls), "series %s on non-owner %d", ls, j)
				}
			}
		}
	}, 10*time.Second, 5*time.Millisecond)
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP census_distributor_received_samples_total Samples appended to the distributor, before replication.
# TYPE census_distributor_received_samples_total counter
census_distributor_received_samples_total 100
# HELP census_distributor_commits_total Commits of appended samples by result: success, invalid (some input refused by ingesters), limited (some input over an ingester limit), no_quorum, rejected (refused before sending).
# TYPE census_distributor_commits_total counter
census_distributor_commits_total{result="success"} 1
`), "census_distributor_received_samples_total", "census_distributor_commits_total"))
}

func slicesContains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestAppender_CachedRefSkipsHashing(t *testing.T) {
	const n, rf = 4, 1
	d, fakes, _ := cluster(t, n, rf)
	a, b := labels.FromStrings("__name__", "a"), labels.FromStrings("__name__", "b")
	require.NotEqual(t, replicaIndexes(a, n, rf), replicaIndexes(b, n, rf), "test needs series on different ingesters")

	// The scrape loop hands back the ref of a's first append: routing then
	// follows the ref without looking at the labels again.
	app := d.AppenderV2(context.Background())
	_, err := app.Append(storage.SeriesRef(distributor.SeriesHash(a)), b, 0, 1000, 7, nil, nil, storage.AOptions{})
	require.NoError(t, err)
	require.NoError(t, app.Commit())
	require.Equal(t, []float64{7}, fakes[replicaIndexes(a, n, rf)[0]].values(b))
	require.Empty(t, fakes[replicaIndexes(b, n, rf)[0]].values(b))
}

func TestAppender_Quorum(t *testing.T) {
	for _, tc := range []struct {
		name    string
		failing []int
		wantErr bool
	}{
		{name: "all replicas up", failing: nil},
		{name: "one of three down", failing: []int{1}},
		{name: "two of three down", failing: []int{0, 2}, wantErr: true},
		{name: "all down", failing: []int{0, 1, 2}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, fakes, _ := cluster(t, 3, 3)
			for _, i := range tc.failing {
				fakes[i].setErr(status.Error(codes.Unavailable, "disk on fire"))
			}
			app := d.AppenderV2(context.Background())
			for _, ls := range testSeries(10) {
				_, err := app.Append(0, ls, 0, 1000, 1, nil, nil, storage.AOptions{})
				require.NoError(t, err)
			}
			err := app.Commit()
			if !tc.wantErr {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, distributor.ErrNoQuorum)
			require.ErrorContains(t, err, "10 series stored on fewer than 2 replicas")
			for _, i := range tc.failing {
				require.ErrorContains(t, err, "ingester-"+fakes[i].id)
				require.ErrorContains(t, err, "disk on fire")
			}
		})
	}
}

func TestAppender_InvalidArgumentCountsAsAcknowledged(t *testing.T) {
	d, fakes, _ := cluster(t, 3, 3)
	// Every replica refuses the same input, as ingesters do.
	for _, f := range fakes {
		f.setErr(status.Error(codes.InvalidArgument, "out of order sample"))
	}
	app := d.AppenderV2(context.Background())
	_, err := app.Append(0, labels.FromStrings("__name__", "x"), 0, 1000, 1, nil, nil, storage.AOptions{})
	require.NoError(t, err)
	err = app.Commit()
	require.ErrorIs(t, err, distributor.ErrInvalidSeries)
	require.NotErrorIs(t, err, distributor.ErrNoQuorum)
	require.ErrorContains(t, err, "out of order sample")
}

func TestAppender_EmptyRingFails(t *testing.T) {
	d, _, _ := cluster(t, 0, 3)
	app := d.AppenderV2(context.Background())
	_, err := app.Append(0, labels.FromStrings("__name__", "x"), 0, 1000, 1, nil, nil, storage.AOptions{})
	require.NoError(t, err)
	err = app.Commit()
	require.ErrorIs(t, err, distributor.ErrNoQuorum)
	require.ErrorIs(t, err, ring.ErrEmptyRing)
}

func TestAppender_RollbackSendsNothing(t *testing.T) {
	d, fakes, _ := cluster(t, 1, 1)
	app := d.AppenderV2(context.Background())
	_, err := app.Append(0, labels.FromStrings("__name__", "x"), 0, 1000, 1, nil, nil, storage.AOptions{})
	require.NoError(t, err)
	require.NoError(t, app.Rollback())
	require.Empty(t, fakes[0].values(labels.FromStrings("__name__", "x")))
}

func TestAppender_CarriesHistogramsExemplarsAndMetadata(t *testing.T) {
	d, fakes, _ := cluster(t, 1, 1)
	ls := labels.FromStrings("__name__", "rpc_duration_seconds", "job", "api")
	h := &histogram.Histogram{Count: 3, Sum: 1.5, Schema: 1, PositiveSpans: []histogram.Span{{Length: 2}}, PositiveBuckets: []int64{1, 1}}
	fh := h.ToFloat(nil)
	ex := labels.FromStrings("trace_id", "abc")
	meta := metadata.Metadata{Type: model.MetricTypeHistogram, Help: "RPC latency.", Unit: "seconds"}

	app := d.AppenderV2(context.Background())
	counter := labels.FromStrings("__name__", "rpc_total")
	_, err := app.Append(0, counter, 500, 1000, 3, nil, nil, storage.AOptions{})
	require.NoError(t, err)
	ref, err := app.Append(0, ls, 400, 1000, 0, h, nil, storage.AOptions{
		Metadata:  meta,
		Exemplars: []exemplar.Exemplar{{Labels: ex, Value: 0.7, Ts: 990, HasTs: true}},
	})
	require.NoError(t, err)
	_, err = app.Append(ref, ls, 0, 2000, 0, nil, fh, storage.AOptions{Metadata: meta})
	require.NoError(t, err)
	require.NoError(t, app.Commit())

	fakes[0].mtx.Lock()
	defer fakes[0].mtx.Unlock()
	require.Len(t, fakes[0].series, 2, "both histogram samples travel in one series")
	require.Equal(t, int64(500), fakes[0].series[0].Samples[0].StartTimestampMs, "start timestamps travel")
	got := fakes[0].series[1]
	require.Equal(t, int64(400), got.Histograms[0].StartTimestampMs)
	require.Len(t, got.Histograms, 2)
	require.Equal(t, h, got.Histograms[0].ToHistogram())
	require.Equal(t, int64(1000), got.Histograms[0].TimestampMs)
	require.Equal(t, fh, got.Histograms[1].ToFloatHistogram())
	require.Equal(t, int64(2000), got.Histograms[1].TimestampMs)
	var b labels.ScratchBuilder
	e, err := censuspb.ToExemplar(&b, got.Exemplars[0])
	require.NoError(t, err)
	require.Equal(t, exemplar.Exemplar{Labels: ex, Value: 0.7, Ts: 990, HasTs: true}, e)
	require.Equal(t, meta, got.Metadata.ToMetadata())
}

func TestAppender_CountsSamplesPerIngester(t *testing.T) {
	d, fakes, reg := cluster(t, 3, 3)
	fakes[2].setErr(status.Error(codes.Unavailable, "gone"))
	commit := func(ctx context.Context) error {
		app := d.AppenderV2(ctx)
		for _, ls := range testSeries(10) {
			_, err := app.Append(0, ls, 0, 1000, 1, nil, nil, storage.AOptions{})
			require.NoError(t, err)
		}
		return app.Commit()
	}
	require.NoError(t, commit(context.Background()))
	// A second failure leaves the series short of their quorum; the
	// caller sends them again, marked as a retry.
	fakes[1].setErr(status.Error(codes.Unavailable, "gone"))
	require.ErrorIs(t, commit(context.Background()), distributor.ErrNoQuorum)
	fakes[1].setErr(nil)
	require.NoError(t, commit(distributor.RetryContext(context.Background())))

	// A failure that comes after the quorum answered is counted when it
	// comes.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP census_distributor_ingester_samples_total Samples pushed to each ingester by result: sent (acknowledged), failed (the push failed), retried (sent again after a failed commit), dropped (failed while the other replicas made the quorum, so never sent to it again).
# TYPE census_distributor_ingester_samples_total counter
census_distributor_ingester_samples_total{ingester="ingester-a",result="sent"} 30
census_distributor_ingester_samples_total{ingester="ingester-a",result="retried"} 10
census_distributor_ingester_samples_total{ingester="ingester-b",result="sent"} 20
census_distributor_ingester_samples_total{ingester="ingester-b",result="failed"} 10
census_distributor_ingester_samples_total{ingester="ingester-b",result="retried"} 10
census_distributor_ingester_samples_total{ingester="ingester-c",result="failed"} 30
census_distributor_ingester_samples_total{ingester="ingester-c",result="dropped"} 20
census_distributor_ingester_samples_total{ingester="ingester-c",result="retried"} 10
`), "census_distributor_ingester_samples_total"))
	}, 10*time.Second, 10*time.Millisecond)
}

// TestAppender_QuorumAnswersWithoutTheHungReplica: with one of three
// replicas hung, a commit is answered once the other two stored it, and
// the hung one still gets the samples when it wakes up.
func TestAppender_QuorumAnswersWithoutTheHungReplica(t *testing.T) {
	d, fakes, reg := clusterWithConfig(t, 3, 3, distributor.Config{PushTimeout: time.Minute})
	hold := make(chan struct{})
	fakes[2].mtx.Lock()
	fakes[2].hold = hold
	fakes[2].mtx.Unlock()

	app := d.AppenderV2(context.Background())
	series := testSeries(10)
	for _, ls := range series {
		_, err := app.Append(0, ls, 0, 1000, 1, nil, nil, storage.AOptions{})
		require.NoError(t, err)
	}
	// Commit returns while the hung replica still holds its push: it
	// cannot have waited for it.
	require.NoError(t, app.Commit())
	require.Empty(t, fakes[2].allSeries())
	for _, ls := range series {
		require.Equal(t, []float64{1}, fakes[0].values(ls))
		require.Equal(t, []float64{1}, fakes[1].values(ls))
	}

	// The next commit reuses no buffer of the push still in flight.
	app = d.AppenderV2(context.Background())
	for _, ls := range series {
		_, err := app.Append(0, ls, 0, 2000, 2, nil, nil, storage.AOptions{})
		require.NoError(t, err)
	}
	require.NoError(t, app.Commit())

	close(hold)
	require.Eventually(t, func() bool { return len(fakes[2].allSeries()) == 20 }, 10*time.Second, 5*time.Millisecond)
	for _, ls := range series {
		require.ElementsMatch(t, []float64{1, 2}, fakes[2].values(ls), "the hung replica got both commits' samples, intact")
	}
	// The late push is counted when it ends.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP census_distributor_ingester_samples_total Samples pushed to each ingester by result: sent (acknowledged), failed (the push failed), retried (sent again after a failed commit), dropped (failed while the other replicas made the quorum, so never sent to it again).
# TYPE census_distributor_ingester_samples_total counter
census_distributor_ingester_samples_total{ingester="ingester-a",result="sent"} 20
census_distributor_ingester_samples_total{ingester="ingester-b",result="sent"} 20
census_distributor_ingester_samples_total{ingester="ingester-c",result="sent"} 20
`), "census_distributor_ingester_samples_total"))
	}, 10*time.Second, 5*time.Millisecond)
}
