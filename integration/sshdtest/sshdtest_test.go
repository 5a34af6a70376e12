package sshdtest

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/lockstep-ha/lockstep/integration/poll"
)

func dial(t *testing.T, s *Server) (*ssh.Client, error) {
	t.Helper()
	pem, err := os.ReadFile(s.IdentityFile)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := knownhosts.New(s.KnownHostsFile)
	if err != nil {
		t.Fatal(err)
	}
	return ssh.Dial("tcp", s.Addr(), &ssh.ClientConfig{
		User: s.User, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: cb, Timeout: 10 * time.Second,
	})
}

func pidAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// A zombie is dead for our purposes.
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == ')' {
			return i+2 < len(b) && b[i+2] != 'Z'
		}
	}
	return true
}

func TestServerLifecycle(t *testing.T) {
	s := Start(t)
	if fi, err := os.Stat(s.IdentityFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity: %v %v", fi, err)
	}
	c, err := dial(t, s)
	if err != nil {
		t.Fatalf("dial with the generated key and known_hosts: %v", err)
	}
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.RequestSubsystem("sftp"); err != nil {
		t.Fatalf("sftp subsystem: %v", err)
	}
	children := s.Sessions()
	if len(children) == 0 {
		t.Fatal("no session process found under sshd")
	}

	// Stop cuts the established session and frees the port.
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("established session survived Stop")
	}
	// The session processes exit as the connection goes, not necessarily
	// before the client sees it close.
	for _, p := range children {
		poll.Until(t, 5*time.Second, fmt.Sprintf("session process %d to exit after Stop", p), func() bool { return !pidAlive(p) })
	}
	if conn, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		conn.Close()
		t.Fatal("port still accepting after Stop")
	}

	// Start brings it back on the same port, with the same host key.
	port := s.Port
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if s.Port != port {
		t.Fatalf("port changed across restart: %d -> %d", port, s.Port)
	}
	c2, err := dial(t, s)
	if err != nil {
		t.Fatalf("dial after restart: %v", err)
	}
	c2.Close()
	if logs := s.Logs(); logs != "" {
		t.Errorf("sshd logged errors: %s", logs)
	}

	pid := s.PID()
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if pidAlive(pid) {
		t.Error("sshd survived Kill")
	}
	if s.Running() {
		t.Error("Running after Kill")
	}
}
