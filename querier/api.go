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
	"strconv"
	"strings"
	"time"

	"github.com/grafana/regexp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/route"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
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

// noStepSubqueryInterval is the step, in milliseconds, of a subquery
// written without one: the evaluation interval, which Census, having no
// rules, fixes at Prometheus' default.
var noStepSubqueryInterval = time.Duration(config.DefaultGlobalConfig.EvaluationInterval).Milliseconds()

// NewAPI returns the handler of the Prometheus HTTP API over q, evaluated by
// Prometheus' PromQL engine with cfg's limits. It serves the full paths
// under APIPrefix (/api/v1/query, /api/v1/series, ...), unstripped.
//
// Every endpoint that parses PromQL refuses, before parsing, a query longer
// than cfg.MaxLength or nesting deeper than cfg.MaxDepth (400), and the
// query endpoints refuse, before evaluating, one whose steps and
// subqueries' steps exceed cfg.MaxPoints (422); see QueryShapeError.
//
// When q is a *Queryable, every read of a request shares the request's
// limits (cfg.MaxSeries, cfg.MaxChunks), a request with
// partial_response=true tolerates any failed ingesters, and the exemplar,
// metadata and /status/tsdb endpoints answer from the ingesters. Census
// evaluates no rules, sends no alerts and scrapes nothing here, so those
// endpoints answer as a Prometheus without any would, and the TSDB admin
// endpoints are disabled. Each call registers the engine's and the API's
// metrics on reg (nil registers nothing); when reg is also a
// prometheus.Gatherer, /api/v1/status/self_metrics reads from it.
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
	flags := cfg.Flags
	if flags == nil {
		flags = map[string]string{}
	}

	var (
		exemplars storage.ExemplarQueryable = emptyExemplars{}
		stats     v1.TSDBAdminStats         = emptyTSDB{}
		cluster   *Queryable
	)
	if eq, ok := q.(storage.ExemplarQueryable); ok {
		exemplars = eq
	}
	if cq, ok := q.(*Queryable); ok {
		cluster = cq
		cs := &clusterStats{q: cq, timeout: cfg.Timeout}
		stats = cs
		gatherer = statsGatherer{Gatherer: gatherer, stats: cs}
	}

	featureRegistry := features.NewRegistry()
	// The API and its engine parse with the same parser, so every endpoint
	// that reads PromQL (query, query_range, format_query, parse_query,
	// query_exemplars, match[]) refuses text over --query.max-length and
	// --query.max-depth before parsing it.
	promqlParser := &shapeParser{Parser: parser.NewParser(parser.Options{}), maxLength: cfg.MaxLength, maxDepth: cfg.MaxDepth}
	engine := promql.NewEngine(promql.EngineOpts{
		Logger:        logger.With("component", "query engine"),
		Reg:           reg,
		MaxSamples:    cfg.MaxSamples,
		Timeout:       cfg.Timeout,
		LookbackDelta: cfg.LookbackDelta,
		// A subquery without a step uses the evaluation interval, which
		// Census, having no rules, fixes at Prometheus' default.
		NoStepSubqueryIntervalFn: func(int64) int64 { return noStepSubqueryInterval },
		// Always on in Prometheus since v2.33; queries rely on them.
		EnableAtModifier:     true,
		EnableNegativeOffset: true,
		FeatureRegistry:      featureRegistry,
		Parser:               promqlParser,
	})
	queryEngine := &shapeEngine{engine: engine, maxPoints: int64(cfg.MaxPoints), subqueryStep: noStepSubqueryInterval, waitFor: cfg.Timeout}
	if cfg.MaxConcurrency > 0 {
		queryEngine.slots = make(chan struct{}, cfg.MaxConcurrency)
	}

	started := time.Now()
	cwd, _ := os.Getwd() // Informational only, as in Prometheus.
	scrapeConfig := cfg.ScrapeConfig
	if scrapeConfig == nil {
		scrapeConfig = func() config.Config { return config.DefaultConfig }
	}
	cors := regexp.MustCompile("^(?:.*)$") // Any origin, Prometheus' default.
	api := v1.NewAPI(
		queryEngine,
		q,
		nil, // No appender: the remote write receiver is the distributor's.
		exemplars,
		func(context.Context) v1.ScrapePoolsRetriever { return emptyTargets{} },
		func(context.Context) v1.TargetRetriever { return emptyTargets{} },
		func(context.Context) v1.AlertmanagerRetriever { return emptyAlertmanagers{} },
		scrapeConfig,
		flags,
		v1.GlobalURLOptions{},
		func(f http.HandlerFunc) http.HandlerFunc { return f }, // Readiness is the server's /ready.
		stats,
		"",    // dbDir
		false, // enableAdmin
		false, // enableSearch
		0,     // maxSearchLimit
		logger.With("component", "api"),
		func(context.Context) v1.RulesRetriever { return emptyRules{} },
		remoteReadSampleLimit,
		remoteReadConcurrencyLimit,
		remoteReadMaxBytesInFrame,
		false, // isAgent
		cors,
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
		false,             // enableTypeAndUnitLabels
		false,             // appendMetadata
		overrideErrorCode, // 503 for ErrNoIngesters
		featureRegistry,
		v1.OpenAPIOptions{Version: build.Version},
		promqlParser,
		false, // enableQueryCost
		cfg.Timeout,
	)

	router := route.New()
	api.Register(router.WithPrefix(APIPrefix))
	h := &apiHandler{
		cfg:     cfg,
		router:  router,
		metrics: newAPIMetrics(reg),
		byRoute: map[string]http.Handler{},
	}
	if cluster != nil {
		h.metadata = metadataHandler(cluster, cors)
	}
	for _, ep := range apiEndpoints {
		h.byRoute[ep] = h.instrument(ep)
	}
	h.byRoute[otherEndpoint] = h.instrument(otherEndpoint)
	return h, nil
}

// apiEndpoints are the routes of the API, as the "endpoint" label of
// census_querier_request_duration_seconds names them; any other path is
// "other", so that the label's values stay few.
var apiEndpoints = []string{
	"/query", "/query_range", "/query_exemplars", "/format_query", "/parse_query",
	"/labels", "/label/:name/values", "/series", "/metadata", "/read",
	"/targets", "/targets/metadata", "/scrape_pools", "/alertmanagers", "/alerts", "/rules",
	"/status/config", "/status/runtimeinfo", "/status/buildinfo", "/status/flags",
	"/status/tsdb", "/status/tsdb/blocks", "/status/walreplay", "/status/self_metrics",
	"/features", "/notifications", "/notifications/live",
}

const otherEndpoint = "other"

// apiHandler serves every request of the API: it instruments it, gives its
// reads their shared request state, and routes it to Prometheus' handlers,
// except /metadata, which Census answers from the ingesters.
type apiHandler struct {
	cfg      Config
	router   http.Handler
	metadata http.Handler // Nil without a *Queryable: Prometheus' empty answer.
	metrics  *apiMetrics
	byRoute  map[string]http.Handler // The instrumented serve, by endpoint.
}

// ServeHTTP implements http.Handler.
func (h *apiHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ep := strings.TrimPrefix(r.URL.Path, APIPrefix)
	if strings.HasPrefix(ep, "/label/") && strings.HasSuffix(ep, "/values") {
		ep = "/label/:name/values"
	}
	next, ok := h.byRoute[ep]
	if !ok || !strings.HasPrefix(r.URL.Path, APIPrefix+"/") {
		next = h.byRoute[otherEndpoint]
	}
	next.ServeHTTP(w, r)
}

// instrument returns the serve of endpoint ep, observed in
// census_querier_request_duration_seconds.
func (h *apiHandler) instrument(ep string) http.Handler {
	obs := h.metrics.requestDuration.MustCurryWith(prometheus.Labels{"endpoint": APIPrefix + ep})
	if ep == otherEndpoint {
		obs = h.metrics.requestDuration.MustCurryWith(prometheus.Labels{"endpoint": ep})
	}
	return promhttp.InstrumentHandlerDuration(obs, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.serve(w, r, ep)
	}))
}

func (h *apiHandler) serve(w http.ResponseWriter, r *http.Request, ep string) {
	req := &request{maxSeries: int64(h.cfg.MaxSeries), maxChunks: int64(h.cfg.MaxChunks)}
	if r.Method == http.MethodGet || r.Method == http.MethodPost {
		// Parsing the form here reads a POST body once; Prometheus'
		// handlers then find r.Form filled.
		if err := r.ParseForm(); err != nil {
			respondError(w, errorBadData, fmt.Errorf("error parsing form values: %w", err))
			return
		}
		// Thanos' parameter: answer with what the reachable ingesters
		// have, with warnings, however many failed.
		req.partialResponse, _ = strconv.ParseBool(r.Form.Get("partial_response"))
	}
	r = r.WithContext(withRequest(r.Context(), req))

	switch {
	case ep == "/metadata" && r.Method == http.MethodGet && h.metadata != nil:
		h.metadata.ServeHTTP(w, r)
	case ep == "/read":
		h.router.ServeHTTP(&unavailableWriter{ResponseWriter: w, req: req}, r)
	case ep == "/label/:name/values" && r.Method == http.MethodPost:
		// Prometheus registers label values for GET only; clients that
		// put long match[] selectors in a form body need POST too. The
		// form is parsed already, so the GET handler finds it.
		r.Method = http.MethodGet
		h.router.ServeHTTP(w, r)
	default:
		h.router.ServeHTTP(w, r)
	}

	if req.selects.Load() > 0 {
		h.metrics.querySeries.Observe(float64(req.series.Load()))
		h.metrics.queryChunks.Observe(float64(req.chunks.Load()))
	}
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

// emptyExemplars answers /api/v1/query_exemplars over a queryable without
// exemplars.
type emptyExemplars struct{}

func (emptyExemplars) ExemplarQuerier(context.Context) (storage.ExemplarQuerier, error) {
	return emptyExemplars{}, nil
}

func (emptyExemplars) Select(int64, int64, ...[]*labels.Matcher) ([]exemplar.QueryResult, error) {
	return []exemplar.QueryResult{}, nil
}

// emptyTSDB answers the TSDB status endpoints for a querier, which has no
// TSDB of its own (clusterStats asks the ingesters). The admin endpoints
// never reach it, since they are disabled.
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
