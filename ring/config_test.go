package ring_test

import (
	"flag"
	"testing"
	"time"

	"github.com/census-metrics/census/ring"
	"github.com/stretchr/testify/require"
)

func TestConfig_RegisterFlags(t *testing.T) {
	var cfg ring.Config
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	require.NoError(t, fs.Parse(nil))
	require.Equal(t, ring.Config{
		BindAddress:       ":7946",
		ReplicationFactor: 3,
		Tokens:            128,
		HeartbeatPeriod:   15 * time.Second,
		HeartbeatTimeout:  time.Minute,
		AutoForgetAfter:   10 * time.Minute,
		TombstoneTimeout:  5 * time.Minute,
	}, cfg)
	require.NoError(t, cfg.Validate())

	var set ring.Config
	fs = flag.NewFlagSet("test", flag.ContinueOnError)
	set.RegisterFlags(fs)
	require.NoError(t, fs.Parse([]string{
		"--memberlist.bind-address=127.0.0.1:0",
		"--memberlist.join=census-ingesters.census.svc:7946",
		"--memberlist.join=10.0.0.1:7946",
		"--instance.id=ingester-0",
		"--ring.replication-factor=1",
		"--ring.tokens=64",
		"--ring.zone=z1",
		"--ring.heartbeat-period=5s",
		"--ring.heartbeat-timeout=30s",
		"--ring.auto-forget-after=2m",
		"--ring.tombstone-timeout=1m",
		"--memberlist.secret-key-file=/etc/census/gossip-key",
	}))
	require.Equal(t, ring.Config{
		BindAddress:       "127.0.0.1:0",
		Join:              []string{"census-ingesters.census.svc:7946", "10.0.0.1:7946"},
		InstanceID:        "ingester-0",
		ReplicationFactor: 1,
		Tokens:            64,
		Zone:              "z1",
		HeartbeatPeriod:   5 * time.Second,
		HeartbeatTimeout:  30 * time.Second,
		AutoForgetAfter:   2 * time.Minute,
		TombstoneTimeout:  time.Minute,
		SecretKeyFile:     "/etc/census/gossip-key",
	}, set)
	require.Nil(t, fs.Lookup("ring.tokens-file"), "the tokens file follows --storage.path; it has no flag")
	require.Equal(t, "census-ingesters.census.svc:7946,10.0.0.1:7946", fs.Lookup("memberlist.join").Value.String())
}

func TestConfig_Validate(t *testing.T) {
	valid := func() ring.Config {
		var cfg ring.Config
		cfg.RegisterFlags(flag.NewFlagSet("test", flag.ContinueOnError))
		return cfg
	}
	tests := []struct {
		name    string
		modify  func(*ring.Config)
		wantErr string
	}{
		{name: "defaults", modify: func(*ring.Config) {}},
		{name: "ipv6 bind", modify: func(c *ring.Config) { c.BindAddress = "[::1]:0" }},
		{name: "bind without port", modify: func(c *ring.Config) { c.BindAddress = "127.0.0.1" }, wantErr: "invalid --memberlist.bind-address"},
		{name: "bind port out of range", modify: func(c *ring.Config) { c.BindAddress = ":70000" }, wantErr: "invalid port"},
		{name: "bind hostname", modify: func(c *ring.Config) { c.BindAddress = "localhost:7946" }, wantErr: "must have an IP address"},
		{name: "empty join", modify: func(c *ring.Config) { c.Join = []string{" "} }, wantErr: "empty --memberlist.join"},
		{name: "zero replication factor", modify: func(c *ring.Config) { c.ReplicationFactor = 0 }, wantErr: "--ring.replication-factor must be at least 1, got 0"},
		{name: "zero tokens", modify: func(c *ring.Config) { c.Tokens = 0 }, wantErr: "--ring.tokens must be between 1 and 4096, got 0"},
		{name: "too many tokens", modify: func(c *ring.Config) { c.Tokens = 5000 }, wantErr: "got 5000"},
		{name: "zero heartbeat period", modify: func(c *ring.Config) { c.HeartbeatPeriod = 0 }, wantErr: "--ring.heartbeat-period must be positive"},
		{name: "timeout not above period", modify: func(c *ring.Config) { c.HeartbeatTimeout = c.HeartbeatPeriod }, wantErr: "must be longer than --ring.heartbeat-period"},
		{name: "auto-forget disabled", modify: func(c *ring.Config) { c.AutoForgetAfter = 0 }},
		{name: "auto-forget before unhealthy", modify: func(c *ring.Config) { c.AutoForgetAfter = c.HeartbeatTimeout }, wantErr: "--ring.auto-forget-after (1m0s) must be 0 or longer than --ring.heartbeat-timeout (1m0s)"},
		{name: "tombstones kept for good", modify: func(c *ring.Config) { c.TombstoneTimeout = 0 }},
		{name: "tombstone timeout too short", modify: func(c *ring.Config) { c.TombstoneTimeout = time.Second }, wantErr: "--ring.tombstone-timeout (1s) must be 0 or longer than --ring.heartbeat-period (15s)"},
		{name: "negative tombstone timeout", modify: func(c *ring.Config) { c.TombstoneTimeout = -time.Second }, wantErr: "--ring.tombstone-timeout (-1s)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid()
			tc.modify(&cfg)
			err := cfg.Validate()
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}
