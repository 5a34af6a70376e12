package sftptarget

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// TestMain fails the package when a session leaves goroutines behind
// (keepalive, transport watcher, SSH/SFTP readers, receiver readers).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if binDir != "" {
			_ = os.RemoveAll(binDir)
		}
		os.Exit(code)
	}))
}

// lockstepBinary builds cmd/lockstep once (for `lockstep receive` on the
// test sshd's side).
func lockstepBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "lockstep-bin-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "lockstep")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/lockstep-ha/lockstep/cmd/lockstep").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build ./cmd/lockstep: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}
