// Package sshdtest is the testing face of internal/testbed/sshd: Start
// runs a real OpenSSH sshd for the duration of a test, skipping the test
// where sshd is not installed. Everything else is the testbed's.
package sshdtest

import (
	"os"
	"testing"

	"github.com/lockstep-ha/lockstep/internal/testbed/sshd"
)

// SSHDPath is the OpenSSH server binary the harness runs.
const SSHDPath = sshd.Path

// Server is one sshd child process and the files it was generated with.
type Server = sshd.Server

// WriteKnownHosts writes a known_hosts file recording key for addr, to
// simulate an unknown or changed host key.
var WriteKnownHosts = sshd.WriteKnownHosts

// NewHostKey returns a fresh public key, for a known_hosts entry that does
// not match the server.
var NewHostKey = sshd.NewHostKey

// Start runs an sshd for the duration of the test. It skips the test when
// sshd is not installed.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := os.Stat(SSHDPath); err != nil {
		t.Skipf("OpenSSH server not available (%v); install openssh-server", err)
	}
	s, err := sshd.New(t.TempDir())
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if logs := s.Logs(); logs != "" {
				t.Logf("sshd output:\n%s", logs)
			}
		}
		if err := s.Close(); err != nil {
			t.Errorf("sshdtest: close: %v", err)
		}
	})
	return s
}
