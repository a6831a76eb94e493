package querier

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"

	"github.com/prometheus/prometheus/util/annotations"
)

// The handlers Census serves itself (/api/v1/metadata, and the form
// errors of every request) answer in Prometheus' JSON envelope, written
// here; the other endpoints are Prometheus' own handlers, which write it
// themselves. Both answer ErrNoIngesters with 503 "unavailable": Census'
// handlers through storageErrorType, Prometheus' through overrideErrorCode
// and, for remote read, which writes no envelope, unavailableWriter.

// apiErrorType is one of Prometheus' API error types with its HTTP code.
type apiErrorType struct {
	name string
	code int
}

var (
	errorBadData  = apiErrorType{"bad_data", http.StatusBadRequest}
	errorInternal = apiErrorType{"internal", http.StatusInternalServerError}
	// Prometheus' type of a TSDB that is not ready; a querier's storage is
	// not ready while the ring has no ingester.
	errorUnavailable = apiErrorType{"unavailable", http.StatusServiceUnavailable}
	// 499 is the code Prometheus answers a canceled request with.
	errorCanceled = apiErrorType{"canceled", 499}
)

// storageErrorType is how Prometheus classifies a failed read.
func storageErrorType(ctx context.Context, err error) apiErrorType {
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(ctx.Err(), context.Canceled):
		return errorCanceled
	case errors.Is(err, ErrNoIngesters):
		return errorUnavailable
	}
	return errorInternal
}

// overrideErrorCode is the HTTP code hook of Prometheus' API
// (v1.OverrideErrorCode, whose error number type N is unexported).
// Prometheus gives ErrNoIngesters the "unavailable" type, since it is a
// tsdb.ErrNotReady, but answers that type with 500; Census answers 503, a
// condition that passes once ingesters join, worth retrying.
func overrideErrorCode[N ~int](_ N, err error) (code int, override bool) {
	if errors.Is(err, ErrNoIngesters) {
		return errorUnavailable.code, true
	}
	return 0, false
}

// unavailableWriter serves remote read, whose Prometheus handler answers
// every read error with a plain 500: when a read of req failed with
// ErrNoIngesters, it answers 503 "unavailable" in the envelope instead, as
// every other endpoint does, and drops the handler's error text.
type unavailableWriter struct {
	http.ResponseWriter
	req      *request
	replaced bool // The answer is ours; the handler's writes are dropped.
}

// WriteHeader implements http.ResponseWriter.
func (w *unavailableWriter) WriteHeader(code int) {
	if code == http.StatusInternalServerError && w.req.noIngesters.Load() {
		w.replaced = true
		respondError(w.ResponseWriter, errorUnavailable, ErrNoIngesters)
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

// Write implements http.ResponseWriter.
func (w *unavailableWriter) Write(b []byte) (int, error) {
	if w.replaced {
		return len(b), nil
	}
	return w.ResponseWriter.Write(b)
}

// Flush implements http.Flusher, which the streamed remote read needs.
func (w *unavailableWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok && !w.replaced {
		f.Flush()
	}
}

// Unwrap returns the ResponseWriter, for http.ResponseController.
func (w *unavailableWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// apiResponse is Prometheus' envelope of every API answer.
type apiResponse struct {
	Status    string   `json:"status"`
	Data      any      `json:"data,omitempty"`
	ErrorType string   `json:"errorType,omitempty"`
	Error     string   `json:"error,omitempty"`
	Warnings  []string `json:"warnings,omitempty"`
}

func respond(w http.ResponseWriter, data any, ws annotations.Annotations) {
	resp := apiResponse{Status: "success", Data: data}
	for _, w := range ws {
		resp.Warnings = append(resp.Warnings, w.Error())
	}
	slices.Sort(resp.Warnings)
	writeJSON(w, http.StatusOK, resp)
}

func respondError(w http.ResponseWriter, typ apiErrorType, err error) {
	writeJSON(w, typ.code, apiResponse{Status: "error", ErrorType: typ.name, Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, resp apiResponse) {
	b, err := json.Marshal(resp)
	if err != nil {
		http.Error(w, "encode response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}
