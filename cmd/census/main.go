// Command census runs Census: each role (agent, distributor, ingester,
// querier) as its own process, or every role in one process with
// `census all`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/version"

	"github.com/census-metrics/census/agent"
	"github.com/census-metrics/census/distributor"
	"github.com/census-metrics/census/ingester"
	censuspb "github.com/census-metrics/census/proto"
	"github.com/census-metrics/census/querier"
	"github.com/census-metrics/census/ring"
)

const usage = `Census is a horizontally sharded, Prometheus-compatible metrics system.

Usage: census <role> [flags]

Roles:
  agent        scrape targets and push each series to its ingesters
  distributor  take Prometheus remote write and OTLP pushes to the ingesters
  ingester     store series in a Prometheus TSDB, serve them over gRPC
  querier      serve the Prometheus HTTP API over every ingester
  all          every role in one process, scraping itself and a demo service

Run 'census <role> -h' for the role's flags, 'census --version' for the version.
`

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

// runMain runs the role named by args[0] until SIGINT or SIGTERM and returns
// the process exit code.
func runMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && (args[0] == "--version" || args[0] == "version") {
		fmt.Fprintln(stdout, version.Print("census"))
		return 0
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		return 2
	}
	opts, err := parseFlags(args[0], args[1:], stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "census: %v\n", err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: &opts.logLevel}))
	if err := start(opts, logger); err != nil {
		logger.Error("Census stopped with an error", "err", err)
		return 1
	}
	return 0
}

// role says which components a subcommand runs.
type role struct {
	ingester, agent, distributor, querier bool
}

var roles = map[string]role{
	"agent":       {agent: true},
	"distributor": {distributor: true},
	"ingester":    {ingester: true},
	"querier":     {querier: true},
	"all":         {ingester: true, agent: true, distributor: true, querier: true},
}

// options is every flag of every role; a role registers only its own, so
// an unknown flag is an error rather than silently ignored.
type options struct {
	name     string
	role     role
	httpAddr string
	grpcAddr string
	logLevel slog.LevelVar
	// shutdownTimeout bounds a graceful stop, hand-off included.
	shutdownTimeout time.Duration
	decommission    decommissionOptions
	ring            ring.Config
	ingester        ingester.Config
	distributor     distributor.Config
	agent           agent.Config
	querier         querier.Config
}

func parseFlags(name string, args []string, stderr io.Writer) (*options, error) {
	r, ok := roles[name]
	if !ok {
		return nil, fmt.Errorf("unknown role %q; want one of agent, distributor, ingester, querier, all", name)
	}
	o := &options{name: name, role: r}
	fs := flag.NewFlagSet("census "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)

	httpDefault := ":8080"
	if r.querier {
		httpDefault = ":9009"
	}
	fs.StringVar(&o.httpAddr, "http.listen-address", httpDefault, "HTTP address: /metrics, /ready, /ring and the role's API.")
	fs.TextVar(&o.logLevel, "log.level", &o.logLevel, "Log level: DEBUG, INFO, WARN or ERROR.")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 3*time.Minute, "Longest graceful stop after SIGTERM, an ingester's hand-off included; then the process exits at once (whatever was acknowledged is in the WAL, and an interrupted hand-off resumes at the next start). On Kubernetes keep it below the pod's terminationGracePeriodSeconds.")
	o.ring.RegisterFlags(fs)
	if r.ingester {
		fs.StringVar(&o.grpcAddr, "grpc.listen-address", ":9095", "gRPC address the ingester serves pushes and queries on.")
		o.ingester.RegisterFlags(fs)
		o.decommission.registerFlags(fs)
	}
	if r.agent {
		o.agent.RegisterFlags(fs)
	}
	if r.agent || r.distributor {
		// The agent sends through the distributor's code: both take its
		// validation and push flags.
		o.distributor.RegisterFlags(fs)
	}
	if r.querier {
		o.querier.RegisterFlags(fs)
	}
	if name == "all" {
		// One process holds the only ingester: one copy is all there is,
		// and only this process gossips with it and pushes to it.
		for flagName, value := range map[string]string{
			"ring.replication-factor": "1",
			"memberlist.bind-address": "127.0.0.1:7946",
			"grpc.listen-address":     "127.0.0.1:9095",
		} {
			f := fs.Lookup(flagName)
			f.DefValue = value
			if err := f.Value.Set(value); err != nil {
				return nil, err
			}
		}
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if r.querier {
		// /api/v1/status/flags shows the flags this process runs with.
		o.querier.Flags = map[string]string{}
		fs.VisitAll(func(f *flag.Flag) { o.querier.Flags[f.Name] = f.Value.String() })
	}
	if err := o.ring.Validate(); err != nil {
		return nil, err
	}
	if r.ingester {
		if err := o.ingester.Validate(); err != nil {
			return nil, err
		}
	}
	if r.agent {
		if name == "agent" && o.agent.ConfigFile == "" && !o.agent.Kubernetes() {
			return nil, errors.New("the agent needs --config.file, unless it runs in a Kubernetes cluster (or has --agent.kubeconfig)")
		}
		if name == "all" && o.agent.WALPath == "" {
			// Beside the ingester's data, so `make run` keeps it.
			o.agent.WALPath = filepath.Join(o.ingester.StoragePath, "agent-wal")
		}
		if err := o.agent.Validate(); err != nil {
			return nil, err
		}
	}
	if r.agent || r.distributor {
		if err := o.distributor.Validate(); err != nil {
			return nil, err
		}
	}
	if r.querier {
		if err := o.querier.Validate(); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// readiness collects the Ready functions /ready reports on.
type readiness []struct {
	name  string
	ready func() error
}

func (rs *readiness) add(name string, ready func() error) {
	*rs = append(*rs, struct {
		name  string
		ready func() error
	}{name, ready})
}

// ServeHTTP answers 200 when every component is ready, else 503 with why.
func (rs readiness) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	var not []string
	for _, r := range rs {
		if err := r.ready(); err != nil {
			not = append(not, fmt.Sprintf("%s: %v", r.name, err))
		}
	}
	if len(not) > 0 {
		http.Error(w, "not ready: "+strings.Join(not, "; "), http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// start wires the role's components and runs them until a signal or a
// component's failure.
//
// The process is one run.Group of two actors: the signal handler and the
// lifecycle, which runs every component and stops them in the order they
// are added below: the agent sends its last scrape while the ring and the
// ingester still take it, the HTTP server drains its queries while the
// ingesters still answer, the ingester turns LEAVING in the ring before
// its gRPC server drains in-flight pushes and queries, then the TSDB
// closes, writing its head snapshot, and last the ingester turns LEFT and
// leaves the ring.
//
// A second SIGINT or SIGTERM, or shutdownTimeout after the first, exits at
// once: whatever was acknowledged is in the WAL already.
func start(o *options, logger *slog.Logger) error {
	// The Prometheus packages register their metrics on the default
	// registry, so every Census metric goes there too.
	reg := prometheus.DefaultRegisterer
	reg.MustRegister(versioncollector.NewCollector("census"))

	life := newLifecycle(logger)
	var ready readiness
	mux := http.NewServeMux()
	reloaders := &reloaders{logger: logger}

	httpLn, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		return fmt.Errorf("listen for HTTP: %w", err)
	}
	defer httpLn.Close()

	// Ingester: New only validates; the ingester's actor opens the TSDB,
	// replaying its WAL while /ready says how far it got and the gRPC
	// server already answers Unavailable, so senders use other replicas.
	var (
		instanceAddr, grpcAddr string
		grpcSrv                *ingester.Server
		ing                    *ingester.Ingester
	)
	if o.role.ingester {
		grpcLn, err := net.Listen("tcp", o.grpcAddr)
		if err != nil {
			return fmt.Errorf("listen for gRPC: %w", err)
		}
		defer grpcLn.Close()
		grpcAddr = grpcLn.Addr().String()
		instanceAddr = ingester.AdvertiseAddr(grpcLn.Addr())

		ing, err = ingester.New(o.ingester, logger.With("component", "ingester"), reg)
		if err != nil {
			return err
		}
		ready.add("ingester", ing.Ready)
		grpcSrv = ingester.NewServer(ing, grpcLn)
	}

	// Ring: every role is a member; an ingester also owns tokens, kept in
	// its data directory so that a restart gets the same series back.
	if o.role.ingester {
		o.ring.TokensFile = filepath.Join(o.ingester.StoragePath, "ring-tokens.json")
	}
	r, err := ring.New(o.ring, instanceAddr, logger.With("component", "ring"), reg)
	if err != nil {
		return err
	}
	ready.add("ring", r.Ready)
	mux.Handle("/ring", r)

	clients := censuspb.NewClientPool()
	defer clients.Close()

	// Decommission: an ingester scaled away hands its series to their new
	// owners before it leaves. It reads the volume before the ring reads
	// its tokens there: a volume whose hand-off finished is emptied.
	var dec *ingester.Decommission
	if o.role.ingester {
		dec, err = ingester.NewDecommission(ing, ingester.HandOffConfig{
			Self:       r.ID(),
			Owners:     handOffOwners(r),
			Client:     clients.Get,
			SetLeaving: r.SetLeaving,
		}, logger.With("component", "decommission"))
		if err != nil {
			return err
		}
		mux.Handle("/ingester/decommission", dec)
	}
	// Connections to ingesters that left the ring are closed.
	life.add("client pool", func(ctx context.Context) error {
		return clients.RetainEvery(ctx, 30*time.Second, r.HasInstanceAt)
	}, nil)

	// Distributor: validates, shards and pushes; the agent's scrapes and
	// the pushes of other systems all go through it.
	var dist *distributor.Distributor
	if o.role.agent || o.role.distributor {
		dist, err = distributor.New(o.distributor, r, clients, logger.With("component", "distributor"), reg)
		if err != nil {
			return err
		}
	}
	if o.role.distributor {
		// Prometheus remote write at /api/v1/push, OTLP at
		// /otlp/v1/metrics.
		distributor.NewReceiver(dist, logger.With("component", "distributor"), reg).Register(mux)
	}

	// Agent: scrapes (itself and the demo service, for `census all`) and
	// appends through the distributor. It stops first, sending its last
	// scrape while everything below still takes it.
	if o.role.agent {
		scrapeCfg, err := o.agent.ScrapeConfig(builtInScrapeConfig(o, httpLn.Addr(), mux, life, logger), logger)
		if err != nil {
			return err
		}
		a, err := agent.New(o.agent, scrapeCfg, dist, logger.With("component", "agent"), reg)
		if err != nil {
			return err
		}
		// /api/v1/status/config shows the scrape configuration in force.
		o.querier.ScrapeConfig = a.Config
		ready.add("agent", a.Ready)
		reloaders.add(func() error { return a.Reload(context.Background()) })
		life.add("agent", a.Run, nil)
	}

	// Querier: the Prometheus HTTP API over every ingester.
	if o.role.querier {
		q := querier.NewQueryable(r, clients, logger.With("component", "querier"), reg)
		q.HedgeDelay = o.querier.HedgeDelay
		// Not ready until an ingester is ACTIVE: an empty answer would
		// read as "no data" rather than "no ingesters".
		ready.add("querier", q.Ready)
		build := querier.BuildInfo{
			Version:   version.Version,
			Revision:  version.Revision,
			Branch:    version.Branch,
			BuildUser: version.BuildUser,
			BuildDate: version.BuildDate,
			GoVersion: version.GoVersion,
		}
		api, err := querier.NewAPI(o.querier, q, build, logger.With("component", "querier"), reg)
		if err != nil {
			return err
		}
		mux.Handle("/api/v1/", api)
	}

	// A scaled-down ingester hands off before anything below stops: it
	// serves queries, its progress and the ring until its targets hold
	// everything.
	if dec != nil {
		addDecommission(life, dec, o.decommission, r.ID(), logger.With("component", "decommission"))
	}

	// HTTP: self-metrics, health, readiness, reload, ring status and the
	// role's API. It drains its requests while the ingesters still answer.
	mux.Handle("/metrics", promhttp.HandlerFor(prometheus.DefaultGatherer, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	mux.Handle("/ready", ready)
	mux.Handle("/-/ready", ready)
	mux.HandleFunc("/-/healthy", healthy)
	mux.Handle("/-/reload", reloaders)
	httpSrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	life.add("http", func(ctx context.Context) error {
		return serveHTTP(ctx, httpSrv, httpLn)
	}, nil)

	if grpcSrv != nil {
		// The ingester turns LEAVING in the ring, so writers send its
		// series to the next instances while readers still ask it.
		life.add("ring leaving", nil, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := r.SetLeaving(ctx); err != nil {
				logger.Warn("Could not tell the ring this ingester is leaving before it stops serving", "err", err)
			}
		})
		// Then the gRPC server drains: in-flight pushes and queries
		// finish, new ones fail with Unavailable, and after
		// ingester.DrainTimeout the stragglers are cut off.
		life.add("grpc", grpcSrv.Run, nil)
		// Then the ingester refuses what is left, waits for the requests
		// it still holds, and closes the TSDB with a head snapshot, so the
		// next start replays no WAL.
		life.add("ingester", ing.Run, nil)
	}

	// The ring last: an ingester turns LEFT and leaves once its data is
	// safe on disk.
	life.add("ring", r.Run, nil)

	var g run.Group
	returned := make(chan struct{})
	defer close(returned)
	addSignalHandler(&g, returned, o.shutdownTimeout, reloaders.reload, logger)
	g.Add(life.Run, life.Interrupt)

	logger.Info("Census started", "role", o.name, "http", httpLn.Addr().String(), "grpc", grpcAddr, "gossip", r.GossipAddr(), "version", version.Version)
	if o.name == "all" {
		logger.Info("Query Census at http://" + localURLHost(httpLn.Addr()) + "/api/v1/query?query=up")
	}
	err = g.Run()
	if dec != nil && handedOff(dec) {
		// Everything is on the new owners and this ingester left the
		// ring: a later ingester on this volume joins fresh.
		logger.Info("Decommissioned: emptying the volume", "path", o.ingester.StoragePath)
		if rmErr := ingester.RemoveData(o.ingester.StoragePath); rmErr != nil {
			return fmt.Errorf("empty the volume after the decommission: %w", rmErr)
		}
		return nil
	}
	if errors.Is(err, run.ErrSignal) {
		logger.Info("Census stopped", "reason", err)
		return nil
	}
	return err
}

// serveHTTP serves ln until ctx ends, then drains requests for up to ten
// seconds.
func serveHTTP(ctx context.Context, srv *http.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
		if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
}

// healthy answers 200 while the process runs, as Prometheus' /-/healthy.
func healthy(w http.ResponseWriter, _ *http.Request) {
	_, _ = w.Write([]byte("Census is Healthy.\n"))
}

// handedOff reports whether d handed everything off.
func handedOff(d *ingester.Decommission) bool {
	select {
	case <-d.Done():
		return true
	default:
		return false
	}
}

// addSignalHandler adds the actor that returns on the first SIGINT or
// SIGTERM, which stops the process. SIGHUP reloads the configuration, as
// in Prometheus. After the first stop signal, a second one or
// shutdownTimeout exits the process at once, unless returned is closed
// first. Kubernetes' grace period should be longer than the stop of an
// ingester (writing its head snapshot takes seconds per million series; a
// hand-off, the time to copy its volume).
func addSignalHandler(g *run.Group, returned <-chan struct{}, shutdownTimeout time.Duration, reload func() error, logger *slog.Logger) {
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	stopc := make(chan struct{})
	g.Add(func() error {
		for {
			select {
			case sig := <-sigc:
				if sig == syscall.SIGHUP {
					// reload logs its own outcome.
					_ = reload()
					continue
				}
				logger.Info("Stopping gracefully; a second signal stops at once", "signal", sig, "timeout", shutdownTimeout)
				go exitOnSecondSignal(sigc, returned, shutdownTimeout, logger)
				return run.SignalError{Signal: sig}
			case <-stopc:
				signal.Stop(sigc)
				return nil
			}
		}
	}, func(error) {
		close(stopc)
	})
}

// exitOnSecondSignal exits the process on a second SIGINT or SIGTERM, or
// once shutdownTimeout has passed, unless returned is closed first.
func exitOnSecondSignal(sigc <-chan os.Signal, returned <-chan struct{}, shutdownTimeout time.Duration, logger *slog.Logger) {
	timeout := time.After(shutdownTimeout)
	for {
		select {
		case sig := <-sigc:
			if sig == syscall.SIGHUP {
				continue
			}
			logger.Error("Second signal: exiting without a graceful stop", "signal", sig)
		case <-timeout:
			logger.Error("Graceful stop timed out: exiting without it", "timeout", shutdownTimeout)
		case <-returned:
			return
		}
		os.Exit(1)
	}
}

// reloaders re-reads the configuration of every component that has one,
// on SIGHUP and on POST /-/reload. A component whose new configuration is
// bad keeps its old one.
type reloaders struct {
	logger *slog.Logger
	fns    []func() error
}

func (rs *reloaders) add(fn func() error) { rs.fns = append(rs.fns, fn) }

// reload runs every reloader and logs the outcome.
func (rs *reloaders) reload() error {
	var errs []error
	for _, fn := range rs.fns {
		if err := fn(); err != nil {
			errs = append(errs, err)
		}
	}
	err := errors.Join(errs...)
	if err != nil {
		rs.logger.Error("Reloading the configuration failed: the old one stays in force", "err", err)
		return err
	}
	rs.logger.Info("Reloaded the configuration")
	return nil
}

// ServeHTTP reloads on POST, as Prometheus' /-/reload: 200 when every
// component took its new configuration, else 500 and why.
func (rs *reloaders) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost && r.Method != http.MethodPut {
		w.Header().Set("Allow", "POST, PUT")
		http.Error(w, "only POST or PUT requests allowed", http.StatusMethodNotAllowed)
		return
	}
	if err := rs.reload(); err != nil {
		http.Error(w, "reload failed: "+err.Error(), http.StatusInternalServerError)
		return
	}
	_, _ = w.Write([]byte("reloaded\n"))
}

// builtInScrapeConfig is the scrape configuration role brings when
// --config.file is not given: `census all` serves the demo service under
// /demo/ on the process's own HTTP server, so that its instance label stays
// the same across restarts, and scrapes it and itself. An agent has none:
// it takes the agent's Kubernetes default.
func builtInScrapeConfig(o *options, self net.Addr, mux *http.ServeMux, life *lifecycle, logger *slog.Logger) string {
	if o.agent.ConfigFile != "" || o.name != "all" {
		return ""
	}
	demo := newDemoService("http://"+localURLHost(self)+demoPath, logger.With("component", "demo"))
	mux.Handle(demoPath, http.StripPrefix(strings.TrimSuffix(demoPath, "/"), demo))
	life.add("demo", demo.Run, nil)
	return fmt.Sprintf(demoScrapeConfig, localURLHost(self), demoPath+"metrics")
}

// demoPath is where `census all` serves the demo service.
const demoPath = "/demo/"

// demoScrapeConfig is what `census all` scrapes without --config.file.
const demoScrapeConfig = `
global:
  scrape_interval: 5s
  scrape_timeout: 5s
scrape_configs:
  - job_name: census
    static_configs:
      - targets: [%q]
  - job_name: demo
    metrics_path: %q
    static_configs:
      - targets: [%[1]q]
`

// localURLHost is host:port for reaching a local listener from this
// machine: localhost when it is bound to every address.
func localURLHost(a net.Addr) string {
	tcp := a.(*net.TCPAddr)
	if tcp.IP.IsUnspecified() {
		return net.JoinHostPort("localhost", fmt.Sprint(tcp.Port))
	}
	return tcp.String()
}
