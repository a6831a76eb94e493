package querier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/grafana/regexp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/route"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/scrape"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/index"
	"github.com/prometheus/prometheus/util/features"
	"github.com/prometheus/prometheus/util/notifications"
	v1 "github.com/prometheus/prometheus/web/api/v1"
)

// APIPrefix is the path under which NewAPI's handler serves: it expects the
// full paths (/api/v1/query, ...), so mount it unstripped at APIPrefix+"/".
const APIPrefix = "/api/v1"

// BuildInfo is the version of the binary that /api/v1/status/buildinfo
// reports. cmd/census fills it from github.com/prometheus/common/version,
// whose fields it mirrors; an empty GoVersion is runtime.Version().
type BuildInfo struct {
	Version   string
	Revision  string
	Branch    string
	BuildUser string
	BuildDate string
	GoVersion string
}

// Prometheus' defaults for the remote read endpoint (/api/v1/read), which
// serves the queryable to other Prometheus servers.
const (
	remoteReadSampleLimit      = 5e7
	remoteReadConcurrencyLimit = 10
	remoteReadMaxBytesInFrame  = 1 << 20
)

// NewAPI returns the handler of the Prometheus HTTP API over q, evaluated by
// Prometheus' PromQL engine with cfg's limits. It serves the full paths
// under APIPrefix (/api/v1/query, /api/v1/series, ...), unstripped.
//
// Census stores no rules, alerts, targets, exemplars or metadata, so those
// endpoints answer as an empty Prometheus would, and the TSDB admin
// endpoints are disabled. Each call registers the engine's metrics on reg
// (nil registers nothing); when reg is also a prometheus.Gatherer,
// /api/v1/status/tsdb and /api/v1/status/self_metrics read from it.
func NewAPI(cfg Config, q storage.SampleAndChunkQueryable, build BuildInfo, logger *slog.Logger, reg prometheus.Registerer) (http.Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("querier config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	gatherer, ok := reg.(prometheus.Gatherer)
	if !ok {
		gatherer = prometheus.NewRegistry()
	}
	if build.GoVersion == "" {
		build.GoVersion = runtime.Version()
	}

	featureRegistry := features.NewRegistry()
	engine := promql.NewEngine(promql.EngineOpts{
		Logger:        logger.With("component", "query engine"),
		Reg:           reg,
		MaxSamples:    cfg.MaxSamples,
		Timeout:       cfg.Timeout,
		LookbackDelta: cfg.LookbackDelta,
		// A subquery without a step uses the evaluation interval, which
		// Census, having no rules, fixes at Prometheus' default.
		NoStepSubqueryIntervalFn: func(int64) int64 {
			return time.Duration(config.DefaultGlobalConfig.EvaluationInterval).Milliseconds()
		},
		// Always on in Prometheus since v2.33; queries rely on them.
		EnableAtModifier:     true,
		EnableNegativeOffset: true,
		FeatureRegistry:      featureRegistry,
	})

	started := time.Now()
	cwd, _ := os.Getwd() // Informational only, as in Prometheus.
	conf := config.DefaultConfig
	api := v1.NewAPI(
		engine,
		q,
		nil, // No appender: the remote write receiver is the distributor's.
		emptyExemplars{},
		func(context.Context) v1.ScrapePoolsRetriever { return emptyTargets{} },
		func(context.Context) v1.TargetRetriever { return emptyTargets{} },
		func(context.Context) v1.AlertmanagerRetriever { return emptyAlertmanagers{} },
		func() config.Config { return conf },
		map[string]string{},
		v1.GlobalURLOptions{},
		func(f http.HandlerFunc) http.HandlerFunc { return f }, // Readiness is the server's /ready.
		emptyTSDB{},
		"",    // dbDir
		false, // enableAdmin
		false, // enableSearch
		0,     // maxSearchLimit
		logger.With("component", "api"),
		func(context.Context) v1.RulesRetriever { return emptyRules{} },
		remoteReadSampleLimit,
		remoteReadConcurrencyLimit,
		remoteReadMaxBytesInFrame,
		false,                          // isAgent
		regexp.MustCompile("^(?:.*)$"), // CORS: any origin, Prometheus' default.
		func() (v1.RuntimeInfo, error) { return runtimeInfo(started, cwd) },
		&v1.PrometheusVersion{
			Version:   build.Version,
			Revision:  build.Revision,
			Branch:    build.Branch,
			BuildUser: build.BuildUser,
			BuildDate: build.BuildDate,
			GoVersion: build.GoVersion,
		},
		func() []notifications.Notification { return []notifications.Notification{} },
		func() (<-chan notifications.Notification, func(), bool) { return nil, nil, false },
		gatherer,
		reg,
		nil,                 // statsRenderer: Prometheus' default
		false,               // remote write receiver
		nil,                 // its accepted message types
		false, false, false, // OTLP receiver and its delta conversions
		cfg.LookbackDelta,
		false, // enableTypeAndUnitLabels
		false, // appendMetadata
		nil,   // overrideErrorCode
		featureRegistry,
		v1.OpenAPIOptions{Version: build.Version},
		nil,   // promqlParser: Prometheus' default
		false, // enableQueryCost
		cfg.Timeout,
	)

	router := route.New()
	api.Register(router.WithPrefix(APIPrefix))
	return postLabelValues(router), nil
}

// postLabelValues lets /api/v1/label/<name>/values take a POST form, as
// every other read endpoint does: Prometheus registers it for GET only, and
// clients that put long match[] selectors in a form body need it.
func postLabelValues(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, APIPrefix+"/label/") && strings.HasSuffix(r.URL.Path, "/values") {
			// ParseForm reads the body into r.Form, which the GET handler
			// then finds already parsed.
			if err := r.ParseForm(); err != nil {
				http.Error(w, fmt.Sprintf("parse form: %v", err), http.StatusBadRequest)
				return
			}
			r = r.Clone(r.Context())
			r.Method = http.MethodGet
		}
		next.ServeHTTP(w, r)
	})
}

func runtimeInfo(started time.Time, cwd string) (v1.RuntimeInfo, error) {
	status := v1.RuntimeInfo{
		StartTime:      started,
		CWD:            cwd,
		ServerTime:     time.Now().UTC(),
		GoroutineCount: runtime.NumGoroutine(),
		GOMAXPROCS:     runtime.GOMAXPROCS(0),
		GOMEMLIMIT:     debug.SetMemoryLimit(-1),
		GOGC:           os.Getenv("GOGC"),
		GODEBUG:        os.Getenv("GODEBUG"),
		// Census reloads no configuration: the one it has is in effect.
		ReloadConfigSuccess: true,
		LastConfigTime:      started,
	}
	hostname, err := os.Hostname()
	if err != nil {
		return status, fmt.Errorf("get hostname: %w", err)
	}
	status.Hostname = hostname
	return status, nil
}

// errNotStored answers the endpoints of data Census does not keep.
var errNotStored = errors.New("not supported by Census")

// emptyTargets answers the target endpoints: the querier scrapes nothing.
type emptyTargets struct{}

func (emptyTargets) ScrapePools() []string                      { return []string{} }
func (emptyTargets) TargetsActive() map[string][]*scrape.Target { return map[string][]*scrape.Target{} }
func (emptyTargets) TargetsDropped() map[string][]*scrape.Target {
	return map[string][]*scrape.Target{}
}
func (emptyTargets) TargetsDroppedCounts() map[string]int { return map[string]int{} }
func (emptyTargets) ScrapePoolConfig(string) (*config.ScrapeConfig, error) {
	return nil, errors.New("scrape pool not found")
}

// emptyAlertmanagers answers /api/v1/alertmanagers: Census sends no alerts.
type emptyAlertmanagers struct{}

func (emptyAlertmanagers) Alertmanagers() []*url.URL        { return []*url.URL{} }
func (emptyAlertmanagers) DroppedAlertmanagers() []*url.URL { return []*url.URL{} }

// emptyRules answers /api/v1/rules and /api/v1/alerts: Census evaluates no
// rules.
type emptyRules struct{}

func (emptyRules) RuleGroups() []*rules.Group           { return []*rules.Group{} }
func (emptyRules) AlertingRules() []*rules.AlertingRule { return []*rules.AlertingRule{} }

// emptyExemplars answers /api/v1/query_exemplars: Census stores no
// exemplars yet.
type emptyExemplars struct{}

func (emptyExemplars) ExemplarQuerier(context.Context) (storage.ExemplarQuerier, error) {
	return emptyExemplars{}, nil
}

func (emptyExemplars) Select(int64, int64, ...[]*labels.Matcher) ([]exemplar.QueryResult, error) {
	return []exemplar.QueryResult{}, nil
}

// emptyTSDB answers the TSDB status endpoints for a querier, which has no
// TSDB of its own: the ingesters have. The admin endpoints never reach it,
// since they are disabled.
type emptyTSDB struct{}

func (emptyTSDB) CleanTombstones() error                                         { return errNotStored }
func (emptyTSDB) Delete(context.Context, int64, int64, ...*labels.Matcher) error { return errNotStored }
func (emptyTSDB) Snapshot(string, bool) error                                    { return errNotStored }
func (emptyTSDB) WALReplayStatus() (tsdb.WALReplayStatus, error)                 { return tsdb.WALReplayStatus{}, nil }
func (emptyTSDB) BlockMetas() ([]tsdb.BlockMeta, error)                          { return []tsdb.BlockMeta{}, nil }

func (emptyTSDB) Stats(string, int) (*tsdb.Stats, error) {
	// An empty head's time range, as an empty Prometheus reports it.
	return &tsdb.Stats{MinTime: math.MaxInt64, MaxTime: math.MinInt64, IndexPostingStats: &index.PostingsStats{}}, nil
}
