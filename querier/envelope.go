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
// themselves.

// apiErrorType is one of Prometheus' API error types with its HTTP code.
type apiErrorType struct {
	name string
	code int
}

var (
	errorBadData  = apiErrorType{"bad_data", http.StatusBadRequest}
	errorInternal = apiErrorType{"internal", http.StatusInternalServerError}
	// 499 is the code Prometheus answers a canceled request with.
	errorCanceled = apiErrorType{"canceled", 499}
)

// storageErrorType is how Prometheus classifies a failed read.
func storageErrorType(ctx context.Context, err error) apiErrorType {
	if errors.Is(err, context.Canceled) || errors.Is(ctx.Err(), context.Canceled) {
		return errorCanceled
	}
	return errorInternal
}

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
