package sftptarget

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a session leaves goroutines behind
// (keepalive, transport watcher, SSH/SFTP readers).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
