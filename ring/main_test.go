package ring_test

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// Run shuts memberlist down completely, so no goroutine may outlive the
	// tests; goleak retries for a while, which covers memberlist's loops
	// noticing the shutdown. The exception is a probe in flight:
	// memberlist's Shutdown does not wait for it, and it ends by itself
	// once its ack times out (ProbeInterval) and its TCP fallback gives up.
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"),
	)
}
