package censuspb

import (
	"fmt"
	"unicode/utf8"

	"github.com/prometheus/prometheus/model/labels"
)

// ValidateLabels checks ls against the wire contract's rule for a series'
// labels, the one rule every role applies: at least one label, a
// __name__, every name non-empty, names and values valid UTF-8 (Prometheus
// 3's rule, so any UTF-8 metric name is valid), no empty value, and names
// sorted and unique. It returns why ls is refused, with an error that
// wraps ErrInvalidLabels and names the series; the Reason means nothing
// when the error is nil. It does not sort ls: a sender must.
//
// Limits on the number and length of labels are the distributor's, not
// the contract's.
func ValidateLabels(ls labels.Labels) (Reason, error) {
	if ls.IsEmpty() {
		return ReasonMissingMetricName, fmt.Errorf("%w: series has no labels", ErrInvalidLabels)
	}
	var (
		r       = NumReasons // None yet.
		msg     string
		prev    string
		i       int
		hasName bool
	)
	ls.Range(func(l labels.Label) {
		if r != NumReasons {
			return
		}
		if r, msg = checkLabel(i, l.Name, l.Value, prev); r == NumReasons && l.Value == "" {
			// Prometheus drops empty labels when it parses a scrape; on the
			// wire one means a broken sender, and the TSDB would drop it
			// and store another series than the one sent.
			r, msg = ReasonInvalidLabel, fmt.Sprintf("label %q has an empty value", l.Name)
		}
		hasName = hasName || l.Name == labels.MetricName
		prev = l.Name
		i++
	})
	switch {
	case r != NumReasons:
		return r, fmt.Errorf("%w: %s in series %s", ErrInvalidLabels, msg, ls)
	case !hasName:
		return ReasonMissingMetricName, fmt.Errorf("%w: series %s has no metric name", ErrInvalidLabels, ls)
	}
	return 0, nil
}

// checkLabel is the rule for one label, the i-th of its series, after the
// label named prev: every name non-empty, names and values valid UTF-8,
// names sorted and unique. It returns NumReasons if the label passes, else
// why not and a message. ValidateLabels and ToLabels share it.
func checkLabel(i int, name, value, prev string) (Reason, string) {
	switch {
	case name == "" || !utf8.ValidString(name):
		return ReasonInvalidLabel, fmt.Sprintf("label name %q is empty or not valid UTF-8", name)
	case !utf8.ValidString(value):
		return ReasonInvalidLabel, fmt.Sprintf("value of label %q is not valid UTF-8", name)
	case i > 0 && name == prev:
		return ReasonDuplicateLabelNames, fmt.Sprintf("label name %q appears twice", name)
	case i > 0 && name < prev:
		return ReasonInvalidLabel, fmt.Sprintf("label names are not sorted (%q after %q)", name, prev)
	}
	return NumReasons, ""
}

// LabelsError is wire labels refused by ToLabels, with the reason.
type LabelsError struct {
	Reason Reason
	msg    string
}

func (e *LabelsError) Error() string { return e.msg }

// Unwrap makes a LabelsError match ErrInvalidLabels.
func (e *LabelsError) Unwrap() error { return ErrInvalidLabels }
