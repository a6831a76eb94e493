package querier

import (
	"errors"
	"flag"
	"time"
)

// Config is the querier's configuration: the limits of the PromQL engine
// behind the HTTP API.
type Config struct {
	// Timeout bounds one query's evaluation, fan-out to the ingesters
	// included.
	Timeout time.Duration
	// MaxSamples is the most samples one query may hold in memory at once
	// (the engine's MaxSamples).
	MaxSamples int
	// LookbackDelta is how far back an instant selector looks for a sample.
	LookbackDelta time.Duration
}

// RegisterFlags registers the querier's flags, with their defaults, in fs.
// The names and defaults are Prometheus' own, so its users find them where
// they expect.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.Timeout, "query.timeout", 2*time.Minute, "Maximum time a query may take before it is aborted.")
	fs.IntVar(&c.MaxSamples, "query.max-samples", 50000000, "Maximum number of samples a single query can load into memory. A query over the limit fails.")
	fs.DurationVar(&c.LookbackDelta, "query.lookback-delta", 5*time.Minute, "How far back an instant vector selector looks for the latest sample of a series.")
}

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	switch {
	case c.Timeout <= 0:
		return errors.New("--query.timeout must be positive")
	case c.MaxSamples <= 0:
		return errors.New("--query.max-samples must be positive")
	case c.LookbackDelta <= 0:
		return errors.New("--query.lookback-delta must be positive")
	}
	return nil
}
