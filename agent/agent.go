// Package agent scrapes targets with Prometheus' own discovery and scrape
// managers into a write-ahead log (Prometheus' agent-mode storage) and
// sends from there through a storage.AppendableV2 (the distributor), so
// each series goes straight to its ingesters and nothing scraped is lost
// while they are unreachable.
package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/discovery/kubernetes"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/scrape"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/storage/remote"
	agentdb "github.com/prometheus/prometheus/tsdb/agent"
	"github.com/prometheus/prometheus/util/compression"
	"go.yaml.in/yaml/v2"
	"golang.org/x/sync/errgroup"

	// Register the file service discovery; static_configs are built in.
	_ "github.com/prometheus/prometheus/discovery/file"
)

// Config configures the agent.
type Config struct {
	// ConfigFile is a Prometheus configuration file; the agent uses its
	// global section and scrape_configs.
	ConfigFile string
	// WALPath is the directory of the write-ahead log of what the agent
	// scraped and has not sent yet. Empty means a temporary directory,
	// removed when the agent stops: a restart then loses what it held.
	WALPath string
	// WALRetention is how long the WAL keeps samples the ingesters have
	// not taken: while every ingester is unreachable for up to this long,
	// nothing scraped is lost.
	WALRetention time.Duration
	// NodeName keeps only the targets on this Kubernetes node (see
	// nodeFilter); empty keeps every target.
	NodeName string
	// Kubeconfig is the kubeconfig file to reach the Kubernetes API
	// server with, outside a cluster; in one, the pod's service account
	// is used.
	Kubeconfig string
	// ScrapeInterval is the scrape interval of DefaultKubernetesConfig.
	ScrapeInterval time.Duration
}

// Kubernetes reports whether the agent can reach a Kubernetes API server:
// it then watches ServiceMonitors and PodMonitors, and lists nodes for
// the targets that have none.
func (c *Config) Kubernetes() bool {
	return c.Kubeconfig != "" || InCluster()
}

// RegisterFlags registers the agent's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.ConfigFile, "config.file", "", "Scrape configuration in Prometheus' format (global and scrape_configs sections).")
	fs.StringVar(&c.WALPath, "agent.wal-path", "", "Directory of the agent's write-ahead log of scraped samples not yet sent; keep it across restarts (a hostPath in a DaemonSet). Empty means a temporary directory removed at exit.")
	fs.DurationVar(&c.WALRetention, "agent.wal-retention", 2*time.Hour, "How long the agent keeps scraped samples the ingesters have not taken; an outage of every ingester up to this long loses nothing.")
	fs.StringVar(&c.NodeName, "agent.node-name", "", "Scrape only the targets on this Kubernetes node, so one agent per node covers each target once; targets without a node are spread over the nodes. Empty scrapes every target. Defaults to $NODE_NAME.")
	fs.StringVar(&c.Kubeconfig, "agent.kubeconfig", "", "Kubeconfig file for the Kubernetes API server, for an agent outside the cluster; in a pod the service account is used.")
	fs.DurationVar(&c.ScrapeInterval, "agent.scrape-interval", 30*time.Second, "Scrape interval of the built-in Kubernetes configuration, used without --config.file.")
}

// Validate checks the configuration. An empty NodeName takes $NODE_NAME,
// which a DaemonSet sets from the pod's spec.nodeName.
func (c *Config) Validate() error {
	if c.NodeName == "" {
		c.NodeName = os.Getenv("NODE_NAME")
	}
	if c.WALRetention < time.Minute {
		return fmt.Errorf("--agent.wal-retention must be at least 1m, got %s", c.WALRetention)
	}
	if c.ScrapeInterval <= 0 {
		return fmt.Errorf("--agent.scrape-interval must be positive, got %s", c.ScrapeInterval)
	}
	return nil
}

// ScrapeConfig returns the scrape configuration an agent with c runs: the
// file c.ConfigFile if set; else builtIn, a configuration in YAML that the
// caller's role brings (the demo of `census all`); else, when builtIn is
// empty too, DefaultKubernetesConfig for c's node.
func (c Config) ScrapeConfig(builtIn string, logger *slog.Logger) (*config.Config, error) {
	switch {
	case c.ConfigFile != "":
		return LoadScrapeConfig(c.ConfigFile, logger)
	case builtIn != "":
		return ParseScrapeConfig(builtIn, logger)
	}
	if logger != nil {
		logger.Info("No --config.file: scraping the pods and services annotated prometheus.io/scrape", "node", c.NodeName)
	}
	return ParseScrapeConfig(DefaultKubernetesConfig(c.Kubeconfig, c.NodeName, c.ScrapeInterval), logger)
}

// LoadScrapeConfig reads and validates a Prometheus configuration file,
// warning of the sections Census ignores.
func LoadScrapeConfig(path string, logger *slog.Logger) (*config.Config, error) {
	cfg, err := config.LoadFile(path, false, logger)
	if err != nil {
		return nil, fmt.Errorf("load scrape configuration: %w", err)
	}
	if text, err := os.ReadFile(path); err == nil {
		warnIgnoredSections(text, logger)
	}
	return cfg, nil
}

// ParseScrapeConfig parses a Prometheus configuration from YAML text,
// warning of the sections Census ignores.
func ParseScrapeConfig(text string, logger *slog.Logger) (*config.Config, error) {
	cfg, err := config.Load(text, logger)
	if err != nil {
		return nil, fmt.Errorf("parse scrape configuration: %w", err)
	}
	warnIgnoredSections([]byte(text), logger)
	return cfg, nil
}

// usedSections are the top-level sections of a Prometheus configuration
// the agent reads; Prometheus' own parser accepts the others, which a
// Prometheus user's file often has.
var usedSections = map[string]bool{"global": true, "scrape_configs": true, "scrape_config_files": true}

// warnIgnoredSections logs once per section of text that Census ignores,
// so a user who brings a whole prometheus.yml learns that its rules,
// alerting or remote_write do nothing here. Rules come with the ruler role.
func warnIgnoredSections(text []byte, logger *slog.Logger) {
	if logger == nil {
		return
	}
	var top yaml.MapSlice
	if err := yaml.Unmarshal(text, &top); err != nil {
		return // Prometheus' parser accepted it; nothing to add.
	}
	for _, item := range top {
		if name := fmt.Sprint(item.Key); !usedSections[name] {
			logger.Warn("Census ignores this section of the scrape configuration; it reads only global, scrape_configs and scrape_config_files", "section", name)
		}
	}
}

// targetUpdateInterval is how soon a discovered change of targets is scraped.
const targetUpdateInterval = time.Second

// healthCheckInterval is how often the agent looks for targets whose
// health changed, to log it.
const healthCheckInterval = 5 * time.Second

// drainTimeout bounds how long a stopping agent tries to send what its
// last scrapes wrote; what it could not send stays in the WAL.
const drainTimeout = 10 * time.Second

// Agent discovers targets, scrapes them into a write-ahead log and sends
// from there through an appendable (the distributor).
type Agent struct {
	file      string // The configuration file Reload reads; empty for a built-in configuration.
	logger    *slog.Logger
	reg       prometheus.Registerer
	sdMetrics *discovery.SDMetrics
	scrape    *scrape.Manager
	db        *agentdb.DB
	remote    *remote.Storage
	sender    *sender
	tempDir   string // Removed at the end of Run, if set.
	running   atomic.Bool

	nodeName string
	nodesSD  discovery.Config // Lists the cluster's nodes; nil outside Kubernetes or without a node name.
	monitors *monitorWatcher  // Nil outside Kubernetes.

	healthEvery time.Duration // How often watchHealth looks; healthCheckInterval but in tests.

	mtx         sync.Mutex         // Guards the fields below.
	cfg         *config.Config     // The configuration given or last reloaded, without the monitors' jobs.
	monitorJobs []yaml.MapSlice    // The ServiceMonitors' and PodMonitors' jobs last seen.
	dm          *discovery.Manager // Set while Run runs.
}

// New returns an agent scraping what scrapeCfg describes into a
// write-ahead log under cfg.WALPath and sending from there through app. It
// opens the WAL, replaying what a previous run left; Run closes it.
func New(cfg Config, scrapeCfg *config.Config, app storage.AppendableV2, logger *slog.Logger, reg prometheus.Registerer) (_ *Agent, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if scrapeCfg == nil || app == nil {
		return nil, errors.New("agent needs a scrape configuration and an appendable")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		// Prometheus' managers register their metrics unconditionally.
		reg = prometheus.NewRegistry()
	}
	a := &Agent{file: cfg.ConfigFile, cfg: scrapeCfg, logger: logger, reg: reg, nodeName: cfg.NodeName, healthEvery: healthCheckInterval}
	if cfg.Kubernetes() {
		a.monitors = &monitorWatcher{kubeconfig: cfg.Kubeconfig, logger: logger.With("part", "monitors")}
		a.monitors.apply = a.applyMonitorJobs
		if cfg.NodeName != "" {
			text := "role: node\n"
			if cfg.Kubeconfig != "" {
				text += fmt.Sprintf("kubeconfig_file: %q\n", cfg.Kubeconfig)
			}
			sdc := &kubernetes.SDConfig{}
			if err := yaml.UnmarshalStrict([]byte(text), sdc); err != nil {
				return nil, fmt.Errorf("node discovery: %w", err)
			}
			a.nodesSD = sdc
		}
	}
	defer func() {
		if err != nil {
			a.close()
		}
	}()

	dir := cfg.WALPath
	if dir == "" {
		if dir, err = os.MkdirTemp("", "census-agent-wal-"); err != nil {
			return nil, fmt.Errorf("create a temporary WAL directory: %w", err)
		}
		a.tempDir = dir
		logger.Info("No --agent.wal-path: the WAL is in a temporary directory, and a restart loses what it holds", "dir", dir)
	}
	// Prometheus' agent storage. Its truncation keeps samples by age
	// alone: the remote storage handed to it has no queue, so it never
	// waits on one; the sender reads before truncation reaches its
	// position, or reads the checkpoint that kept the samples.
	a.remote = remote.NewStorage(logger, nil, func() (int64, error) { return 0, nil }, dir, time.Minute, nil, false)
	opts := agentdb.DefaultOptions()
	opts.WALCompression = compression.Snappy
	opts.MaxWALTime = cfg.WALRetention.Milliseconds()
	opts.MinWALTime = min(opts.MinWALTime, opts.MaxWALTime)
	opts.TruncateFrequency = min(agentdb.DefaultTruncateFrequency, cfg.WALRetention/2)
	opts.EnableSTStorage = true
	opts.EnableMetadataWALRecords = true
	// The WAL's metrics go by Prometheus' names (prometheus_tsdb_wal_*),
	// which the ingester's TSDB registers too in `census all`.
	a.db, err = agentdb.Open(logger.With("storage", "wal"), prometheus.WrapRegistererWithPrefix("census_agent_", reg), a.remote, dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open the agent's WAL in %s: %w", dir, err)
	}
	m := newMetrics(reg)
	a.sender = newSender(filepath.Join(dir, "wal"), filepath.Join(dir, "census-sent-position.json"), app, logger.With("part", "sender"), m)
	registerSenderGauges(reg, a.sender, dir)
	a.db.SetWriteNotified(a.sender)

	sdMetrics, err := discovery.CreateAndRegisterSDMetrics(reg)
	if err != nil {
		return nil, err
	}
	a.sdMetrics = sdMetrics
	// Prometheus batches target updates every 5s to survive the churn of a
	// whole cluster; an agent watches one node, so it reacts within 1s.
	a.scrape, err = scrape.NewManager(&scrape.Options{
		DiscoveryReloadInterval: model.Duration(targetUpdateInterval),
		// Metadata goes into the WAL, and from there to the ingesters.
		AppendMetadata: true,
	}, logger.With("manager", "scrape"), nil, nil, a.db, reg)
	if err != nil {
		return nil, fmt.Errorf("create scrape manager: %w", err)
	}
	if err := a.scrape.ApplyConfig(scrapeCfg); err != nil {
		return nil, fmt.Errorf("apply scrape configuration: %w", err)
	}
	return a, nil
}

// close releases what New opened.
func (a *Agent) close() {
	if a.db != nil {
		if err := a.db.Close(); err != nil {
			a.logger.Warn("Closing the agent's WAL failed", "err", err)
		}
	}
	if a.remote != nil {
		_ = a.remote.Close()
	}
	if a.tempDir != "" {
		_ = os.RemoveAll(a.tempDir)
	}
}

// Run discovers, scrapes and sends until ctx ends. Then it stops scraping,
// sends what the last scrapes wrote (for up to drainTimeout) and closes
// the WAL.
func (a *Agent) Run(ctx context.Context) error {
	defer a.close()
	dm := discovery.NewManager(ctx, a.logger.With("manager", "discovery"), a.reg, a.sdMetrics, discovery.Name("scrape"), discovery.Updatert(targetUpdateInterval))
	if dm == nil {
		return errors.New("create discovery manager: see the log for the reason")
	}
	a.mtx.Lock()
	a.dm = dm
	err := a.applyLocked()
	jobs := len(a.cfg.ScrapeConfigs)
	a.mtx.Unlock()
	if err != nil {
		return err
	}
	a.logger.Info("Agent started", "jobs", jobs, "node", a.nodeName, "kubernetes", a.monitors != nil)

	sendCtx, cancelSend := context.WithCancel(context.Background())
	defer cancelSend()
	stopSending := make(chan struct{})
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		// Run returns ctx's error once ctx ends: that is a clean stop.
		_ = dm.Run()
		return nil
	})
	targets := dm.SyncCh()
	if a.nodeName != "" {
		filtered := make(chan map[string][]*targetgroup.Group)
		f := &nodeFilter{node: a.nodeName, haveNodes: a.nodesSD != nil}
		g.Go(func() error {
			f.run(gctx, dm.SyncCh(), filtered)
			return nil
		})
		targets = filtered
	}
	// The scrape manager runs until Stop; it writes its last appends first.
	g.Go(func() error { return a.scrape.Run(targets) })
	if a.monitors != nil {
		g.Go(func() error {
			if err := a.monitors.run(gctx); err != nil {
				// The agent scrapes what else it has; the log says why
				// monitors are missing.
				a.logger.Error("Cannot watch ServiceMonitors and PodMonitors", "err", err)
			}
			return nil
		})
	}
	g.Go(func() error {
		a.watchHealth(gctx)
		return nil
	})
	g.Go(func() error {
		if err := a.sender.run(sendCtx, stopSending); err != nil {
			return fmt.Errorf("send from the WAL: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		a.mtx.Lock()
		a.dm = nil // No monitor change applies from now on.
		a.mtx.Unlock()
		a.scrape.Stop()
		// Scraping has stopped: send what it wrote last, for a while.
		close(stopSending)
		time.AfterFunc(drainTimeout, cancelSend)
		return nil
	})
	a.running.Store(true)
	defer a.running.Store(false)
	return g.Wait()
}

// applyDiscovery starts discovering the targets of cfg's jobs, and the
// cluster's nodes when the node filter needs them.
func (a *Agent) applyDiscovery(dm *discovery.Manager, cfg *config.Config) error {
	scfgs, err := cfg.GetScrapeConfigs()
	if err != nil {
		return fmt.Errorf("read scrape configs: %w", err)
	}
	sd := make(map[string]discovery.Configs, len(scfgs)+1)
	for _, sc := range scfgs {
		sd[sc.JobName] = sc.ServiceDiscoveryConfigs
	}
	if a.nodesSD != nil {
		sd[nodesJob] = discovery.Configs{a.nodesSD}
	}
	if err := dm.ApplyConfig(sd); err != nil {
		return fmt.Errorf("apply discovery configuration: %w", err)
	}
	return nil
}

// applyMonitorJobs scrapes the jobs of the ServiceMonitors and PodMonitors
// besides the agent's own configuration, replacing the monitors' earlier
// jobs, without a restart.
func (a *Agent) applyMonitorJobs(jobs []yaml.MapSlice) {
	a.mtx.Lock()
	defer a.mtx.Unlock()
	old := a.monitorJobs
	a.monitorJobs = jobs
	if a.dm == nil {
		return
	}
	if err := a.applyLocked(); err != nil {
		a.monitorJobs = old
		a.logger.Error("Cannot apply the ServiceMonitors and PodMonitors; keeping the previous ones", "err", err)
		return
	}
	a.logger.Info("Applied ServiceMonitors and PodMonitors", "jobs", len(jobs))
}

// applyLocked applies a.cfg and the monitors' jobs to the scrape manager,
// and to the discovery manager while Run runs. a.mtx must be held.
func (a *Agent) applyLocked() error {
	cfg := *a.cfg
	if len(a.monitorJobs) > 0 {
		scs, err := monitorScrapeConfigs(a.monitorJobs, a.cfg.GlobalConfig)
		if err != nil {
			return fmt.Errorf("turn ServiceMonitors and PodMonitors into scrape configuration: %w", err)
		}
		cfg.ScrapeConfigs = slices.Clone(a.cfg.ScrapeConfigs)
		names := map[string]bool{}
		for _, sc := range cfg.ScrapeConfigs {
			names[sc.JobName] = true
		}
		for _, sc := range scs {
			if names[sc.JobName] {
				a.logger.Warn("A monitor's job has the name of a configured job; ignoring it", "job", sc.JobName)
				continue
			}
			cfg.ScrapeConfigs = append(cfg.ScrapeConfigs, sc)
		}
	}
	if err := a.scrape.ApplyConfig(&cfg); err != nil {
		return fmt.Errorf("apply scrape configuration: %w", err)
	}
	if a.dm == nil {
		return nil
	}
	return a.applyDiscovery(a.dm, &cfg)
}

// Reload reads the configuration file again and applies it, as
// Prometheus does on SIGHUP and POST /-/reload. A configuration that does
// not load leaves the running one in place, and the error says why. An
// agent on a built-in configuration has nothing to re-read.
func (a *Agent) Reload(ctx context.Context) error {
	if a.file == "" {
		return nil
	}
	cfg, err := LoadScrapeConfig(a.file, a.logger)
	if err != nil {
		return err
	}
	if _, err := cfg.GetScrapeConfigs(); err != nil {
		return fmt.Errorf("read scrape configs: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	a.mtx.Lock()
	defer a.mtx.Unlock()
	old := a.cfg
	a.cfg = cfg
	if err := a.applyLocked(); err != nil {
		a.cfg = old
		if rerr := a.applyLocked(); rerr != nil {
			a.logger.Error("Cannot restore the previous configuration", "err", rerr)
		}
		return err
	}
	a.logger.Info("Configuration reloaded", "file", a.file, "jobs", len(cfg.ScrapeConfigs))
	return nil
}

// Config returns the configuration in use, for /api/v1/status/config
// (which hides its secrets when it prints it).
func (a *Agent) Config() config.Config {
	a.mtx.Lock()
	defer a.mtx.Unlock()
	return *a.cfg
}

// watchHealth logs each target's change of health until ctx ends: at WARN
// when it goes down, with the scrape error, and at INFO when it is back.
// Prometheus logs each failed scrape at DEBUG only.
func (a *Agent) watchHealth(ctx context.Context) {
	type key struct{ job, url string }
	last := map[key]scrape.TargetHealth{}
	tick := time.NewTicker(a.healthEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		next := make(map[key]scrape.TargetHealth, len(last))
		for job, ts := range a.scrape.TargetsActive() {
			for _, t := range ts {
				k := key{job, t.URL().String()}
				h, prev := t.Health(), last[k]
				switch {
				case h == scrape.HealthBad && prev != scrape.HealthBad:
					a.logger.Warn("Target is down", "job", job, "target", k.url, "err", t.LastError())
				case h == scrape.HealthGood && prev == scrape.HealthBad:
					a.logger.Info("Target is up again", "job", job, "target", k.url)
				}
				if h == scrape.HealthUnknown {
					h = prev
				}
				next[k] = h
			}
		}
		last = next
	}
}

// Target is a target the agent scrapes.
type Target struct {
	URL    string
	Labels labels.Labels // After relabelling, without the "__" labels.
}

// Targets returns the targets the agent scrapes now, by job.
func (a *Agent) Targets() map[string][]Target {
	out := map[string][]Target{}
	b := labels.NewBuilder(labels.EmptyLabels())
	for job, ts := range a.scrape.TargetsActive() {
		for _, t := range ts {
			out[job] = append(out[job], Target{URL: t.URL().String(), Labels: t.Labels(b)})
		}
	}
	return out
}

// Ready returns nil while the agent is discovering and scraping.
func (a *Agent) Ready() error {
	if !a.running.Load() {
		return errors.New("agent is not running")
	}
	return nil
}
