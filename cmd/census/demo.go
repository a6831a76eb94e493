package main

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// demoService is the target `census all` scrapes beside itself: a small
// HTTP handler, served on the process's own HTTP server, that is called a
// few times a second and exposes the golden signals of those calls
// (traffic and errors by status code, latency as a histogram) on its own
// /metrics.
type demoService struct {
	http.Handler
	helloURL string
	logger   *slog.Logger
}

// newDemoService returns the demo, which Run calls at baseURL+"hello".
func newDemoService(baseURL string, logger *slog.Logger) *demoService {
	reg := prometheus.NewRegistry()
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "demo_http_requests_total",
		Help: "Requests served by the demo service, by status code and method.",
	}, []string{"code", "method"})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "demo_http_request_duration_seconds",
		Help:    "Latency of the demo service's requests.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1},
	}, []string{"code", "method"})
	reg.MustRegister(requests, latency)

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/hello", promhttp.InstrumentHandlerDuration(latency,
		promhttp.InstrumentHandlerCounter(requests, http.HandlerFunc(hello))))
	return &demoService{Handler: mux, helloURL: baseURL + "hello", logger: logger}
}

// hello answers after a short, skewed delay, failing one call in twenty.
func hello(w http.ResponseWriter, _ *http.Request) {
	time.Sleep(time.Duration(rand.ExpFloat64() * float64(5*time.Millisecond)))
	switch n := rand.IntN(100); {
	case n < 5:
		http.Error(w, "simulated failure", http.StatusInternalServerError)
	case n < 8:
		http.NotFound(w, nil)
	default:
		_, _ = w.Write([]byte("hello\n"))
	}
}

// Run sends the demo traffic until ctx ends.
func (d *demoService) Run(ctx context.Context) error {
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.helloURL, nil)
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err != nil {
				d.logger.Debug("Demo request failed", "err", err)
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
}
