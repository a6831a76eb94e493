package main

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// demoService is the target `census all` scrapes beside itself: a small
// HTTP service that calls itself a few times a second and exposes the
// golden signals of those calls (traffic and errors by status code, latency
// as a histogram) on its own /metrics.
type demoService struct {
	ln     net.Listener
	logger *slog.Logger
	srv    *http.Server
}

func newDemoService(ln net.Listener, logger *slog.Logger) *demoService {
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
	return &demoService{
		ln:     ln,
		logger: logger,
		srv:    &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
	}
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

// Run serves the demo and sends it traffic until ctx ends.
func (d *demoService) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- d.srv.Serve(d.ln) }()

	url := "http://" + d.ln.Addr().String() + "/hello"
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := d.srv.Shutdown(shutdownCtx)
			client.CloseIdleConnections()
			if srvErr := <-errc; !errors.Is(srvErr, http.ErrServerClosed) {
				return srvErr
			}
			return err
		case err := <-errc:
			return err
		case <-tick.C:
			resp, err := client.Get(url)
			if err != nil {
				d.logger.Debug("Demo request failed", "err", err)
				continue
			}
			resp.Body.Close()
		}
	}
}
