package distributor

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"

	remoteapi "github.com/prometheus/client_golang/exp/api/remote"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/prompb"
	"github.com/prometheus/prometheus/storage"
)

// newRemoteWriteHandler serves remote write 1.0 itself and passes every
// other message (remote write 2.0, or a content type to refuse) to
// Prometheus' handler, rw. Prometheus' 1.0 receiver drops a series with
// invalid labels (no metric name, invalid UTF-8, a name twice) with a
// warning in its own log and answers 204, so the sender never learns; the
// 1.0 specification asks for a 400. Here every series goes to the
// distributor's appender, which refuses such a series with its reason and
// stores the others, and the push is answered 400 naming it.
func newRemoteWriteHandler(rw http.Handler, app storage.AppendableV2, logger *slog.Logger) http.Handler {
	v1 := remoteapi.NewWriteHandler(&writeV1Store{app: app}, remoteapi.MessageTypes{remoteapi.WriteV1MessageType}, remoteapi.WithWriteHandlerLogger(logger))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		msg, err := remoteapi.ParseProtoMsg(cmp.Or(r.Header.Get("Content-Type"), "application/x-protobuf"))
		if err == nil && msg == remoteapi.WriteV1MessageType {
			v1.ServeHTTP(w, r)
			return
		}
		rw.ServeHTTP(w, r)
	})
}

// writeV1Store stores remote write 1.0 requests, their body decompressed
// by remoteapi's handler, through app.
type writeV1Store struct {
	app storage.AppendableV2
}

// Store appends every series of the request and commits. The distributor's
// appender refuses invalid input at Commit, in the push's report, which
// pushHandler turns into the answer.
func (s *writeV1Store) Store(r *http.Request, _ remoteapi.WriteMessageType) (*remoteapi.WriteResponse, error) {
	wr := remoteapi.NewWriteResponse()
	body, err := io.ReadAll(r.Body)
	if err != nil {
		wr.SetStatusCode(http.StatusBadRequest)
		return wr, fmt.Errorf("read remote write request: %w", err)
	}
	var req prompb.WriteRequest
	if err := req.Unmarshal(body); err != nil {
		wr.SetStatusCode(http.StatusBadRequest)
		return wr, fmt.Errorf("decode remote write 1.0 request: %w", err)
	}
	app := s.app.AppenderV2(r.Context())
	if err := appendV1(app, &req); err != nil {
		_ = app.Rollback()
		return wr, err
	}
	if err := app.Commit(); err != nil {
		return wr, err
	}
	return wr, nil
}

func appendV1(app storage.AppenderV2, req *prompb.WriteRequest) error {
	exemplars, ok := app.(storage.ExemplarAppenderV2)
	if !ok {
		return errors.New("remote write 1.0 needs a storage.ExemplarAppenderV2")
	}
	b := labels.NewScratchBuilder(0)
	var es []exemplar.Exemplar
	for i := range req.Timeseries {
		ts := &req.Timeseries[i]
		ls := ts.ToLabels(&b, nil)
		var (
			ref storage.SeriesRef
			err error
		)
		for _, smp := range ts.Samples {
			if ref, err = app.Append(ref, ls, 0, smp.Timestamp, smp.Value, nil, nil, storage.AOptions{}); err != nil {
				return err
			}
		}
		for j := range ts.Histograms {
			h := &ts.Histograms[j]
			if h.IsFloatHistogram() {
				ref, err = app.Append(ref, ls, 0, h.Timestamp, 0, nil, h.ToFloatHistogram(), storage.AOptions{})
			} else {
				ref, err = app.Append(ref, ls, 0, h.Timestamp, 0, h.ToIntHistogram(), nil, storage.AOptions{})
			}
			if err != nil {
				return err
			}
		}
		if len(ts.Exemplars) > 0 {
			es = es[:0]
			for _, e := range ts.Exemplars {
				es = append(es, e.ToExemplar(&b, nil))
			}
			slices.SortFunc(es, exemplar.Compare)
			if _, err := exemplars.AppendExemplars(ref, ls, es); err != nil {
				return err
			}
		}
	}
	return nil
}
