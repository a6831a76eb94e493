package ring

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Config configures a ring member.
type Config struct {
	// BindAddress is the host:port memberlist binds for gossip (UDP and
	// TCP). Port 0 picks a free port; see Ring.GossipAddr.
	BindAddress string
	// Join lists the peers to join: host:port, or a DNS name that may
	// resolve to many addresses. Empty means this member starts a cluster.
	Join []string
	// InstanceID names this member in the ring. Empty means the hostname,
	// resolved by New.
	InstanceID string
	// ReplicationFactor is how many instances Get returns per token.
	ReplicationFactor int
	// Tokens is how many tokens an ingester owns.
	Tokens int
	// Zone is the availability zone of this ingester.
	Zone string
	// HeartbeatPeriod is how often an ingester refreshes its entry. Gossip
	// intervals are derived from it so that heartbeats spread well within
	// HeartbeatTimeout.
	HeartbeatPeriod time.Duration
	// HeartbeatTimeout is how old a heartbeat may be before writers and
	// readers skip the instance.
	HeartbeatTimeout time.Duration
}

// RegisterFlags registers the ring's flags on fs and sets their defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.BindAddress, "memberlist.bind-address", ":7946", "Gossip bind address (host:port; port 0 picks a free port).")
	fs.Var((*joinFlag)(&c.Join), "memberlist.join", "Peer to join, host:port or a DNS name that resolves to many; repeatable.")
	fs.StringVar(&c.InstanceID, "instance.id", "", "Name of this instance in the ring (default: the hostname).")
	fs.IntVar(&c.ReplicationFactor, "ring.replication-factor", 3, "Number of ingesters that hold a copy of each series.")
	fs.IntVar(&c.Tokens, "ring.tokens", 128, "Number of tokens each ingester owns in the ring.")
	fs.StringVar(&c.Zone, "ring.zone", "", "Availability zone of this ingester.")
	fs.DurationVar(&c.HeartbeatPeriod, "ring.heartbeat-period", 15*time.Second, "How often an ingester heartbeats into the ring.")
	fs.DurationVar(&c.HeartbeatTimeout, "ring.heartbeat-timeout", time.Minute, "After this long without a heartbeat an instance is unhealthy.")
}

// maxTokens bounds --ring.tokens: more tokens balance load better but make
// every heartbeat bigger and every ring rebuild slower.
const maxTokens = 4096

// Validate reports the first invalid setting.
func (c *Config) Validate() error {
	if _, _, err := splitBindAddress(c.BindAddress); err != nil {
		return err
	}
	for _, j := range c.Join {
		if strings.TrimSpace(j) == "" {
			return errors.New("empty --memberlist.join address")
		}
	}
	if c.ReplicationFactor < 1 {
		return fmt.Errorf("--ring.replication-factor must be at least 1, got %d", c.ReplicationFactor)
	}
	if c.Tokens < 1 || c.Tokens > maxTokens {
		return fmt.Errorf("--ring.tokens must be between 1 and %d, got %d", maxTokens, c.Tokens)
	}
	if c.HeartbeatPeriod <= 0 {
		return fmt.Errorf("--ring.heartbeat-period must be positive, got %s", c.HeartbeatPeriod)
	}
	if c.HeartbeatTimeout <= c.HeartbeatPeriod {
		return fmt.Errorf("--ring.heartbeat-timeout (%s) must be longer than --ring.heartbeat-period (%s)", c.HeartbeatTimeout, c.HeartbeatPeriod)
	}
	return nil
}

// splitBindAddress parses BindAddress into the IP and port memberlist takes;
// an empty host means every interface.
func splitBindAddress(addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("invalid --memberlist.bind-address %q: %w", addr, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("invalid port in --memberlist.bind-address %q: %w", addr, err)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	// memberlist binds IP addresses only; a hostname would silently bind
	// every interface.
	if net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("--memberlist.bind-address %q must have an IP address, not a hostname", addr)
	}
	return host, int(port), nil
}

// joinFlag is the repeatable --memberlist.join flag.
type joinFlag []string

func (f *joinFlag) String() string {
	if f == nil {
		return ""
	}
	return strings.Join(*f, ",")
}

func (f *joinFlag) Set(v string) error {
	*f = append(*f, v)
	return nil
}
