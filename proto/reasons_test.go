package censuspb_test

import (
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"

	censuspb "github.com/census-metrics/census/proto"
)

// TestReason_String pins the wire names: dashboards, alerts and the other
// role's Rejections read them, so a change here is a breaking change.
func TestReason_String(t *testing.T) {
	want := map[censuspb.Reason]string{
		censuspb.ReasonMissingMetricName:         "missing_metric_name",
		censuspb.ReasonInvalidLabel:              "invalid_label",
		censuspb.ReasonDuplicateLabelNames:       "duplicate_label_names",
		censuspb.ReasonMaxLabelNamesPerSeries:    "max_label_names_per_series",
		censuspb.ReasonLabelNameTooLong:          "label_name_too_long",
		censuspb.ReasonLabelValueTooLong:         "label_value_too_long",
		censuspb.ReasonSampleTooOld:              "sample_too_old",
		censuspb.ReasonSampleTooFarInFuture:      "sample_too_far_in_future",
		censuspb.ReasonInvalidHistogram:          "invalid_histogram",
		censuspb.ReasonOutOfOrder:                "out_of_order",
		censuspb.ReasonOutOfBounds:               "out_of_bounds",
		censuspb.ReasonTooOldForOutOfOrderWindow: "too_old_for_out_of_order_window",
		censuspb.ReasonDuplicateTimestamp:        "duplicate_timestamp",
		censuspb.ReasonMaxSeries:                 "max_series",
		censuspb.ReasonMaxSeriesPerMetric:        "max_series_per_metric",
	}
	require.Len(t, want, int(censuspb.NumReasons), "every reason is pinned")
	snake := regexp.MustCompile(`^[a-z]+(_[a-z]+)*$`)
	seen := map[string]censuspb.Reason{}
	for r := range censuspb.NumReasons {
		name := r.String()
		require.Equal(t, want[r], name)
		require.Regexp(t, snake, name)
		prev, dup := seen[name]
		require.False(t, dup, "%s names both reason %d and %d", name, prev, r)
		seen[name] = r
	}
	require.Equal(t, "unknown", censuspb.NumReasons.String())
}
