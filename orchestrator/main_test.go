package orchestrator

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when any goroutine outlives the tests: every
// goroutine must stop with its owner.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
