package censuspb

import (
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"
)

func pairs(kv ...string) []*LabelPair {
	out := make([]*LabelPair, 0, len(kv)/2)
	for i := 0; i < len(kv); i += 2 {
		out = append(out, &LabelPair{Name: []byte(kv[i]), Value: []byte(kv[i+1])})
	}
	return out
}

func TestToLabels(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      []*LabelPair
		want    labels.Labels
		wantErr string
		reason  Reason // For wantErr; ReasonInvalidLabel if unset.
	}{
		{name: "valid", in: pairs("__name__", "up", "job", "api"), want: labels.FromStrings("__name__", "up", "job", "api")},
		{name: "utf-8 names and values", in: pairs("__name__", "température", "ville", "Zürich"), want: labels.FromStrings("__name__", "température", "ville", "Zürich")},
		{name: "empty value is allowed", in: pairs("__name__", "up", "job", ""), want: labels.FromStrings("__name__", "up", "job", "")},
		{name: "no labels", in: nil, wantErr: "invalid labels: series has no labels"},
		{name: "empty name", in: pairs("__name__", "up", "", "x"), wantErr: `invalid labels: label name "" is empty or not valid UTF-8 in series {"__name__"="up", ""="x"}`},
		{name: "invalid utf-8 name", in: pairs("__name__", "up", "a\xff", "x"), wantErr: `label name "a\xff" is empty or not valid UTF-8 in series {"__name__"="up", "a\xff"="x"}`},
		{name: "invalid utf-8 value", in: pairs("__name__", "up", "job", "\xc3\x28"), wantErr: `value of label "job" is not valid UTF-8`},
		{name: "duplicate names", in: pairs("__name__", "up", "job", "a", "job", "b"), wantErr: `label name "job" appears twice in series`, reason: ReasonDuplicateLabelNames},
		{name: "unsorted names", in: pairs("job", "a", "__name__", "up"), wantErr: `label names are not sorted ("__name__" after "job")`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b labels.ScratchBuilder
			got, err := ToLabels(&b, tc.in)
			if tc.wantErr != "" {
				require.ErrorIs(t, err, ErrInvalidLabels)
				require.ErrorContains(t, err, tc.wantErr)
				var le *LabelsError
				require.ErrorAs(t, err, &le)
				if tc.reason == 0 {
					tc.reason = ReasonInvalidLabel
				}
				if tc.in == nil {
					tc.reason = ReasonMissingMetricName
				}
				require.Equal(t, tc.reason, le.Reason)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			require.Equal(t, tc.in, FromLabels(nil, got), "round trip")
		})
	}
}

func TestMatchersRoundTrip(t *testing.T) {
	in := []*labels.Matcher{
		labels.MustNewMatcher(labels.MatchEqual, "__name__", "up"),
		labels.MustNewMatcher(labels.MatchNotEqual, "job", "a"),
		labels.MustNewMatcher(labels.MatchRegexp, "instance", "10\\..*"),
		labels.MustNewMatcher(labels.MatchNotRegexp, "code", "5.."),
	}
	out, err := ToMatchers(FromMatchers(in))
	require.NoError(t, err)
	require.Len(t, out, len(in))
	for i := range in {
		require.Equal(t, in[i].String(), out[i].String())
		require.True(t, out[i].Matches("") == in[i].Matches(""))
	}
	require.True(t, out[2].Matches("10.0.0.1"))
	require.False(t, out[3].Matches("503"))

	_, err = ToMatchers([]*LabelMatcher{{Type: LabelMatcher_RE, Name: "x", Value: "("}})
	require.ErrorContains(t, err, "matcher x")
	_, err = ToMatchers([]*LabelMatcher{{Type: 17, Name: "x"}})
	require.ErrorContains(t, err, "unknown matcher type 17")
}
