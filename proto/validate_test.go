package censuspb_test

import (
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"

	censuspb "github.com/census-metrics/census/proto"
)

// unsortedLabels builds labels in the order given, as a broken sender
// might send them.
func unsortedLabels(nameValues ...string) labels.Labels {
	var b labels.ScratchBuilder
	for i := 0; i < len(nameValues); i += 2 {
		b.Add(nameValues[i], nameValues[i+1])
	}
	return b.Labels()
}

func TestValidateLabels(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ls     labels.Labels
		reason censuspb.Reason
		want   string // The error; empty for a valid set.
	}{
		{name: "valid", ls: labels.FromStrings("__name__", "up", "job", "api")},
		{name: "UTF-8 metric and label names", ls: labels.FromStrings("__name__", "http.requests", "ü.code", "200")},
		{name: "no labels", ls: labels.EmptyLabels(), reason: censuspb.ReasonMissingMetricName, want: "invalid labels: series has no labels"},
		{name: "no metric name", ls: labels.FromStrings("job", "api"), reason: censuspb.ReasonMissingMetricName, want: `invalid labels: series {job="api"} has no metric name`},
		{name: "metric name not UTF-8", ls: labels.FromStrings("__name__", "bad\xff"), reason: censuspb.ReasonInvalidLabel, want: `value of label "__name__" is not valid UTF-8`},
		{name: "empty label name", ls: labels.FromStrings("__name__", "x", "", "v"), reason: censuspb.ReasonInvalidLabel, want: `label name "" is empty or not valid UTF-8`},
		{name: "label name not UTF-8", ls: labels.FromStrings("__name__", "x", "a\xff", "v"), reason: censuspb.ReasonInvalidLabel, want: `label name "a\xff" is empty or not valid UTF-8`},
		{name: "label value not UTF-8", ls: labels.FromStrings("__name__", "x", "path", "\xff"), reason: censuspb.ReasonInvalidLabel, want: `value of label "path" is not valid UTF-8`},
		{name: "empty label value", ls: unsortedLabels("__name__", "x", "path", ""), reason: censuspb.ReasonInvalidLabel, want: `invalid labels: label "path" has an empty value in series {__name__="x", path=""}`},
		{name: "duplicate label name", ls: unsortedLabels("__name__", "x", "a", "1", "a", "2"), reason: censuspb.ReasonDuplicateLabelNames, want: `label name "a" appears twice`},
		{name: "unsorted labels", ls: unsortedLabels("__name__", "x", "b", "1", "a", "2"), reason: censuspb.ReasonInvalidLabel, want: `label names are not sorted ("a" after "b")`},
		{name: "first broken rule wins", ls: unsortedLabels("a", "", "b", "1", "b", "2"), reason: censuspb.ReasonInvalidLabel, want: `label "a" has an empty value`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := censuspb.ValidateLabels(tc.ls)
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, censuspb.ErrInvalidLabels)
			require.ErrorContains(t, err, tc.want)
			require.Equal(t, tc.reason, r, "reason %s, want %s", r, tc.reason)
		})
	}
}

func TestValidateLabels_NoAllocsWhenValid(t *testing.T) {
	ls := labels.FromStrings("__name__", "http_requests_total", "code", "200", "job", "api", "path", "/")
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := censuspb.ValidateLabels(ls); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs)
}
