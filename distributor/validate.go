package distributor

import (
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/timestamp"

	censuspb "github.com/census-metrics/census/proto"
)

// validateSeries checks a label set against the wire contract
// (censuspb.ValidateLabels) and the distributor's label limits, returning
// why it is refused. The distributor owns the limits: the ingesters trust
// what it sends.
func (c *Config) validateSeries(ls labels.Labels) (censuspb.Reason, error) {
	if r, err := censuspb.ValidateLabels(ls); err != nil {
		return r, err
	}
	if c.MaxLabelNamesPerSeries > 0 && ls.Len() > c.MaxLabelNamesPerSeries {
		return censuspb.ReasonMaxLabelNamesPerSeries, fmt.Errorf("series %s has %d labels, more than --distributor.max-label-names-per-series=%d", ls, ls.Len(), c.MaxLabelNamesPerSeries)
	}
	var (
		r   = censuspb.NumReasons // None yet.
		err error
	)
	ls.Range(func(l labels.Label) {
		if r != censuspb.NumReasons {
			return
		}
		switch {
		case c.MaxLabelNameLength > 0 && len(l.Name) > c.MaxLabelNameLength:
			r, err = censuspb.ReasonLabelNameTooLong, fmt.Errorf("label name %q is %d bytes, longer than --distributor.max-label-name-length=%d, in series %s", truncateForMessage(l.Name), len(l.Name), c.MaxLabelNameLength, ls)
		case c.MaxLabelValueLength > 0 && len(l.Value) > c.MaxLabelValueLength:
			r, err = censuspb.ReasonLabelValueTooLong, fmt.Errorf("value of label %q is %d bytes, longer than --distributor.max-label-value-length=%d, in series %s", l.Name, len(l.Value), c.MaxLabelValueLength, ls)
		}
	})
	if err != nil {
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
func (c *Config) checkTime(tr timeRange, t int64, ls labels.Labels) (censuspb.Reason, error) {
	switch {
	case t < tr.minT:
		return censuspb.ReasonSampleTooOld, fmt.Errorf("sample at %s is older than --distributor.max-sample-age=%s in series %s", formatTime(t), c.MaxSampleAge, ls)
	case t > tr.maxT:
		return censuspb.ReasonSampleTooFarInFuture, fmt.Errorf("sample at %s is more than --distributor.max-future-skew=%s ahead of now in series %s", formatTime(t), c.MaxFutureSkew, ls)
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
