package distributor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/units"
	"github.com/golang/snappy"
	remoteapi "github.com/prometheus/client_golang/exp/api/remote"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/storage/remote"
	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"
)

// Paths the Receiver serves.
const (
	RemoteWritePath = "/api/v1/push"
	OTLPMetricsPath = "/otlp/v1/metrics"
)

// Receiver takes pushes from other systems into a distributor: Prometheus
// remote write 1.0 and 2.0 (a Prometheus' remote_write, Grafana Alloy) at
// RemoteWritePath and OTLP metrics over HTTP (an OpenTelemetry collector)
// at OTLPMetricsPath. Prometheus' own handlers decode them and append
// through the distributor, so every protocol is sharded by the same code
// as the agent's scrapes; the Receiver only sets the response as the
// protocols' specifications want it (see httpStatus).
type Receiver struct {
	remoteWrite http.Handler
	otlp        http.Handler
}

// NewReceiver returns a Receiver appending into d. Prometheus' handlers
// register their prometheus_api_* metrics on reg.
func NewReceiver(d *Distributor, logger *slog.Logger, reg prometheus.Registerer) *Receiver {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	rw := remote.NewWriteHandler(logger, reg, d,
		remoteapi.MessageTypes{remoteapi.WriteV1MessageType, remoteapi.WriteV2MessageType},
		false, // Keep series as sent: no __type__ and __unit__ labels.
		true,  // Pass remote write 2.0's metadata on with the samples.
	)
	otlpCfg := config.DefaultConfig
	otlp := remote.NewOTLPWriteHandler(logger, reg, d, func() config.Config { return otlpCfg }, remote.OTLPOptions{
		// target_info is written at this interval: PromQL's lookback.
		LookbackDelta: 5 * time.Minute,
	})
	maxBytes := int64(d.cfg.MaxRequestBytes)
	in := newInflight(d.cfg, logger, reg)
	return &Receiver{
		remoteWrite: &pushHandler{next: newRemoteWriteHandler(rw, d, logger), logger: logger, maxBytes: maxBytes, inflight: in},
		otlp:        &pushHandler{next: otlp, logger: logger, otlp: true, maxBytes: maxBytes, inflight: in},
	}
}

// Register mounts the receiver's handlers on mux.
func (r *Receiver) Register(mux *http.ServeMux) {
	mux.Handle(RemoteWritePath, r.remoteWrite)
	mux.Handle(OTLPMetricsPath, r.otlp)
}

// pushReport is how the appender of one HTTP push tells the handler around
// Prometheus' one what happened, through the request's context: Prometheus'
// handlers answer 500 to any Commit error, and cannot tell a refusal (never
// to be retried) from a missing quorum (to be retried).
type pushReport struct {
	committed bool
	err       error // What Commit returned.
	// What Commit sent, what Append refused (rejected) and what the
	// ingesters refused of what was sent (refused).
	floats, histograms, exemplars                                   int
	rejected, rejectedFloats, rejectedHistograms, rejectedExemplars int
	refused                                                         int
	bodyErr                                                         error     // Of reading the request's body.
	bodyRead                                                        int64     // Bytes of the body read, as sent.
	bodyDone                                                        time.Time // When the body was read to its end.
	// overloaded is set when an ingester refused the push for load: over
	// its limits, it asked to be retried later.
	overloaded bool
}

// took returns how long a committed push took from its body read to now:
// the distributor's and the ingesters' work, without the sender's upload.
// It is 0 for a push that was not committed.
func (r *pushReport) took() time.Duration {
	if !r.committed || r.bodyDone.IsZero() {
		return 0
	}
	return max(time.Since(r.bodyDone), time.Nanosecond)
}

func atoiHeader(h http.Header, key string) int {
	n, _ := strconv.Atoi(h.Get(key))
	return n
}

func (r *pushReport) commit(err error) {
	r.committed = true
	r.err = err
}

type reportKey struct{}

func reportFrom(ctx context.Context) *pushReport {
	r, _ := ctx.Value(reportKey{}).(*pushReport)
	return r
}

// Response headers of remote write 2.0 telling what was written.
const (
	writtenSamplesHeader    = "X-Prometheus-Remote-Write-Samples-Written"
	writtenHistogramsHeader = "X-Prometheus-Remote-Write-Histograms-Written"
	writtenExemplarsHeader  = "X-Prometheus-Remote-Write-Exemplars-Written"
)

// pushHandler runs one of Prometheus' push handlers with a pushReport in
// the request's context and keeps its response unless the report says
// otherwise.
type pushHandler struct {
	next     http.Handler
	logger   *slog.Logger
	otlp     bool
	maxBytes int64 // --distributor.max-request-bytes
	inflight *inflight
}

func (h *pushHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		// Both protocols push with POST only; without this, Prometheus'
		// handler would try to decode the empty body of a GET and
		// answer 400 "s2: corrupt input".
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, r.Method+" is not allowed: push with POST", http.StatusMethodNotAllowed)
		return
	}
	rep := &pushReport{}
	size, msg := h.limitBody(r, rep)
	if msg != "" {
		http.Error(w, msg, http.StatusRequestEntityTooLarge)
		return
	}
	if msg := h.inflight.acquire(size); msg != "" {
		w.Header().Set("Retry-After", "1")
		http.Error(w, msg, http.StatusTooManyRequests)
		return
	}
	defer func() { h.inflight.release(size, rep.took(), rep.overloaded) }()
	buf := &responseBuffer{header: http.Header{}}
	h.next.ServeHTTP(buf, r.WithContext(context.WithValue(r.Context(), reportKey{}, rep)))
	var tooLarge *http.MaxBytesError
	if rep.bodyErr != nil && errors.As(rep.bodyErr, &tooLarge) {
		http.Error(w, h.tooLargeMessage("body is larger than"), http.StatusRequestEntityTooLarge)
		return
	}
	if !h.otlp && buf.code() < 300 && rep.bodyRead > 0 && rep.floats+rep.histograms+rep.exemplars+rep.rejected == 0 && isRemoteWrite2(r) {
		// A remote write 1.0 body decodes as an empty 2.0 request: its
		// fields have other numbers. Prometheus' handler stores nothing
		// and answers success, and the sender drops the data.
		http.Error(w, "remote write 2.0 request of "+strconv.FormatInt(rep.bodyRead, 10)+" bytes holds no series: is it a remote write 1.0 body sent with the 2.0 content type?", http.StatusBadRequest)
		return
	}
	if !rep.committed || rep.err == nil {
		// Stored, or refused by Prometheus' handler before it reached
		// the distributor (undecodable, or a series remote write 2.0
		// refuses itself): its answer is right.
		buf.copyTo(w)
		return
	}

	code := httpStatus(rep.err)
	msg = rep.err.Error()
	if code == http.StatusBadRequest && buf.code() == http.StatusBadRequest {
		// Remote write 2.0 refused series of its own as well.
		msg = strings.TrimSpace(buf.body.String()) + "\n" + msg
	}
	if code >= 500 || code == http.StatusTooManyRequests {
		h.logger.Warn("Push not stored; the sender should retry", "code", code, "err", rep.err)
	} else {
		h.logger.Debug("Push partly refused", "code", code, "err", rep.err)
	}
	hdr := w.Header()
	for k, v := range buf.header {
		if k != "Content-Type" && k != "Content-Length" && k != "X-Content-Type-Options" {
			hdr[k] = v
		}
	}
	if d := retryAfter(rep.err); d > 0 {
		hdr.Set("Retry-After", strconv.Itoa(int(math.Ceil(d.Seconds()))))
	}
	if hdr.Get(writtenSamplesHeader) != "" && code == http.StatusBadRequest {
		// Remote write 2.0: Prometheus' handler counted as written what
		// the distributor took at Append; take off what it refused then
		// and what the ingesters refused later.
		samples := atoiHeader(hdr, writtenSamplesHeader) - rep.rejectedFloats - rep.refused
		histograms := atoiHeader(hdr, writtenHistogramsHeader) - rep.rejectedHistograms
		if samples < 0 {
			histograms += samples
			samples = 0
		}
		hdr.Set(writtenSamplesHeader, strconv.Itoa(samples))
		hdr.Set(writtenHistogramsHeader, strconv.Itoa(max(histograms, 0)))
		hdr.Set(writtenExemplarsHeader, strconv.Itoa(max(atoiHeader(hdr, writtenExemplarsHeader)-rep.rejectedExemplars, 0)))
	}
	if h.otlp && code == http.StatusBadRequest && rep.floats+rep.histograms > rep.refused {
		// OTLP's answer to a partly stored request is 200 with
		// partial_success, in the request's encoding.
		h.writeOTLPPartialSuccess(w, r, int64(rep.rejected+rep.refused), msg)
		return
	}
	http.Error(w, msg, code)
}

// limitBody bounds r's body to h.maxBytes, and returns why r is too large
// when that shows before reading it: a Content-Length over the limit, or
// a snappy-compressed remote-write body whose header says it decompresses
// to more. Prometheus' handler would read such a body whole, and allocate
// the decompressed size the header claims, before looking at it. The body
// reports what is read of it in rep, limited or not.
//
// It also returns the push's size for the in-flight limit: decompressed,
// when the snappy header tells it, since that is what decoding holds in
// memory, and pushes compress from 2x to 10x; else the body's length, or
// for a body of unknown length (chunked) the most it may be.
func (h *pushHandler) limitBody(r *http.Request, rep *pushReport) (int64, string) {
	size := r.ContentLength
	if size < 0 {
		size = h.maxBytes
	}
	if h.maxBytes <= 0 {
		r.Body = &watchedBody{Reader: r.Body, Closer: r.Body, report: rep}
		return max(size, 0), ""
	}
	if r.ContentLength > h.maxBytes {
		return 0, h.tooLargeMessage(fmt.Sprintf("body of %d bytes is larger than", r.ContentLength))
	}
	body := bufio.NewReader(http.MaxBytesReader(nil, r.Body, h.maxBytes))
	r.Body = &watchedBody{Reader: body, Closer: r.Body, report: rep}
	if h.otlp {
		return size, ""
	}
	// The snappy block format begins with the decompressed length as a
	// varint of at most 5 bytes.
	head, _ := body.Peek(binary.MaxVarintLen32)
	n, err := snappy.DecodedLen(head)
	switch {
	case err != nil:
		return size, ""
	case int64(n) > h.maxBytes:
		return 0, h.tooLargeMessage(fmt.Sprintf("body decompresses to %d bytes, more than", n))
	}
	return max(size, int64(n)), ""
}

// isRemoteWrite2 reports whether r says it carries a remote write 2.0
// request.
func isRemoteWrite2(r *http.Request) bool {
	msg, err := remoteapi.ParseProtoMsg(r.Header.Get("Content-Type"))
	return err == nil && msg == remoteapi.WriteV2MessageType
}

func (h *pushHandler) tooLargeMessage(what string) string {
	return fmt.Sprintf("push request %s --distributor.max-request-bytes=%s", what, units.Base2Bytes(h.maxBytes))
}

// watchedBody is a request body that notes in its push's report the error
// of a read, so that pushHandler can answer 413 for a body over
// the limit, which Prometheus' handler answers 400.
type watchedBody struct {
	io.Reader
	io.Closer
	report *pushReport
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	b.report.bodyRead += int64(n)
	if err != nil && err != io.EOF && b.report.bodyErr == nil {
		b.report.bodyErr = err
	}
	if err == io.EOF && b.report.bodyDone.IsZero() {
		b.report.bodyDone = time.Now()
	}
	return n, err
}

func (h *pushHandler) writeOTLPPartialSuccess(w http.ResponseWriter, r *http.Request, rejected int64, msg string) {
	resp := pmetricotlp.NewExportResponse()
	resp.PartialSuccess().SetRejectedDataPoints(rejected)
	resp.PartialSuccess().SetErrorMessage(msg)
	var (
		body []byte
		err  error
	)
	contentType := r.Header.Get("Content-Type")
	if strings.HasPrefix(contentType, "application/json") {
		body, err = resp.MarshalJSON()
	} else {
		contentType = "application/x-protobuf"
		body, err = resp.MarshalProto()
	}
	if err != nil {
		http.Error(w, msg, http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// responseBuffer holds a handler's response until pushHandler decides
// whether to send it.
type responseBuffer struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *responseBuffer) Header() http.Header { return b.header }

func (b *responseBuffer) WriteHeader(code int) {
	if b.status == 0 {
		b.status = code
	}
}

func (b *responseBuffer) Write(p []byte) (int, error) {
	b.WriteHeader(http.StatusOK)
	return b.body.Write(p)
}

func (b *responseBuffer) code() int {
	if b.status == 0 {
		return http.StatusOK
	}
	return b.status
}

func (b *responseBuffer) copyTo(w http.ResponseWriter) {
	for k, v := range b.header {
		w.Header()[k] = v
	}
	w.WriteHeader(b.code())
	_, _ = w.Write(b.body.Bytes())
}
