package censuspb

// Reason is why a push refused samples. Its String is a wire value, the
// Rejection.reason of a PushResponse, and the reason label of
// census_distributor_discarded_samples_total and
// census_ingester_discarded_samples_total: once released, a name never
// changes, and each names exactly one rule, so that a query over both
// counters adds up like with like.
//
// Reasons index arrays (see NumReasons); their numbers are not on the wire
// and may be reordered.
type Reason uint8

const (
	// ReasonMissingMetricName: the series has no __name__ label, or no labels at all (ValidateLabels).
	ReasonMissingMetricName Reason = iota
	// ReasonInvalidLabel: a label name is empty, a name or value is not valid UTF-8, a value is empty or the names are not sorted (ValidateLabels).
	ReasonInvalidLabel
	// ReasonDuplicateLabelNames: two labels of the series have the same name (ValidateLabels).
	ReasonDuplicateLabelNames
	// ReasonMaxLabelNamesPerSeries: the series has more labels than --distributor.max-label-names-per-series.
	ReasonMaxLabelNamesPerSeries
	// ReasonLabelNameTooLong: a label name is longer than --distributor.max-label-name-length.
	ReasonLabelNameTooLong
	// ReasonLabelValueTooLong: a label value is longer than --distributor.max-label-value-length.
	ReasonLabelValueTooLong
	// ReasonSampleTooOld: the sample is older than now minus --distributor.max-sample-age.
	ReasonSampleTooOld
	// ReasonSampleTooFarInFuture: the sample is further ahead of now than --distributor.max-future-skew.
	ReasonSampleTooFarInFuture
	// ReasonInvalidHistogram: a native histogram fails Prometheus' Validate (inconsistent counts, spans or buckets).
	ReasonInvalidHistogram
	// ReasonOutOfOrder: the sample is older than the newest of its series, out of order beyond what the TSDB takes (storage.ErrOutOfOrderSample).
	ReasonOutOfOrder
	// ReasonOutOfBounds: the sample is older than the start of the ingester's TSDB head (storage.ErrOutOfBounds).
	ReasonOutOfBounds
	// ReasonTooOldForOutOfOrderWindow: the sample is further than --storage.out-of-order-window behind the ingester's newest sample (storage.ErrTooOldSample).
	ReasonTooOldForOutOfOrderWindow
	// ReasonDuplicateTimestamp: the series has a different value at the same timestamp already (storage.ErrDuplicateSampleForTimestamp).
	ReasonDuplicateTimestamp
	// ReasonMaxSeries: a new series would take the ingester over --ingester.max-series.
	ReasonMaxSeries
	// ReasonMaxSeriesPerMetric: a new series would take its metric over --ingester.max-series-per-metric in the ingester.
	ReasonMaxSeriesPerMetric
	// NumReasons is the number of reasons, the length of an array indexed by Reason; it is not a reason.
	NumReasons
)

var reasonNames = [NumReasons]string{
	ReasonMissingMetricName:         "missing_metric_name",
	ReasonInvalidLabel:              "invalid_label",
	ReasonDuplicateLabelNames:       "duplicate_label_names",
	ReasonMaxLabelNamesPerSeries:    "max_label_names_per_series",
	ReasonLabelNameTooLong:          "label_name_too_long",
	ReasonLabelValueTooLong:         "label_value_too_long",
	ReasonSampleTooOld:              "sample_too_old",
	ReasonSampleTooFarInFuture:      "sample_too_far_in_future",
	ReasonInvalidHistogram:          "invalid_histogram",
	ReasonOutOfOrder:                "out_of_order",
	ReasonOutOfBounds:               "out_of_bounds",
	ReasonTooOldForOutOfOrderWindow: "too_old_for_out_of_order_window",
	ReasonDuplicateTimestamp:        "duplicate_timestamp",
	ReasonMaxSeries:                 "max_series",
	ReasonMaxSeriesPerMetric:        "max_series_per_metric",
}

// String returns the reason's wire and label value.
func (r Reason) String() string {
	if r >= NumReasons {
		return "unknown"
	}
	return reasonNames[r]
}
