package querier

import (
	"github.com/prometheus/prometheus/config"

	"errors"
	"flag"
	"time"
)

// Config is the querier's configuration: the limits of one query and of
// the PromQL engine behind the HTTP API.
type Config struct {
	// Timeout bounds one query's evaluation, fan-out to the ingesters
	// included.
	Timeout time.Duration
	// MaxSamples is the most samples one query may hold in memory at once
	// (the engine's MaxSamples).
	MaxSamples int
	// MaxSeries is the most series one query may fetch from the ingesters,
	// counted once however many replicas sent them and summed over the
	// query's selectors. 0 means no limit.
	MaxSeries int
	// MaxChunks is the most chunks one query may fetch from the ingesters,
	// counting every replica's copy: what crosses the wire. 0 means no
	// limit.
	MaxChunks int
	// LookbackDelta is how far back an instant selector looks for a sample.
	LookbackDelta time.Duration
	// HedgeDelay is the Queryable's HedgeDelay.
	HedgeDelay time.Duration
	// MaxConcurrency is the most queries evaluated at once; more wait, up
	// to Timeout. 0 means no limit.
	MaxConcurrency int
	// MaxLength is the longest query text, in bytes, the API parses. 0
	// means no limit.
	MaxLength int
	// MaxDepth is the deepest a query's expression may nest, counted from
	// its text (see QueryShapeError). 0 means no limit.
	MaxDepth int
	// MaxPoints is the most points one query's evaluation may create: its
	// steps, and for each subquery its range/step at every step of its
	// parent. 0 means no limit.
	MaxPoints int

	// Flags are the process's flags and their values, as
	// /api/v1/status/flags shows them. It is not a flag itself: cmd/census
	// fills it once the flags are parsed. Nil shows none.
	Flags map[string]string
	// ScrapeConfig returns the configuration /api/v1/status/config shows:
	// the agent's, in a process that runs one. Nil shows Prometheus'
	// default. Like Flags, cmd/census sets it.
	ScrapeConfig func() config.Config
}

// RegisterFlags registers the querier's flags, with their defaults, in fs.
// The names and defaults of the engine's are Prometheus' own, so its users
// find them where they expect.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.Timeout, "query.timeout", 2*time.Minute, "Maximum time a query may take before it is aborted.")
	fs.IntVar(&c.MaxSamples, "query.max-samples", 50000000, "Maximum number of samples a single query can load into memory. A query over the limit fails.")
	// One million series is ten times what a busy dashboard panel selects,
	// and what a querier holds comfortably: the chunks of a series over a
	// day are a few kilobytes.
	fs.IntVar(&c.MaxSeries, "query.max-series", 1000000, "Maximum number of series a single query may fetch from the ingesters, each counted once however many replicas hold it. A query over the limit fails. 0 means no limit.")
	// Three replicas of each of the million series above, each with a few
	// chunks: about 1 GB of chunks at most.
	fs.IntVar(&c.MaxChunks, "query.max-chunks", 10000000, "Maximum number of chunks a single query may fetch from the ingesters, counting every replica's copy. A query over the limit fails. 0 means no limit.")
	fs.DurationVar(&c.LookbackDelta, "query.lookback-delta", 5*time.Minute, "How far back an instant vector selector looks for the latest sample of a series.")
	fs.IntVar(&c.MaxConcurrency, "query.max-concurrency", 20, "Maximum number of queries evaluated at once, as Prometheus' flag of that name; more wait for a slot, up to --query.timeout. 0 means no limit.")
	fs.DurationVar(&c.HedgeDelay, "query.hedge-delay", DefaultHedgeDelay, "How long a read waits for the last ingesters once the others answered with a read quorum (RF-RF/2 replicas) of every series; the answer is complete without them, and names them in a warning. 0 waits for every ingester.")
	// Dashboards' queries are a few kilobytes; a Grafana variable set to
	// "All" over a thousand instances makes a regular expression of some
	// 20 KiB. Within --query.max-depth, Prometheus' parser reads 256 KiB of
	// any shape measured in under 200ms (a regular expression in 40-90ms,
	// chains of 170 operators joined into one query in 175ms); its time
	// grows with the square of the nesting, which --query.max-depth bounds.
	fs.IntVar(&c.MaxLength, "query.max-length", 256<<10, "Maximum length in bytes of a query's text (query, match[]). A longer query is refused with 400 before it is parsed. 0 means no limit.")
	// Hand-written and generated queries nest a few tens of levels; the
	// parser's time grows with the square of the depth (256 KiB of nested
	// parentheses, 131,072 levels, take 34s to parse; 200,000 selectors
	// joined by or overflow the evaluator's stack), so the depth is read
	// off the text before parsing, in 2-25ms for 256 KiB.
	fs.IntVar(&c.MaxDepth, "query.max-depth", 200, "Maximum nesting depth of a query's expression, counted from its text before it is parsed: each bracket is a level, and so is each operator chained within one (a or b or c is 3 levels deep). A deeper query is refused with 400. 0 means no limit.")
	// Prometheus answers at most 11,000 steps of a range query, and nothing
	// bounds its subqueries. 10 million points let a range query over
	// Grafana's usual 1,500 points read max_over_time(x[1d:1m]) (2.2
	// million), an instant query read a year at 1m (525,600), and cost the
	// engine's step statistics at most 160 MB.
	fs.IntVar(&c.MaxPoints, "query.max-points", 10000000, "Maximum number of points a single query's evaluation may create: its steps (1 for an instant query, (end-start)/step+1 for a range query), and for each subquery range/step points at every step of its parent, so nested subqueries multiply (or, if more, the subquery's steps across its parent's whole span). A query over the limit is refused with 422 before it is evaluated. 0 means no limit.")
}

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	switch {
	case c.Timeout <= 0:
		return errors.New("--query.timeout must be positive")
	case c.MaxSamples <= 0:
		return errors.New("--query.max-samples must be positive")
	case c.MaxSeries < 0:
		return errors.New("--query.max-series must not be negative")
	case c.MaxChunks < 0:
		return errors.New("--query.max-chunks must not be negative")
	case c.LookbackDelta <= 0:
		return errors.New("--query.lookback-delta must be positive")
	case c.MaxConcurrency < 0:
		return errors.New("--query.max-concurrency must not be negative")
	case c.HedgeDelay < 0:
		return errors.New("--query.hedge-delay must not be negative")
	case c.MaxLength < 0:
		return errors.New("--query.max-length must not be negative")
	case c.MaxDepth < 0:
		return errors.New("--query.max-depth must not be negative")
	case c.MaxPoints < 0:
		return errors.New("--query.max-points must not be negative")
	}
	return nil
}
