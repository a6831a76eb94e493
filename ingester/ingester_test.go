package ingester_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/tsdbutil"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/census-metrics/census/ingester"
	censuspb "github.com/census-metrics/census/proto"
)

func TestConfig(t *testing.T) {
	defaults := func(change func(*ingester.Config)) ingester.Config {
		cfg := ingester.Config{
			StoragePath:  "./data",
			WALFsync:     true,
			Retention:    model.Duration(15 * 24 * time.Hour),
			MaxExemplars: 100_000,
			Limits: ingester.Limits{
				MaxRequestBytes:      64 << 20,
				MaxInflightPushes:    512,
				MaxInflightPushBytes: 512 << 20,
			},
		}
		if change != nil {
			change(&cfg)
		}
		return cfg
	}
	for _, tc := range []struct {
		name     string
		args     []string
		want     ingester.Config
		parseErr string
		wantErr  string
	}{
		{name: "default", want: defaults(nil)},
		{name: "storage path", args: []string{"--storage.path=/var/lib/census"}, want: defaults(func(c *ingester.Config) { c.StoragePath = "/var/lib/census" })},
		{name: "no fsync", args: []string{"--storage.wal-fsync=false"}, want: defaults(func(c *ingester.Config) { c.WALFsync = false })},
		{
			name: "retention and window", args: []string{"--storage.retention=8w", "--storage.retention-size=512MB", "--storage.out-of-order-window=10m"},
			want: defaults(func(c *ingester.Config) {
				c.Retention = model.Duration(8 * 7 * 24 * time.Hour)
				c.RetentionSize = 512 << 20
				c.OutOfOrderWindow = model.Duration(10 * time.Minute)
			}),
		},
		{
			name: "limits", args: []string{"--ingester.max-series=5000", "--ingester.max-series-per-metric=100", "--ingester.max-request-bytes=1.5MiB"},
			want: defaults(func(c *ingester.Config) {
				c.Limits.MaxSeries, c.Limits.MaxSeriesPerMetric = 5000, 100
				c.Limits.MaxRequestBytes = 3 << 19
			}),
		},
		{name: "min free bytes", args: []string{"--storage.min-free-bytes=1GB"}, want: defaults(func(c *ingester.Config) { c.MinFreeBytes = 1 << 30 })},
		{name: "empty storage path", args: []string{"--storage.path="}, want: defaults(func(c *ingester.Config) { c.StoragePath = "" }), wantErr: "--storage.path must not be empty"},
		{name: "zero retention", args: []string{"--storage.retention=0s"}, want: defaults(func(c *ingester.Config) { c.Retention = 0 }), wantErr: "--storage.retention must be positive, got 0s"},
		{name: "negative limit", args: []string{"--ingester.max-series-per-metric=-1"}, want: defaults(func(c *ingester.Config) { c.Limits.MaxSeriesPerMetric = -1 }), wantErr: "--ingester.max-series-per-metric must not be negative, got -1"},
		{name: "request bigger than any message", args: []string{"--ingester.max-request-bytes=128MB"}, want: defaults(func(c *ingester.Config) { c.Limits.MaxRequestBytes = 128 << 20 }), wantErr: "--ingester.max-request-bytes must be between 1KB and 64MB, got 128MB"},
		{name: "size without a number", args: []string{"--storage.retention-size=GB"}, parseErr: `invalid size "GB"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cfg ingester.Config
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			cfg.RegisterFlags(fs)
			err := fs.Parse(tc.args)
			if tc.parseErr != "" {
				require.ErrorContains(t, err, tc.parseErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, cfg)
			err = cfg.Validate()
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.EqualError(t, err, tc.wantErr)
			_, err = ingester.New(cfg, nil, nil)
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestByteSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ingester.ByteSize
		out  string
	}{
		{"0", 0, "0"},
		{"100", 100, "100B"},
		{"100B", 100, "100B"},
		{"2KB", 2048, "2KB"},
		{"2kib", 2048, "2KB"},
		{"512MB", 512 << 20, "512MB"},
		{"1.5GB", 3 << 29, "1536MB"},
		{"10TB", 10 << 40, "10TB"},
		{" 3 PB ", 3 << 50, "3PB"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			var b ingester.ByteSize
			require.NoError(t, b.Set(tc.in))
			require.Equal(t, tc.want, b)
			require.Equal(t, tc.out, b.String())
		})
	}
	for _, bad := range []string{"", "MB", "-1MB", "1XB", "NaN", "1e30PB"} {
		var b ingester.ByteSize
		require.Error(t, b.Set(bad), bad)
	}
}

func TestIngester_NotServingUntilRun(t *testing.T) {
	cfg := testConfig(t.TempDir())
	ing, err := ingester.New(cfg, nil, nil)
	require.NoError(t, err)
	require.EqualError(t, ing.Ready(), "ingester is starting: not running yet")
	_, err = ing.Push(context.Background(), &censuspb.PushRequest{Series: []*censuspb.TimeSeries{series(pairs("__name__", "up"), sample{T: 1, V: 1})}})
	err = ingester.ToStatus(err)
	require.Equal(t, codes.Unavailable, status.Code(err), "error: %v", err)
	require.Contains(t, status.Convert(err).Message(), "ingester is starting")

	// Run opens the TSDB and serves until its context ends; it runs once.
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- ing.Run(ctx) }()
	waitReady(t, ing, ran)
	require.EqualError(t, ing.Run(ctx), "ingester already ran: Run may be called only once")
	cancel()
	require.NoError(t, <-ran)
	require.EqualError(t, ing.Ready(), "ingester is stopping")
}

func TestIngester_Restart(t *testing.T) {
	dir := t.TempDir()
	a := []string{"__name__", "up", "job", "a"}
	b := []string{"__name__", "up", "job", "b"}
	want := []streamedSeries{{fmtLabels(a...), linear(1000, 1000, 10)}, {fmtLabels(b...), linear(5000, 1000, 3)}}

	first := startIngester(t, dir)
	push(t, first.client, series(pairs(a...), linear(1000, 1000, 5)...), series(pairs(b...), linear(5000, 1000, 3)...))
	push(t, first.client, series(pairs(a...), linear(6000, 1000, 5)...))
	first.stop()

	// A stopped ingester says so, and refuses requests as Unavailable so a
	// client tries another replica.
	require.EqualError(t, first.ing.Ready(), "ingester is stopping")
	_, err := first.ing.Push(context.Background(), &censuspb.PushRequest{Series: []*censuspb.TimeSeries{series(pairs(a...), sample{T: 20_000, V: 1})}})
	require.Equal(t, codes.Unavailable, status.Code(ingester.ToStatus(err)), "error: %v", err)
	_, err = first.ing.LabelNames(context.Background(), &censuspb.LabelNamesRequest{EndMs: 1})
	require.Equal(t, codes.Unavailable, status.Code(ingester.ToStatus(err)), "error: %v", err)

	// The clean stop wrote a head snapshot, so the restart replays no WAL
	// record, and everything acknowledged is back.
	second := startIngester(t, dir)
	got, _ := queryStream(t, second.client, 0, 100_000, labels.MustNewMatcher(labels.MatchEqual, "__name__", "up"))
	require.Equal(t, want, got)
	require.NoError(t, testutil.GatherAndCompare(second.reg, strings.NewReader(`
# HELP prometheus_tsdb_snapshot_replay_error_total Total number snapshot replays that failed.
# TYPE prometheus_tsdb_snapshot_replay_error_total counter
prometheus_tsdb_snapshot_replay_error_total 0
`), "prometheus_tsdb_snapshot_replay_error_total"))
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var snapshots []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "chunk_snapshot.") {
			snapshots = append(snapshots, e.Name())
		}
	}
	require.Len(t, snapshots, 1, "the head snapshot of the clean stop, in %v", entries)

	// And the restarted ingester takes the series where they left off.
	push(t, second.client, series(pairs(b...), sample{T: 8000, V: 8000}))
	got, _ = queryStream(t, second.client, 0, 100_000, labels.MustNewMatcher(labels.MatchEqual, "job", "b"))
	require.Equal(t, []streamedSeries{{fmtLabels(b...), append(linear(5000, 1000, 3), sample{T: 8000, V: 8000})}}, got)
}

// TestIngester_ConcurrentPushAndQuery streams series while they are appended
// to; under -race it proves the chunk bytes sent are never written
// concurrently, and every answer must decode to a prefix of what is pushed.
func TestIngester_ConcurrentPushAndQuery(t *testing.T) {
	const (
		pushers         = 3
		seriesPerPusher = 5
		pushes          = 150 // More than one head chunk of 120 samples.
		queriers        = 2
	)
	ti := startIngester(t, t.TempDir())
	ctx := context.Background()

	var pushWG sync.WaitGroup
	done := make(chan struct{})
	errs := make(chan error, pushers+queriers)
	for p := range pushers {
		pushWG.Go(func() {
			for n := range pushes {
				ts := int64(n+1) * 1000
				req := &censuspb.PushRequest{}
				for s := range seriesPerPusher {
					req.Series = append(req.Series, series(pairs("__name__", "c", "p", fmt.Sprint(p), "s", fmt.Sprint(s)), sample{T: ts, V: float64(ts)}))
				}
				if _, err := ti.client.Push(ctx, req); err != nil {
					errs <- fmt.Errorf("push %d of pusher %d: %w", n, p, err)
					return
				}
			}
		})
	}
	var queryWG sync.WaitGroup
	for range queriers {
		queryWG.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				got, _, err := readStream(ti.client, 0, int64(pushes+1)*1000, labels.MustNewMatcher(labels.MatchEqual, "__name__", "c"))
				if err != nil {
					errs <- err
					return
				}
				for _, s := range got {
					if want := linear(1000, 1000, len(s.Samples)); !equalSamples(want, s.Samples) {
						errs <- fmt.Errorf("series %s: got %v, want a prefix of the pushed samples", s.Labels, s.Samples)
						return
					}
				}
			}
		})
	}
	pushWG.Wait()
	close(done)
	queryWG.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	got, _ := queryStream(t, ti.client, 0, int64(pushes+1)*1000, labels.MustNewMatcher(labels.MatchEqual, "__name__", "c"))
	require.Len(t, got, pushers*seriesPerPusher)
	for _, s := range got {
		require.Equal(t, linear(1000, 1000, pushes), s.Samples, s.Labels)
	}
}

func equalSamples(a, b []sample) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestIngester_Metrics(t *testing.T) {
	ti := startIngester(t, t.TempDir())
	push(t, ti.client,
		series(pairs("__name__", "m", "i", "1"), linear(1000, 1000, 3)...),
		series(pairs("__name__", "m", "i", "2"), linear(1000, 1000, 3)...),
	)
	_, err := ti.client.Push(context.Background(), &censuspb.PushRequest{Series: []*censuspb.TimeSeries{series(pairs(), sample{T: 1, V: 1})}})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	got, _ := queryStream(t, ti.client, 0, 10_000, labels.MustNewMatcher(labels.MatchEqual, "__name__", "m"))
	require.Len(t, got, 2)

	require.NoError(t, testutil.GatherAndCompare(ti.reg, strings.NewReader(`
# HELP census_ingester_head_series Series in the TSDB head, the in-memory part of the store.
# TYPE census_ingester_head_series gauge
census_ingester_head_series 2
# HELP census_ingester_push_requests_total Push requests by the gRPC status code they returned.
# TYPE census_ingester_push_requests_total counter
census_ingester_push_requests_total{code="InvalidArgument"} 1
census_ingester_push_requests_total{code="OK"} 1
# HELP census_ingester_query_stream_series_sent_total Series sent by QueryStream.
# TYPE census_ingester_query_stream_series_sent_total counter
census_ingester_query_stream_series_sent_total 2
# HELP census_ingester_samples_appended_total Samples (floats and native histograms) committed to the TSDB by pushes.
# TYPE census_ingester_samples_appended_total counter
census_ingester_samples_appended_total 6
# HELP census_ingester_series_limit Most series this ingester holds (--ingester.max-series, derived from memory when 0).
# TYPE census_ingester_series_limit gauge
census_ingester_series_limit 100000
# HELP census_ingester_series_per_metric_limit Most series of one metric name this ingester holds (--ingester.max-series-per-metric).
# TYPE census_ingester_series_per_metric_limit gauge
census_ingester_series_per_metric_limit 20000
# HELP census_ingester_disk_bytes_per_sample Bytes on disk per sample in the TSDB's blocks (head and WAL excluded); 0 before the first block.
# TYPE census_ingester_disk_bytes_per_sample gauge
census_ingester_disk_bytes_per_sample 0
# HELP prometheus_tsdb_head_series Total number of series in the head block.
# TYPE prometheus_tsdb_head_series gauge
prometheus_tsdb_head_series 2
`),
		"census_ingester_head_series", "census_ingester_push_requests_total",
		"census_ingester_query_stream_series_sent_total", "census_ingester_samples_appended_total",
		"census_ingester_series_limit", "census_ingester_series_per_metric_limit",
		"census_ingester_disk_bytes_per_sample", "prometheus_tsdb_head_series"))

	// Every push waited for a WAL fsync (--storage.wal-fsync's default).
	fsyncs, err := testutil.GatherAndCount(ti.reg, "census_ingester_wal_fsync_duration_seconds")
	require.NoError(t, err)
	require.Equal(t, 1, fsyncs, "one histogram")
	require.Equal(t, 2, histogramCount(t, ti.reg, "census_ingester_wal_fsync_duration_seconds"), "one fsync per push")
}

// histogramCount returns the observation count of the histogram name in reg.
func histogramCount(t testing.TB, reg prometheus.Gatherer, name string) int {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return int(mf.GetMetric()[0].GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestIngester_AcknowledgedPushSurvivesCrash copies the data directory of a
// running ingester right after its pushes were acknowledged, as a crash
// would leave it (no clean close, no head snapshot), and starts another
// ingester on the copy: its WAL replay brings back every acknowledged
// sample, histogram and exemplar.
func TestIngester_AcknowledgedPushSurvivesCrash(t *testing.T) {
	dir := t.TempDir()
	running := startIngester(t, dir)
	h := tsdbutil.GenerateTestHistogram(1)
	var want []streamedSeries
	for i := range 50 {
		ls := []string{"__name__", "crash", "i", fmt.Sprintf("%02d", i)}
		push(t, running.client, series(pairs(ls...), linear(1000, 1000, 300)...))
		want = append(want, streamedSeries{fmtLabels(ls...), linear(1000, 1000, 300)})
	}
	push(t, running.client, &censuspb.TimeSeries{
		Labels:     pairs("__name__", "crash_histogram"),
		Histograms: []*censuspb.Histogram{censuspb.FromHistogram(1000, h)},
		Exemplars:  []*censuspb.Exemplar{{Labels: pairs("trace_id", "x"), Value: 1, TimestampMs: 1000}},
	})

	crashed := filepath.Join(t.TempDir(), "data")
	require.NoError(t, copyDir(dir, crashed))
	restarted := startIngester(t, crashed)
	got, _ := queryStream(t, restarted.client, 0, 1_000_000, labels.MustNewMatcher(labels.MatchEqual, "__name__", "crash"))
	require.Equal(t, want, got)
	hists, _ := queryTyped(t, restarted.client, 0, 2000, labels.MustNewMatcher(labels.MatchEqual, "__name__", "crash_histogram"))
	requireSamples(t, []typedSample{{T: 1000, H: h}}, hists[fmtLabels("__name__", "crash_histogram")], "crash_histogram")
	ex, err := restarted.client.QueryExemplars(context.Background(), &censuspb.ExemplarsRequest{EndMs: 2000, MatcherSets: []*censuspb.MatcherSet{{
		Matchers: []*censuspb.LabelMatcher{{Name: "__name__", Value: "crash_histogram"}},
	}}})
	require.NoError(t, err)
	require.Len(t, ex.GetSeries(), 1)
}

// copyDir copies the files under src to dst, except the TSDB's lock file.
func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o777)
		case d.Name() == "lock":
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o666)
	})
}

// blockingStream is a QueryStream server stream whose Send waits until
// released, as a slow client's would.
type blockingStream struct {
	grpc.ServerStream // Unused; panics if called.
	sending           chan struct{}
	release           chan struct{}
}

func (s *blockingStream) Context() context.Context { return context.Background() }

func (s *blockingStream) Send(*censuspb.QueryStreamResponse) error {
	close(s.sending)
	<-s.release
	return nil
}

// TestIngester_StopFinishesInFlightRequests stops an ingester while a query
// is in flight: new requests are refused at once with Unavailable, the query
// finishes, and only then the TSDB closes.
func TestIngester_StopFinishesInFlightRequests(t *testing.T) {
	ti := startQueryFixture(t)
	s := &blockingStream{sending: make(chan struct{}), release: make(chan struct{})}
	queried := make(chan error, 1)
	go func() {
		queried <- ti.ing.QueryStream(&censuspb.QueryStreamRequest{
			EndMs: 200_000, Matchers: censuspb.FromMatchers([]*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "job", "api")}),
		}, s)
	}()
	<-s.sending

	// While stop waits, another goroutine sees the ingester stopping, is
	// refused a push, and finds the TSDB still open, then lets the query
	// finish.
	var stopReturned atomic.Bool
	type observed struct {
		ready, pushErr     error
		stoppedBeforeQuery bool
	}
	seen := make(chan observed, 1)
	go func() {
		for ti.ing.Ready() == nil {
			runtime.Gosched() // Polls; stop is on its way.
		}
		var o observed
		o.ready = ti.ing.Ready()
		_, o.pushErr = ti.ing.Push(context.Background(), &censuspb.PushRequest{Series: []*censuspb.TimeSeries{series(pairs(upA...), sample{T: 9000, V: 1})}})
		o.pushErr = ingester.ToStatus(o.pushErr)
		o.stoppedBeforeQuery = stopReturned.Load()
		seen <- o
		close(s.release)
	}()
	ti.stop()
	stopReturned.Store(true)

	o := <-seen
	require.EqualError(t, o.ready, "ingester is stopping")
	require.Equal(t, codes.Unavailable, status.Code(o.pushErr), "error: %v", o.pushErr)
	require.Contains(t, status.Convert(o.pushErr).Message(), "ingester is stopping")
	require.False(t, o.stoppedBeforeQuery, "the TSDB closed under an in-flight query")
	require.NoError(t, <-queried)
}
