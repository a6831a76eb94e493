package querier_test

import (
	"flag"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/querier"
)

func TestConfig_RegisterFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want querier.Config
	}{
		{
			name: "defaults",
			want: querier.Config{Timeout: 2 * time.Minute, MaxSamples: 50000000, MaxSeries: 1000000, MaxChunks: 10000000, LookbackDelta: 5 * time.Minute, HedgeDelay: 2 * time.Second, MaxConcurrency: 20, MaxLength: 256 << 10, MaxDepth: 200, MaxPoints: 10000000},
		},
		{
			name: "set",
			args: []string{"--query.timeout=30s", "--query.max-samples=1000", "--query.max-series=10", "--query.max-chunks=0", "--query.lookback-delta=1m", "--query.hedge-delay=100ms", "--query.max-concurrency=4", "--query.max-length=1024", "--query.max-depth=0", "--query.max-points=11000"},
			want: querier.Config{Timeout: 30 * time.Second, MaxSamples: 1000, MaxSeries: 10, LookbackDelta: time.Minute, HedgeDelay: 100 * time.Millisecond, MaxConcurrency: 4, MaxLength: 1024, MaxPoints: 11000},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cfg querier.Config
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			cfg.RegisterFlags(fs)
			require.NoError(t, fs.Parse(tc.args))
			require.Equal(t, tc.want, cfg)
			require.NoError(t, cfg.Validate())
		})
	}
}

func TestConfig_Validate(t *testing.T) {
	valid := querier.Config{Timeout: time.Minute, MaxSamples: 1, LookbackDelta: time.Minute}
	for _, tc := range []struct {
		name    string
		modify  func(*querier.Config)
		wantErr string
	}{
		{name: "zero timeout", modify: func(c *querier.Config) { c.Timeout = 0 }, wantErr: "--query.timeout"},
		{name: "negative max samples", modify: func(c *querier.Config) { c.MaxSamples = -1 }, wantErr: "--query.max-samples"},
		{name: "negative max series", modify: func(c *querier.Config) { c.MaxSeries = -1 }, wantErr: "--query.max-series"},
		{name: "negative max chunks", modify: func(c *querier.Config) { c.MaxChunks = -1 }, wantErr: "--query.max-chunks"},
		{name: "zero lookback delta", modify: func(c *querier.Config) { c.LookbackDelta = 0 }, wantErr: "--query.lookback-delta"},
		{name: "negative concurrency", modify: func(c *querier.Config) { c.MaxConcurrency = -1 }, wantErr: "--query.max-concurrency must not be negative"},
		{name: "negative hedge delay", modify: func(c *querier.Config) { c.HedgeDelay = -time.Second }, wantErr: "--query.hedge-delay must not be negative"},
		{name: "negative max length", modify: func(c *querier.Config) { c.MaxLength = -1 }, wantErr: "--query.max-length"},
		{name: "negative max depth", modify: func(c *querier.Config) { c.MaxDepth = -1 }, wantErr: "--query.max-depth"},
		{name: "negative max points", modify: func(c *querier.Config) { c.MaxPoints = -1 }, wantErr: "--query.max-points"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid
			tc.modify(&cfg)
			require.ErrorContains(t, cfg.Validate(), tc.wantErr)
		})
	}
}
