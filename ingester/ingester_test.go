package ingester_test

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/census-metrics/census/ingester"
	censuspb "github.com/census-metrics/census/proto"
)

func TestConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		want    ingester.Config
		wantErr string
	}{
		{name: "default", want: ingester.Config{StoragePath: "./data"}},
		{name: "storage path", args: []string{"--storage.path=/var/lib/census"}, want: ingester.Config{StoragePath: "/var/lib/census"}},
		{name: "empty storage path", args: []string{"--storage.path="}, want: ingester.Config{}, wantErr: "--storage.path must not be empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cfg ingester.Config
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			cfg.RegisterFlags(fs)
			require.NoError(t, fs.Parse(tc.args))
			require.Equal(t, tc.want, cfg)
			err := cfg.Validate()
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

func TestIngester_Restart(t *testing.T) {
	dir := t.TempDir()
	a := []string{"__name__", "up", "job", "a"}
	b := []string{"__name__", "up", "job", "b"}
	want := []streamedSeries{{fmtLabels(a...), linear(1000, 1000, 10)}, {fmtLabels(b...), linear(5000, 1000, 3)}}

	first := startIngester(t, dir)
	push(t, first.client, series(pairs(a...), linear(1000, 1000, 5)...), series(pairs(b...), linear(5000, 1000, 3)...))
	push(t, first.client, series(pairs(a...), linear(6000, 1000, 5)...))
	first.stop()

	// A closed ingester says so, and refuses requests as Unavailable so a
	// client tries another replica.
	require.ErrorContains(t, first.ing.Ready(), "ingester is closed")
	_, err := first.ing.Push(context.Background(), &censuspb.PushRequest{Series: []*censuspb.TimeSeries{series(pairs(a...), sample{T: 20_000, V: 1})}})
	require.Equal(t, codes.Unavailable, status.Code(err), "error: %v", err)
	_, err = first.ing.LabelNames(context.Background(), &censuspb.LabelNamesRequest{EndMs: 1})
	require.Equal(t, codes.Unavailable, status.Code(err), "error: %v", err)
	require.NoError(t, first.ing.Close(), "a second Close")

	// Everything acknowledged is back after the WAL replay.
	second := startIngester(t, dir)
	got, _ := queryStream(t, second.client, 0, 100_000, labels.MustNewMatcher(labels.MatchEqual, "__name__", "up"))
	require.Equal(t, want, got)

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
# HELP census_ingester_samples_appended_total Samples committed to the TSDB by pushes.
# TYPE census_ingester_samples_appended_total counter
census_ingester_samples_appended_total 6
# HELP prometheus_tsdb_head_series Total number of series in the head block.
# TYPE prometheus_tsdb_head_series gauge
prometheus_tsdb_head_series 2
`),
		"census_ingester_head_series", "census_ingester_push_requests_total",
		"census_ingester_query_stream_series_sent_total", "census_ingester_samples_appended_total",
		"prometheus_tsdb_head_series"))
}
