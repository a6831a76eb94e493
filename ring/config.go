package ring

import (
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
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
	// resolve to many addresses (a Kubernetes headless Service). Run retries
	// with backoff until one answers, and later rejoins addresses that are
	// not members, which heals a cluster split for longer than memberlist
	// gossips to members it believes dead. Empty means this member starts a
	// cluster.
	Join []string
	// SecretKeyFile, when set, names a file holding the key that encrypts
	// and authenticates all gossip (AES-GCM, through memberlist's keyring):
	// a file of exactly 16, 24 or 32 bytes is the key itself; any other
	// is the standard base64 encoding of such a key, whitespace around it
	// ignored. Members without the same key cannot join.
	SecretKeyFile string
	// InstanceID names this member in the ring. Empty means the hostname,
	// resolved by New.
	InstanceID string
	// ReplicationFactor is how many instances Get returns per token.
	ReplicationFactor int
	// Tokens is how many tokens an ingester owns.
	Tokens int
	// TokensFile, when set, is where an ingester keeps its tokens, so that
	// a restart reuses them and moves no series. It has no flag: the
	// ingester's data directory decides it. Empty means no persistence.
	TokensFile string
	// Zone is the availability zone of this ingester. Once ingesters carry
	// at least ReplicationFactor distinct zones, Get places the replicas of
	// every token in distinct zones.
	Zone string
	// HeartbeatPeriod is how often an ingester refreshes its entry. Gossip
	// intervals are derived from it so that heartbeats spread well within
	// HeartbeatTimeout.
	HeartbeatPeriod time.Duration
	// HeartbeatTimeout is how old a heartbeat may be before writers and
	// readers skip the instance.
	HeartbeatTimeout time.Duration
	// AutoForgetAfter is how old a heartbeat may be before the first member
	// to notice removes the instance from the ring (a tombstone), so that
	// an ingester that crashed for good needs nobody to forget it by hand.
	// Zero disables it.
	AutoForgetAfter time.Duration
	// TombstoneTimeout is how long the entry of an instance that left or
	// was forgotten is kept, so that gossip does not bring back its older
	// states. It must outlast the time news takes to reach every member.
	// Zero keeps tombstones for good.
	TombstoneTimeout time.Duration
}

// RegisterFlags registers the ring's flags on fs and sets their defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.BindAddress, "memberlist.bind-address", ":7946", "Gossip bind address (host:port; port 0 picks a free port).")
	fs.Var((*joinFlag)(&c.Join), "memberlist.join", "Peer to join, host:port or a DNS name that resolves to many; repeatable. Retried until one answers.")
	fs.StringVar(&c.SecretKeyFile, "memberlist.secret-key-file", "", "File with the key that encrypts gossip: exactly 16, 24 or 32 raw bytes, or else base64 of such a key. Members without it cannot join.")
	fs.StringVar(&c.InstanceID, "instance.id", "", "Name of this instance in the ring (default: the hostname).")
	fs.IntVar(&c.ReplicationFactor, "ring.replication-factor", 3, "Number of ingesters that hold a copy of each series.")
	fs.IntVar(&c.Tokens, "ring.tokens", 128, "Number of tokens each ingester owns in the ring.")
	fs.StringVar(&c.Zone, "ring.zone", "", "Availability zone of this ingester; with at least replication-factor zones, the copies of each series go to distinct zones.")
	fs.DurationVar(&c.HeartbeatPeriod, "ring.heartbeat-period", 15*time.Second, "How often an ingester heartbeats into the ring.")
	fs.DurationVar(&c.HeartbeatTimeout, "ring.heartbeat-timeout", time.Minute, "After this long without a heartbeat an instance is unhealthy: writers and readers skip it.")
	fs.DurationVar(&c.AutoForgetAfter, "ring.auto-forget-after", 10*time.Minute, "After this long without a heartbeat an instance is removed from the ring (0 disables).")
	fs.DurationVar(&c.TombstoneTimeout, "ring.tombstone-timeout", 5*time.Minute, "How long the ring remembers an instance that left or was forgotten (0: for good).")
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
	if c.AutoForgetAfter != 0 && c.AutoForgetAfter <= c.HeartbeatTimeout {
		return fmt.Errorf("--ring.auto-forget-after (%s) must be 0 or longer than --ring.heartbeat-timeout (%s)", c.AutoForgetAfter, c.HeartbeatTimeout)
	}
	if c.TombstoneTimeout < 0 || (c.TombstoneTimeout > 0 && c.TombstoneTimeout <= c.HeartbeatPeriod) {
		return fmt.Errorf("--ring.tombstone-timeout (%s) must be 0 or longer than --ring.heartbeat-period (%s)", c.TombstoneTimeout, c.HeartbeatPeriod)
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

// secretKeySizes are the AES key sizes memberlist accepts.
var secretKeySizes = []int{16, 24, 32}

// readSecretKey reads the gossip key from path. A file of exactly 16, 24 or
// 32 bytes is the key itself (random bytes, as a Kubernetes Secret mounts
// them); anything else must be the standard base64 encoding of such a key,
// whitespace around it ignored (as "openssl rand -base64 32" writes it).
// The length decides, not the content, so that a raw key that happens to
// look like base64 is still read as itself.
func readSecretKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read --memberlist.secret-key-file: %w", err)
	}
	if slices.Contains(secretKeySizes, len(b)) {
		return b, nil
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("--memberlist.secret-key-file %s holds %d bytes, so it must be base64 of a 16, 24 or 32-byte key: %w", path, len(b), err)
	}
	if !slices.Contains(secretKeySizes, len(key)) {
		return nil, fmt.Errorf("--memberlist.secret-key-file %s must hold a 16, 24 or 32-byte key, raw or base64, not %d bytes", path, len(key))
	}
	return key, nil
}
