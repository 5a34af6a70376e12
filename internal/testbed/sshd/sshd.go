// Package sshd runs a real OpenSSH sshd on a free loopback port with
// freshly generated keys, for tests, benchmarks and the playground.
//
// Nothing here touches the system's sshd: the server runs as a child
// process with its own config, host key, authorized_keys and pid file in a
// private directory.
//
// The package does not import testing, so programs (the benchmark
// harness) can use it; integration/sshdtest wraps it for tests.
package sshd

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/lockstep-ha/lockstep/internal/testbed"
	"github.com/lockstep-ha/lockstep/lsync"
)

// Path is the OpenSSH server binary the harness runs.
const Path = "/usr/sbin/sshd"

// Server is one sshd child process and the files it was generated with.
type Server struct {
	Dir            string
	Port           int
	User           string
	IdentityFile   string // client private key, mode 0600
	KnownHostsFile string // contains the host key for 127.0.0.1:Port
	ConfigFile     string

	hostKey ssh.PublicKey

	mu   sync.Mutex
	proc *testbed.Proc // nil while stopped
	logs *testbed.Buffer
}

// New generates keys and config in dir (which must exist and be private to
// the caller) and starts sshd. Call Close when done.
func New(dir string) (*Server, error) {
	if _, err := os.Stat(Path); err != nil {
		return nil, fmt.Errorf("OpenSSH server not available: %w", err)
	}
	u, err := user.Current()
	if err != nil {
		return nil, fmt.Errorf("current user: %w", err)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	s := &Server{
		Dir:            dir,
		User:           u.Username,
		IdentityFile:   filepath.Join(dir, "id_ed25519"),
		KnownHostsFile: filepath.Join(dir, "known_hosts"),
		ConfigFile:     filepath.Join(dir, "sshd_config"),
		logs:           &testbed.Buffer{Limit: 1 << 20}, // a chatty sshd must not eat memory
	}
	hostPub, err := writeKey(filepath.Join(dir, "ssh_host_ed25519_key"))
	if err != nil {
		return nil, err
	}
	s.hostKey = hostPub
	clientPub, err := writeKey(s.IdentityFile)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), ssh.MarshalAuthorizedKey(clientPub), 0o600); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		// Privilege separation needs this empty directory; a fresh
		// container does not have it until the system sshd first ran.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return nil, fmt.Errorf("create /run/sshd: %w", err)
		}
	}

	// Another process may grab the port between our probe and sshd's bind;
	// try a few ports before giving up.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s.Port = port
		if err := s.writeFiles(); err != nil {
			return nil, err
		}
		if lastErr = s.Start(); lastErr == nil {
			return s, nil
		}
	}
	return nil, lastErr
}

// home is the HOME of the sessions sshd starts: an empty directory, so
// the login shell reads no rc files (see writeFiles).
func (s *Server) home() string { return filepath.Join(s.Dir, "home") }

func (s *Server) writeFiles() error {
	if err := os.MkdirAll(s.home(), 0o700); err != nil {
		return err
	}
	line := knownhosts.Line([]string{knownhosts.Normalize(s.Addr())}, s.hostKey)
	if err := os.WriteFile(s.KnownHostsFile, []byte(line+"\n"), 0o644); err != nil {
		return err
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "Port %d\n", s.Port)
	cfg.WriteString("ListenAddress 127.0.0.1\n")
	fmt.Fprintf(&cfg, "HostKey %s\n", filepath.Join(s.Dir, "ssh_host_ed25519_key"))
	fmt.Fprintf(&cfg, "PidFile %s\n", filepath.Join(s.Dir, "sshd.pid"))
	fmt.Fprintf(&cfg, "AuthorizedKeysFile %s\n", filepath.Join(s.Dir, "authorized_keys"))
	fmt.Fprintf(&cfg, "AllowUsers %s\n", s.User)
	if s.User == "root" {
		cfg.WriteString("PermitRootLogin prohibit-password\n")
	}
	// Every exec request (rsync's server, lsyncd's `ssh mv` and `xargs rm`,
	// `lockstep receive`) runs through the user's login shell, and bash
	// sources ~/.bashrc when sshd starts it. The harness runs as whoever
	// runs it, so that would be the developer's own dotfiles: on the shared
	// machine root's ~/.bashrc runs `pyenv init` (a `pyenv rehash` under a
	// lock it waits up to 60 s for), 2-3 s per remote command under load —
	// a cost per session, which taxes a tool that runs one command per
	// change (lsyncd) far more than one that keeps a session open. A
	// peer's shell start-up is not what a benchmark or a test measures:
	// sessions get an empty home of their own.
	fmt.Fprintf(&cfg, "SetEnv HOME=%q\n", s.home())
	cfg.WriteString(`UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 64:30:128
Subsystem sftp internal-sftp
LogLevel ERROR
`)
	return os.WriteFile(s.ConfigFile, []byte(cfg.String()), 0o600)
}

// Addr is the host:port to dial.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// HostKey is the server's public host key.
func (s *Server) HostKey() ssh.PublicKey { return s.hostKey }

// TargetConfig returns a complete SSH target for this server.
func (s *Server) TargetConfig(name, path string) lsync.TargetConfig {
	return lsync.TargetConfig{
		Name:           name,
		Host:           "127.0.0.1",
		Port:           s.Port,
		User:           s.User,
		Identity:       s.IdentityFile,
		KnownHosts:     s.KnownHostsFile,
		Path:           path,
		ConnectTimeout: 10 * time.Second,
	}
}

// Logs returns what sshd wrote to stderr so far.
func (s *Server) Logs() string { return s.logs.String() }

// Running reports whether the sshd listener process is alive.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil
}

// Start (re)starts sshd on the same port, e.g. after Stop in a peer
// outage test. It returns once the port accepts connections.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		return errors.New("sshd already running")
	}
	var lastErr error
	// A port just released by a killed sshd can linger briefly.
	for attempt := 0; attempt < 3; attempt++ {
		if lastErr = s.startLocked(); lastErr == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return lastErr
}

func (s *Server) startLocked() error {
	cmd := exec.Command(Path, "-D", "-e", "-f", s.ConfigFile)
	cmd.Stdout = s.logs
	cmd.Stderr = s.logs
	// Its own process group, so a Ctrl-C on the test does not race our
	// orderly shutdown; and killed with us if we die without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	proc, err := testbed.Start("sshd", "", cmd)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if ended, err := proc.Exited(); ended {
			return fmt.Errorf("sshd exited during startup (%v): %s", err, strings.TrimSpace(s.logs.String()))
		}
		if probe(s.Addr()) == nil {
			s.proc = proc
			return nil
		}
		if time.Now().After(deadline) {
			proc.Kill()
			return fmt.Errorf("sshd did not accept on %s within 15s: %s", s.Addr(), strings.TrimSpace(s.logs.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// probe checks that an SSH server answers on addr. It sends its own
// version line before hanging up, so sshd does not log an error for it.
func probe(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(buf[:n], []byte("SSH-")) {
		return fmt.Errorf("not an SSH server on %s: %q", addr, buf[:n])
	}
	_, err = c.Write([]byte("SSH-2.0-sshdtest-probe\r\n"))
	return err
}

// Stop shuts sshd down and cuts every established session, like a peer
// going away. Start brings it back on the same port.
func (s *Server) Stop() error { return s.halt(syscall.SIGTERM) }

// Kill is Stop with SIGKILL for the listener as well.
func (s *Server) Kill() error { return s.halt(syscall.SIGKILL) }

func (s *Server) halt(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return nil
	}
	pid := s.proc.Pid()
	// Per-connection sshd processes detach into their own sessions and
	// outlive the listener; find them before it dies and they get
	// reparented.
	children := descendants(pid)
	_, _ = s.proc.Signal(sig, 0)
	_, _ = s.proc.Signal(syscall.SIGCONT, 0) // in case it was frozen
	for _, c := range children {
		_ = syscall.Kill(c, syscall.SIGKILL)
	}
	if ended, _ := s.proc.Wait(10 * time.Second); !ended {
		s.proc.Kill()
	}
	// Sessions accepted while we were collecting.
	for _, c := range descendants(pid) {
		_ = syscall.Kill(c, syscall.SIGKILL)
	}
	s.proc = nil
	return nil
}

// Freeze stops (SIGSTOP) sshd and all its sessions without closing any
// socket: the peer looks alive to TCP but never answers, like a hung host.
func (s *Server) Freeze() { s.signalAll(syscall.SIGSTOP) }

// Thaw resumes a frozen server.
func (s *Server) Thaw() { s.signalAll(syscall.SIGCONT) }

func (s *Server) signalAll(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return
	}
	pid := s.proc.Pid()
	_ = syscall.Kill(pid, sig)
	for _, c := range descendants(pid) {
		_ = syscall.Kill(c, sig)
	}
}

// PID is the sshd listener's process id, or 0 when it is not running.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.Pid()
}

// Sessions lists the per-connection processes running under sshd, so a
// caller can check that none outlives Stop.
func (s *Server) Sessions() []int {
	pid := s.PID()
	if pid == 0 {
		return nil
	}
	return descendants(pid)
}

// Close stops sshd and its sessions. The directory is left to its owner.
func (s *Server) Close() error { return s.Kill() }

// descendants lists the pids whose ancestry leads to pid, from /proc.
func descendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	parent := map[int]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the parenthesised command name: state ppid ...
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		parent[p] = pp
	}
	var out []int
	for p := range parent {
		for a, n := parent[p], 0; a > 1 && n < 64; a, n = parent[a], n+1 {
			if a == pid {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

func writeKey(file string) (ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "lockstep-sshdtest")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(file+".pub", ssh.MarshalAuthorizedKey(sshPub), 0o644); err != nil {
		return nil, err
	}
	return sshPub, nil
}

// WriteKnownHosts writes a known_hosts file recording key for addr; tests
// use it to simulate an unknown or changed host key.
func WriteKnownHosts(file, addr string, key ssh.PublicKey) error {
	var b []byte
	if key != nil {
		b = []byte(knownhosts.Line([]string{knownhosts.Normalize(addr)}, key) + "\n")
	}
	return os.WriteFile(file, b, 0o644)
}

// NewHostKey returns a fresh public key, for a known_hosts entry that does
// not match the server.
func NewHostKey() (ssh.PublicKey, error) {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return ssh.NewPublicKey(pub)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
