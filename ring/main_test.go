package ring_test

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// Run shuts memberlist down completely, so no goroutine may outlive the
	// tests; goleak retries for a while, which covers memberlist's loops
	// noticing the shutdown.
	goleak.VerifyTestMain(m)
}
