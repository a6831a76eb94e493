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
	"github.com/prometheus/prometheus/config"
	"google.golang.org/grpc"

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

Run 'census <role> -h' for the role's flags.
`

func main() {
	os.Exit(runMain(os.Args[1:], os.Stderr))
}

// runMain runs the role named by args[0] until SIGINT or SIGTERM and returns
// the process exit code.
func runMain(args []string, stderr io.Writer) int {
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
	name        string
	role        role
	httpAddr    string
	grpcAddr    string
	logLevel    slog.LevelVar
	ring        ring.Config
	ingester    ingester.Config
	distributor distributor.Config
	agent       agent.Config
	querier     querier.Config
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
	o.ring.RegisterFlags(fs)
	if r.ingester {
		fs.StringVar(&o.grpcAddr, "grpc.listen-address", ":9095", "gRPC address the ingester serves pushes and queries on.")
		o.ingester.RegisterFlags(fs)
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

// start wires the role's components into one run.Group and runs it until
// a signal or a component's failure.
//
// oklog/run interrupts actors one after another in the order they were
// added, and each interrupt below waits until its actor has returned. So
// actors are added in stop order: the agent sends its last scrape while
// the ring and the ingester still take it, the HTTP server drains its
// queries while the ingesters still answer, the ingester turns LEAVING in
// the ring before its gRPC server drains in-flight pushes and queries,
// then the TSDB closes, writing its head snapshot, and last the ingester
// turns LEFT and leaves the ring.
//
// A second SIGINT or SIGTERM, or shutdownTimeout after the first, exits at
// once: whatever was acknowledged is in the WAL already.
func start(o *options, logger *slog.Logger) error {
	// The Prometheus packages register their metrics on the default
	// registry, so every Census metric goes there too.
	reg := prometheus.DefaultRegisterer
	reg.MustRegister(versioncollector.NewCollector("census"))

	var g run.Group
	returned := make(chan struct{})
	defer close(returned)
	addSignalHandler(&g, returned, logger)
	var ready readiness
	mux := http.NewServeMux()

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
		grpcSrv                *grpc.Server
		grpcLn                 net.Listener
		ing                    *ingester.Ingester
	)
	if o.role.ingester {
		grpcLn, err = net.Listen("tcp", o.grpcAddr)
		if err != nil {
			return fmt.Errorf("listen for gRPC: %w", err)
		}
		defer grpcLn.Close()
		grpcAddr = grpcLn.Addr().String()
		instanceAddr = advertiseAddr(grpcLn.Addr())

		ing, err = ingester.New(o.ingester, logger.With("component", "ingester"), reg)
		if err != nil {
			return err
		}
		ready.add("ingester", ing.Ready)
		grpcSrv = grpc.NewServer(
			// Pushes are the only big messages an ingester receives.
			grpc.MaxRecvMsgSize(int(o.ingester.Limits.MaxRequestBytes)),
			grpc.MaxSendMsgSize(censuspb.MaxMessageSize),
		)
		ingester.RegisterServer(grpcSrv, ing)
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
	// appends through the distributor.
	if o.role.agent {
		scrapeCfg, err := loadScrapeConfig(o, httpLn.Addr(), &g, logger)
		if err != nil {
			return err
		}
		a, err := agent.New(o.agent, scrapeCfg, dist, logger.With("component", "agent"), reg)
		if err != nil {
			return err
		}
		ready.add("agent", a.Ready)
		addInOrder(&g, a.Run)
	}

	// Querier: the Prometheus HTTP API over every ingester.
	if o.role.querier {
		q := querier.NewQueryable(r, clients, logger.With("component", "querier"), reg)
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

	// HTTP: self-metrics, readiness, ring status and the role's API.
	mux.Handle("/metrics", promhttp.HandlerFor(prometheus.DefaultGatherer, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	mux.Handle("/ready", ready)
	httpSrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	g.Add(func() error {
		if err := httpSrv.Serve(httpLn); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}, func(error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = httpSrv.Shutdown(ctx)
	})

	if grpcSrv != nil {
		// On stop the ingester turns LEAVING in the ring, so writers send
		// its series to the next instances while readers still ask it;
		// then the gRPC server drains: in-flight pushes and queries
		// finish, new ones fail with Unavailable, and after ten seconds
		// the stragglers (a client that stopped reading its stream) are
		// cut off.
		g.Add(func() error {
			return grpcSrv.Serve(grpcLn)
		}, func(error) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := r.SetLeaving(ctx); err != nil {
				logger.Warn("Could not tell the ring this ingester is leaving before it stops serving", "err", err)
			}
			cancel()
			stopGRPC(grpcSrv, 10*time.Second)
		})
		// Then the ingester refuses what is left, waits for the requests
		// it still holds, and closes the TSDB with a head snapshot, so the
		// next start replays no WAL.
		addInOrder(&g, ing.Run)
	}

	// The ring last: an ingester turns LEFT and leaves once its data is
	// safe on disk.
	addInOrder(&g, r.Run)

	logger.Info("Census started", "role", o.name, "http", httpLn.Addr().String(), "grpc", grpcAddr, "gossip", r.GossipAddr())
	if o.name == "all" {
		logger.Info("Query Census at http://" + localURLHost(httpLn.Addr()) + "/api/v1/query?query=up")
	}
	err = g.Run()
	if errors.Is(err, run.ErrSignal) {
		logger.Info("Census stopped", "reason", err)
		return nil
	}
	return err
}

// shutdownTimeout bounds a graceful stop. Kubernetes' grace period should
// be longer than the stop of an ingester (writing its head snapshot takes
// seconds per million series), so this bound matters only where nothing
// else enforces one.
const shutdownTimeout = 3 * time.Minute

// addSignalHandler adds the actor that returns on the first SIGINT or
// SIGTERM, which stops every actor in order. After it, a second signal or
// shutdownTimeout exits the process at once, unless returned is closed
// first.
func addSignalHandler(g *run.Group, returned <-chan struct{}, logger *slog.Logger) {
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	stopc := make(chan struct{})
	g.Add(func() error {
		select {
		case sig := <-sigc:
			logger.Info("Stopping gracefully; a second signal stops at once", "signal", sig, "timeout", shutdownTimeout)
			go func() {
				defer signal.Stop(sigc)
				select {
				case sig := <-sigc:
					logger.Error("Second signal: exiting without a graceful stop", "signal", sig)
				case <-time.After(shutdownTimeout):
					logger.Error("Graceful stop timed out: exiting without it", "timeout", shutdownTimeout)
				case <-returned:
					return
				}
				os.Exit(1)
			}()
			return run.SignalError{Signal: sig}
		case <-stopc:
			signal.Stop(sigc)
			return nil
		}
	}, func(error) {
		close(stopc)
	})
}

// addInOrder adds an actor running fn whose interrupt cancels fn's context
// and waits until fn has returned, so that the next actor is interrupted
// only once this one has stopped.
func addInOrder(g *run.Group, fn func(ctx context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	g.Add(func() error {
		defer close(done)
		return fn(ctx)
	}, func(error) {
		cancel()
		<-done
	})
}

// loadScrapeConfig reads --config.file. Without one, an agent in
// Kubernetes scrapes the annotated pods and services of its node, and
// `census all` scrapes itself and the demo service, which it adds to g.
func loadScrapeConfig(o *options, self net.Addr, g *run.Group, logger *slog.Logger) (*config.Config, error) {
	if o.agent.ConfigFile != "" {
		return agent.LoadScrapeConfig(o.agent.ConfigFile, logger)
	}
	if o.name == "agent" {
		logger.Info("No --config.file: scraping the pods and services annotated prometheus.io/scrape", "node", o.agent.NodeName)
		return agent.ParseScrapeConfig(agent.DefaultKubernetesConfig(o.agent.Kubeconfig, o.agent.NodeName, o.agent.ScrapeInterval), logger)
	}
	demoLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the demo service: %w", err)
	}
	demo := newDemoService(demoLn, logger.With("component", "demo"))
	addInOrder(g, demo.Run)
	return agent.ParseScrapeConfig(fmt.Sprintf(demoScrapeConfig, localURLHost(self), demoLn.Addr().String()), logger)
}

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
    static_configs:
      - targets: [%q]
`

// stopGRPC drains in-flight calls, forcing the stop after timeout.
func stopGRPC(srv *grpc.Server, timeout time.Duration) {
	done := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		srv.Stop()
		<-done
	}
}

// advertiseAddr is the address other components dial for a listener: its
// own when bound to one IP, else this host's first non-loopback address.
func advertiseAddr(a net.Addr) string {
	tcp := a.(*net.TCPAddr)
	if !tcp.IP.IsUnspecified() {
		return tcp.String()
	}
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, addr := range addrs {
			if ipn, ok := addr.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
				return net.JoinHostPort(ipn.IP.String(), fmt.Sprint(tcp.Port))
			}
		}
	}
	return net.JoinHostPort("127.0.0.1", fmt.Sprint(tcp.Port))
}

// localURLHost is host:port for reaching a local listener from this
// machine: localhost when it is bound to every address.
func localURLHost(a net.Addr) string {
	tcp := a.(*net.TCPAddr)
	if tcp.IP.IsUnspecified() {
		return net.JoinHostPort("localhost", fmt.Sprint(tcp.Port))
	}
	return tcp.String()
}
