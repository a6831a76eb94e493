package censuspb

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unsafe"

	"github.com/prometheus/prometheus/model/labels"
)

// ErrInvalidLabels is wrapped by every error ToLabels returns, so servers can
// map it to InvalidArgument with errors.Is.
var ErrInvalidLabels = errors.New("invalid labels")

// ToLabels converts wire labels into a labels.Labels, building it in b. It
// refuses, with a *LabelsError, a set that breaks ValidateLabels' rule for
// each label, or has no labels; unlike ValidateLabels it allows an empty
// value and no __name__, as exemplar labels and the TSDB do. The error
// names the series, so the sender can find it.
func ToLabels(b *labels.ScratchBuilder, pairs []*LabelPair) (labels.Labels, error) {
	if len(pairs) == 0 {
		return labels.EmptyLabels(), &LabelsError{Reason: ReasonMissingMetricName, msg: ErrInvalidLabels.Error() + ": series has no labels"}
	}
	b.Reset()
	prev := ""
	for i, p := range pairs {
		// The strings view the message's bytes: Labels copies them out,
		// and nothing writes to a decoded message.
		name, value := yoloString(p.GetName()), yoloString(p.GetValue())
		if r, msg := checkLabel(i, name, value, prev); r != NumReasons {
			return labels.EmptyLabels(), &LabelsError{Reason: r, msg: fmt.Sprintf("%s: %s in series %s", ErrInvalidLabels, msg, FormatLabelPairs(pairs))}
		}
		b.Add(name, value)
		prev = name
	}
	return b.Labels(), nil
}

// FormatLabelPairs renders wire labels as {name="value", ...}, quoting
// invalid bytes, for error messages.
func FormatLabelPairs(pairs []*LabelPair) string {
	var sb strings.Builder
	sb.WriteByte('{')
	for i, p := range pairs {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString(strconv.Quote(string(p.GetName())))
		sb.WriteByte('=')
		sb.WriteString(strconv.Quote(string(p.GetValue())))
	}
	sb.WriteByte('}')
	return sb.String()
}

// FromLabels appends ls to dst as wire labels and returns the extended slice.
// The pairs view ls's strings without copying them: they are for marshalling
// and reading only, and must never be written to.
func FromLabels(dst []*LabelPair, ls labels.Labels) []*LabelPair {
	ls.Range(func(l labels.Label) {
		dst = append(dst, &LabelPair{Name: yoloBytes(l.Name), Value: yoloBytes(l.Value)})
	})
	return dst
}

// yoloString views b as a string without copying; b must not change while
// the string is in use.
func yoloString(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// yoloBytes views s as bytes without copying; the bytes must not be written.
func yoloBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// ToMatchers converts wire matchers into Prometheus matchers; a regular
// expression that does not compile is an error.
func ToMatchers(ms []*LabelMatcher) ([]*labels.Matcher, error) {
	out := make([]*labels.Matcher, 0, len(ms))
	for _, m := range ms {
		var t labels.MatchType
		switch m.GetType() {
		case LabelMatcher_EQ:
			t = labels.MatchEqual
		case LabelMatcher_NEQ:
			t = labels.MatchNotEqual
		case LabelMatcher_RE:
			t = labels.MatchRegexp
		case LabelMatcher_NRE:
			t = labels.MatchNotRegexp
		default:
			return nil, fmt.Errorf("unknown matcher type %d for label %q", m.GetType(), m.GetName())
		}
		lm, err := labels.NewMatcher(t, m.GetName(), m.GetValue())
		if err != nil {
			return nil, fmt.Errorf("matcher %s: %w", m.GetName(), err)
		}
		out = append(out, lm)
	}
	return out, nil
}

// FromMatchers converts Prometheus matchers into wire matchers.
func FromMatchers(ms []*labels.Matcher) []*LabelMatcher {
	out := make([]*LabelMatcher, 0, len(ms))
	for _, m := range ms {
		var t LabelMatcher_Type
		switch m.Type {
		case labels.MatchEqual:
			t = LabelMatcher_EQ
		case labels.MatchNotEqual:
			t = LabelMatcher_NEQ
		case labels.MatchRegexp:
			t = LabelMatcher_RE
		case labels.MatchNotRegexp:
			t = LabelMatcher_NRE
		default:
			panic(fmt.Sprintf("BUG: unknown Prometheus matcher type %d", m.Type))
		}
		out = append(out, &LabelMatcher{Type: t, Name: m.Name, Value: m.Value})
	}
	return out
}
