package distributor

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/timestamp"
)

// reason is why the distributor refused samples: the label value of
// census_discarded_samples_total. Names shared with the ingester
// (invalid_labels, max_labels_per_series, label_name_too_long,
// label_value_too_long, invalid_histogram) mean the same rule, so one
// query over the counter adds up both.
type reason int

const (
	reasonMissingMetricName reason = iota
	reasonInvalidMetricName
	reasonInvalidLabels
	reasonDuplicateLabelNames
	reasonMaxLabelsPerSeries
	reasonLabelNameTooLong
	reasonLabelValueTooLong
	reasonTooOld
	reasonTooFarInFuture
	reasonInvalidHistogram
	numReasons
)

var reasonNames = [numReasons]string{
	reasonMissingMetricName:   "missing_metric_name",
	reasonInvalidMetricName:   "invalid_metric_name",
	reasonInvalidLabels:       "invalid_labels",
	reasonDuplicateLabelNames: "duplicate_label_names",
	reasonMaxLabelsPerSeries:  "max_labels_per_series",
	reasonLabelNameTooLong:    "label_name_too_long",
	reasonLabelValueTooLong:   "label_value_too_long",
	reasonTooOld:              "too_old",
	reasonTooFarInFuture:      "too_far_in_future",
	reasonInvalidHistogram:    "invalid_histogram",
}

func (r reason) String() string { return reasonNames[r] }

// validateSeries checks a label set against the rules every input obeys,
// returning why it is refused. Label names and values must be valid UTF-8
// (Prometheus 3's rule), so any UTF-8 metric name is valid.
//
// With checked, the caller has made sure already that the labels are
// sorted, named, unique and valid UTF-8, as Prometheus' remote-write
// handler does before it appends; only the limits are left to check.
func (c *Config) validateSeries(ls labels.Labels, checked bool) (reason, error) {
	if !checked {
		if ls.IsEmpty() {
			return reasonMissingMetricName, fmt.Errorf("series has no labels")
		}
		name := ls.Get(labels.MetricName)
		if name == "" {
			return reasonMissingMetricName, fmt.Errorf("series %s has no metric name", ls)
		}
		if !utf8.ValidString(name) {
			return reasonInvalidMetricName, fmt.Errorf("metric name %q is not valid UTF-8 in series %s", name, ls)
		}
	}
	if c.MaxLabelNamesPerSeries > 0 && ls.Len() > c.MaxLabelNamesPerSeries {
		return reasonMaxLabelsPerSeries, fmt.Errorf("series %s has %d labels, more than --distributor.max-label-names-per-series=%d", ls, ls.Len(), c.MaxLabelNamesPerSeries)
	}
	var (
		r    = reason(-1)
		err  error
		prev string
		i    int
	)
	ls.Range(func(l labels.Label) {
		if r >= 0 {
			return
		}
		switch {
		case !checked && (l.Name == "" || !utf8.ValidString(l.Name)):
			r, err = reasonInvalidLabels, fmt.Errorf("label name %q is empty or not valid UTF-8 in series %s", l.Name, ls)
		case !checked && !utf8.ValidString(l.Value):
			r, err = reasonInvalidLabels, fmt.Errorf("value of label %q is not valid UTF-8 in series %s", l.Name, ls)
		case l.Value == "":
			// Prometheus drops empty labels when it parses a scrape; on the
			// wire one means a broken sender, and the TSDB would refuse it.
			r, err = reasonInvalidLabels, fmt.Errorf("label %q has an empty value in series %s", l.Name, ls)
		case !checked && i > 0 && l.Name == prev:
			r, err = reasonDuplicateLabelNames, fmt.Errorf("label name %q appears twice in series %s", l.Name, ls)
		case !checked && i > 0 && l.Name < prev:
			r, err = reasonInvalidLabels, fmt.Errorf("label names are not sorted (%q after %q) in series %s", l.Name, prev, ls)
		case c.MaxLabelNameLength > 0 && len(l.Name) > c.MaxLabelNameLength:
			r, err = reasonLabelNameTooLong, fmt.Errorf("label name %q is %d bytes, longer than --distributor.max-label-name-length=%d, in series %s", truncateForMessage(l.Name), len(l.Name), c.MaxLabelNameLength, ls)
		case c.MaxLabelValueLength > 0 && len(l.Value) > c.MaxLabelValueLength:
			r, err = reasonLabelValueTooLong, fmt.Errorf("value of label %q is %d bytes, longer than --distributor.max-label-value-length=%d, in series %s", l.Name, len(l.Value), c.MaxLabelValueLength, ls)
		}
		prev = l.Name
		i++
	})
	if r >= 0 {
		return r, err
	}
	return 0, nil
}

// timeRange is the window of sample timestamps a transaction accepts,
// computed once when it starts.
type timeRange struct {
	minT, maxT int64
}

func (c *Config) timeRange(now time.Time) timeRange {
	tr := timeRange{minT: minInt64, maxT: maxInt64}
	if c.MaxSampleAge > 0 {
		tr.minT = timestamp.FromTime(now.Add(-c.MaxSampleAge))
	}
	if c.MaxFutureSkew > 0 {
		tr.maxT = timestamp.FromTime(now.Add(c.MaxFutureSkew))
	}
	return tr
}

const (
	minInt64 = -1 << 63
	maxInt64 = 1<<63 - 1
)

// check returns why t is outside the window.
func (c *Config) checkTime(tr timeRange, t int64, ls labels.Labels) (reason, error) {
	switch {
	case t < tr.minT:
		return reasonTooOld, fmt.Errorf("sample at %s is older than --distributor.max-sample-age=%s in series %s", formatTime(t), c.MaxSampleAge, ls)
	case t > tr.maxT:
		return reasonTooFarInFuture, fmt.Errorf("sample at %s is more than --distributor.max-future-skew=%s ahead of now in series %s", formatTime(t), c.MaxFutureSkew, ls)
	}
	return 0, nil
}

func formatTime(t int64) string {
	return timestamp.Time(t).UTC().Format(time.RFC3339Nano)
}

// truncateForMessage shortens very long text quoted in an error.
func truncateForMessage(s string) string {
	const maxLen = 64
	if len(s) <= maxLen {
		return s
	}
	return strings.ToValidUTF8(s[:maxLen], "") + "..."
}
