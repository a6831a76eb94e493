// Package agent scrapes targets with Prometheus' own discovery and scrape
// managers and appends every sample through a storage.AppendableV2 (the
// distributor), so each series goes straight to its ingesters.
package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/scrape"
	"github.com/prometheus/prometheus/storage"
	"golang.org/x/sync/errgroup"

	// Register the file service discovery; static_configs are built in.
	_ "github.com/prometheus/prometheus/discovery/file"
)

// Config configures the agent.
type Config struct {
	// ConfigFile is a Prometheus configuration file; the agent uses its
	// global section and scrape_configs.
	ConfigFile string
}

// RegisterFlags registers the agent's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.ConfigFile, "config.file", "", "Scrape configuration in Prometheus' format (global and scrape_configs sections).")
}

// LoadScrapeConfig reads and validates a Prometheus configuration file.
func LoadScrapeConfig(path string, logger *slog.Logger) (*config.Config, error) {
	cfg, err := config.LoadFile(path, false, logger)
	if err != nil {
		return nil, fmt.Errorf("load scrape configuration: %w", err)
	}
	return cfg, nil
}

// ParseScrapeConfig parses a Prometheus configuration from YAML text.
func ParseScrapeConfig(text string, logger *slog.Logger) (*config.Config, error) {
	cfg, err := config.Load(text, logger)
	if err != nil {
		return nil, fmt.Errorf("parse scrape configuration: %w", err)
	}
	return cfg, nil
}

// targetUpdateInterval is how soon a discovered change of targets is scraped.
const targetUpdateInterval = time.Second

// Agent discovers targets, scrapes them and appends their samples.
type Agent struct {
	cfg       *config.Config
	logger    *slog.Logger
	reg       prometheus.Registerer
	sdMetrics *discovery.SDMetrics
	scrape    *scrape.Manager
	running   atomic.Bool
}

// New returns an agent scraping what cfg describes into app.
func New(cfg *config.Config, app storage.AppendableV2, logger *slog.Logger, reg prometheus.Registerer) (*Agent, error) {
	if cfg == nil || app == nil {
		return nil, errors.New("agent needs a scrape configuration and an appendable")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		// Prometheus' managers register their metrics unconditionally.
		reg = prometheus.NewRegistry()
	}
	sdMetrics, err := discovery.CreateAndRegisterSDMetrics(reg)
	if err != nil {
		return nil, err
	}
	// Prometheus batches target updates every 5s to survive the churn of a
	// whole cluster; an agent watches one node, so it reacts within 1s.
	//
	// AppendMetadata sends each series' type, help and unit with its
	// samples, so the querier's /api/v1/metadata can answer.
	sm, err := scrape.NewManager(&scrape.Options{
		DiscoveryReloadInterval: model.Duration(targetUpdateInterval),
		AppendMetadata:          true,
	}, logger.With("manager", "scrape"), nil, nil, app, reg)
	if err != nil {
		return nil, fmt.Errorf("create scrape manager: %w", err)
	}
	if err := sm.ApplyConfig(cfg); err != nil {
		return nil, fmt.Errorf("apply scrape configuration: %w", err)
	}
	return &Agent{cfg: cfg, logger: logger, reg: reg, sdMetrics: sdMetrics, scrape: sm}, nil
}

// Run discovers and scrapes until ctx ends, then stops both managers.
func (a *Agent) Run(ctx context.Context) error {
	dm := discovery.NewManager(ctx, a.logger.With("manager", "discovery"), a.reg, a.sdMetrics, discovery.Name("scrape"), discovery.Updatert(targetUpdateInterval))
	if dm == nil {
		return errors.New("create discovery manager: see the log for the reason")
	}
	scfgs, err := a.cfg.GetScrapeConfigs()
	if err != nil {
		return fmt.Errorf("read scrape configs: %w", err)
	}
	sd := make(map[string]discovery.Configs, len(scfgs))
	for _, sc := range scfgs {
		sd[sc.JobName] = sc.ServiceDiscoveryConfigs
	}
	if err := dm.ApplyConfig(sd); err != nil {
		return fmt.Errorf("apply discovery configuration: %w", err)
	}
	a.logger.Info("Agent started", "jobs", len(scfgs))

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		// Run returns ctx's error once ctx ends: that is a clean stop.
		_ = dm.Run()
		return nil
	})
	// The scrape manager runs until Stop; it sends its last appends first.
	g.Go(func() error { return a.scrape.Run(dm.SyncCh()) })
	g.Go(func() error {
		<-gctx.Done()
		a.scrape.Stop()
		return nil
	})
	a.running.Store(true)
	defer a.running.Store(false)
	return g.Wait()
}

// Ready returns nil while the agent is discovering and scraping.
func (a *Agent) Ready() error {
	if !a.running.Load() {
		return errors.New("agent is not running")
	}
	return nil
}
