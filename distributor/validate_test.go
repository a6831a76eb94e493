package distributor_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/timestamp"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/distributor"
	censuspb "github.com/census-metrics/census/proto"
	"github.com/census-metrics/census/ring"
)

// limitedConfig is a distributor configuration with every limit small
// enough to test.
func limitedConfig() distributor.Config {
	return distributor.Config{
		PushTimeout:            5 * time.Second,
		MaxLabelNamesPerSeries: 4,
		MaxLabelNameLength:     20,
		MaxLabelValueLength:    30,
		MaxSampleAge:           time.Hour,
		MaxFutureSkew:          10 * time.Minute,
	}
}

// unsorted builds labels in the order given, as a broken remote-write
// sender could send them.
func unsorted(nameValues ...string) labels.Labels {
	var b labels.ScratchBuilder
	for i := 0; i < len(nameValues); i += 2 {
		b.Add(nameValues[i], nameValues[i+1])
	}
	return b.Labels()
}

func TestAppender_RefusesEachBadSeriesAlone(t *testing.T) {
	now := timestamp.FromTime(time.Now())
	for _, tc := range []struct {
		name   string
		ls     labels.Labels
		t      int64
		h      *histogram.Histogram
		reason string
		want   string
	}{
		{name: "no labels", ls: labels.EmptyLabels(), reason: "missing_metric_name", want: "series has no labels"},
		{name: "no metric name", ls: labels.FromStrings("job", "api"), reason: "missing_metric_name", want: `series {job="api"} has no metric name`},
		{name: "metric name not UTF-8", ls: labels.FromStrings("__name__", "bad\xff"), reason: "invalid_label", want: "not valid UTF-8"},
		{name: "empty label name", ls: labels.FromStrings("__name__", "x", "", "v"), reason: "invalid_label", want: `label name "" is empty or not valid UTF-8`},
		{name: "label value not UTF-8", ls: labels.FromStrings("__name__", "x", "path", "\xff"), reason: "invalid_label", want: `value of label "path" is not valid UTF-8`},
		{name: "empty label value", ls: unsorted("__name__", "x", "path", ""), reason: "invalid_label", want: `label "path" has an empty value`},
		{name: "duplicate label name", ls: unsorted("__name__", "x", "a", "1", "a", "2"), reason: "duplicate_label_names", want: `label name "a" appears twice`},
		{name: "unsorted labels", ls: unsorted("__name__", "x", "b", "1", "a", "2"), reason: "invalid_label", want: `label names are not sorted ("a" after "b")`},
		{name: "too many labels", ls: labels.FromStrings("__name__", "x", "a", "1", "b", "2", "c", "3", "d", "4"), reason: "max_label_names_per_series", want: "has 5 labels, more than --distributor.max-label-names-per-series=4"},
		{name: "label name too long", ls: labels.FromStrings("__name__", "x", strings.Repeat("n", 21), "v"), reason: "label_name_too_long", want: "is 21 bytes, longer than --distributor.max-label-name-length=20"},
		{name: "label value too long", ls: labels.FromStrings("__name__", "x", "path", strings.Repeat("v", 31)), reason: "label_value_too_long", want: `value of label "path" is 31 bytes, longer than --distributor.max-label-value-length=30`},
		{name: "too old", ls: labels.FromStrings("__name__", "x"), t: now - 2*time.Hour.Milliseconds(), reason: "sample_too_old", want: "older than --distributor.max-sample-age=1h0m0s"},
		{name: "too far in the future", ls: labels.FromStrings("__name__", "x"), t: now + 20*time.Minute.Milliseconds(), reason: "sample_too_far_in_future", want: "more than --distributor.max-future-skew=10m0s ahead"},
		{name: "invalid histogram", ls: labels.FromStrings("__name__", "h"), h: &histogram.Histogram{Count: 1, Schema: 0, PositiveSpans: []histogram.Span{{Length: 2}}, PositiveBuckets: []int64{1}}, reason: "invalid_histogram", want: "histogram at"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, fakes, reg := clusterWithConfig(t, 1, 1, limitedConfig())
			ts := tc.t
			if ts == 0 {
				ts = now
			}
			good := labels.FromStrings("__name__", "good", "job", "api")
			app := d.AppenderV2(context.Background())
			_, err := app.Append(0, good, 0, now, 1, nil, nil, storage.AOptions{})
			require.NoError(t, err)
			// A refused sample does not fail its Append, so callers that
			// roll back on an Append error keep the good series.
			ref, err := app.Append(0, tc.ls, 0, ts, 2, tc.h, nil, storage.AOptions{})
			require.NoError(t, err)
			_, err = app.Append(ref, tc.ls, 0, ts, 3, tc.h, nil, storage.AOptions{})
			require.NoError(t, err)
			_, err = app.Append(0, good, 0, now+1, 4, nil, nil, storage.AOptions{})
			require.NoError(t, err)

			err = app.Commit()
			require.ErrorIs(t, err, distributor.ErrInvalidSeries)
			require.NotErrorIs(t, err, distributor.ErrNoQuorum)
			require.ErrorContains(t, err, "refused 2 samples: 2 "+tc.reason+", first: ")
			require.ErrorContains(t, err, tc.want)
			var rejected *distributor.RejectedError
			require.ErrorAs(t, err, &rejected)
			require.Equal(t, 2, rejected.Samples())

			require.Equal(t, []float64{1, 4}, fakes[0].values(good), "the good series is stored")
			require.Len(t, fakes[0].allSeries(), 1, "nothing of the bad series is sent")
			require.Equal(t, 2.0, discarded(t, reg, tc.reason))
		})
	}
}

// discarded returns census_distributor_discarded_samples_total{reason} from reg.
func discarded(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "census_distributor_discarded_samples_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no census_distributor_discarded_samples_total{reason=%q}", reason)
	return 0
}

func TestAppender_CachedRefSkipsLabelChecksButNotTimeChecks(t *testing.T) {
	d, fakes, _ := clusterWithConfig(t, 1, 1, limitedConfig())
	ls := labels.FromStrings("__name__", "x")
	now := timestamp.FromTime(time.Now())

	app := d.AppenderV2(context.Background())
	ref, err := app.Append(0, ls, 0, now, 1, nil, nil, storage.AOptions{})
	require.NoError(t, err)
	require.NotZero(t, ref)
	_, err = app.Append(ref, ls, 0, now-3*time.Hour.Milliseconds(), 2, nil, nil, storage.AOptions{})
	require.NoError(t, err)
	err = app.Commit()
	require.ErrorContains(t, err, "refused 1 samples: 1 sample_too_old")
	require.Equal(t, []float64{1}, fakes[0].values(ls))
}

func TestAppender_NoLimitsByDefaultInConfig(t *testing.T) {
	// A zero Config limits nothing but what the ingesters refuse anyway.
	d, fakes, _ := cluster(t, 1, 1)
	long := labels.FromStrings("__name__", "x", "path", strings.Repeat("v", 10000))
	app := d.AppenderV2(context.Background())
	_, err := app.Append(0, long, 0, 1000, 1, nil, nil, storage.AOptions{})
	require.NoError(t, err)
	require.NoError(t, app.Commit())
	require.Equal(t, []float64{1}, fakes[0].values(long))
}

func TestConfig_Validate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  distributor.Config
		want string
	}{
		{name: "no push timeout", cfg: distributor.Config{}, want: "--distributor.push-timeout must be positive"},
		{name: "negative label limit", cfg: distributor.Config{PushTimeout: time.Second, MaxLabelNamesPerSeries: -1}, want: "--distributor.max-label-names-per-series must not be negative"},
		{name: "negative age", cfg: distributor.Config{PushTimeout: time.Second, MaxSampleAge: -time.Second}, want: "--distributor.max-sample-age must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorContains(t, tc.cfg.Validate(), tc.want)
		})
	}
	cfg := limitedConfig()
	require.NoError(t, cfg.Validate())
}

// TestNew_RegistersItsOwnDiscardedSamples checks the distributor's counter
// needs nobody else's registration, and counts its own reasons only.
func TestNew_RegistersItsOwnDiscardedSamples(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	r := &distributor.FakeRing{RF: 1, Instances: []ring.InstanceDesc{{ID: "i", Addr: "127.0.0.1:1", State: ring.ACTIVE}}}
	clients := censuspb.NewClientPool()
	t.Cleanup(func() { _ = clients.Close() })
	d, err := distributor.New(limitedConfig(), r, clients, nil, reg)
	require.NoError(t, err)

	app := d.AppenderV2(context.Background())
	_, err = app.Append(0, labels.FromStrings("job", "no-name"), 0, timestamp.FromTime(time.Now()), 1, nil, nil, storage.AOptions{})
	require.NoError(t, err)
	require.ErrorIs(t, app.Commit(), distributor.ErrInvalidSeries)

	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP census_distributor_discarded_samples_total Samples the distributor refused before sending them, by reason: the rule or limit that refused them.
# TYPE census_distributor_discarded_samples_total counter
census_distributor_discarded_samples_total{reason="duplicate_label_names"} 0
census_distributor_discarded_samples_total{reason="invalid_histogram"} 0
census_distributor_discarded_samples_total{reason="invalid_label"} 0
census_distributor_discarded_samples_total{reason="label_name_too_long"} 0
census_distributor_discarded_samples_total{reason="label_value_too_long"} 0
census_distributor_discarded_samples_total{reason="max_label_names_per_series"} 0
census_distributor_discarded_samples_total{reason="missing_metric_name"} 1
census_distributor_discarded_samples_total{reason="sample_too_far_in_future"} 0
census_distributor_discarded_samples_total{reason="sample_too_old"} 0
`), "census_distributor_discarded_samples_total"))
}
