package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/integration/sshdtest"
	"github.com/lockstep-ha/lockstep/internal/testbed"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// syncDaemon is one `lockstep sync` process.
type syncDaemon struct {
	t    *testing.T
	bin  string
	cfg  string
	log  string
	proc *testbed.Proc
}

func writeSyncConfig(t *testing.T, srv *sshdtest.Server, src, dst, knownHosts string) string {
	t.Helper()
	cfg := fmt.Sprintf(`node: web1
sync:
  - name: docroot
    source: %s
    state_dir: %s
    verify_interval: 0s
    targets:
      - name: web2
        host: 127.0.0.1
        port: %d
        user: %s
        identity: %s
        known_hosts: %s
        path: %s
`, src, t.TempDir(), srv.Port, srv.User, srv.IdentityFile, knownHosts, dst)
	p := filepath.Join(t.TempDir(), "lockstep.yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func startSyncDaemon(t *testing.T, bin, cfg string) *syncDaemon {
	t.Helper()
	d := &syncDaemon{t: t, bin: bin, cfg: cfg, log: filepath.Join(t.TempDir(), "sync.log")}
	args := []string{"sync", "-c", cfg}
	if os.Getenv("LSYNC_DEBUG") != "" {
		args = append(args, "--debug")
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	proc, err := testbed.Start("lockstep sync", d.log, cmd)
	if err != nil {
		t.Fatal(err)
	}
	d.proc = proc
	t.Cleanup(func() {
		d.kill()
		if t.Failed() {
			b, _ := os.ReadFile(d.log)
			t.Logf("lockstep sync log:\n%s", tail(string(b), 60))
		}
	})
	return d
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (d *syncDaemon) kill() {
	d.proc.Kill()
}

// stop asks for an orderly shutdown and returns the exit code.
func (d *syncDaemon) stop() int {
	if ended, _ := d.proc.Signal(syscall.SIGTERM, 30*time.Second); !ended {
		d.t.Error("lockstep sync did not exit within 30s of SIGTERM")
		d.kill()
	}
	return d.proc.ExitCode()
}

func countFiles(root, sub string) int {
	n := 0
	_ = filepath.WalkDir(filepath.Join(root, sub), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && !strings.HasPrefix(d.Name(), lsync.TempPrefix) {
			n++
		}
		return nil
	})
	return n
}

// TestSSHSyncDaemonKill9MidBurst kills `lockstep sync` with SIGKILL while
// a burst is in flight: no partial file may be visible at a final name,
// and the restarted daemon converges and removes the temp leftovers.
func TestSSHSyncDaemonKill9MidBurst(t *testing.T) {
	bin := lockstepBinary(t)
	srv := sshdtest.Start(t)
	src, dst := t.TempDir(), t.TempDir()
	cfg := writeSyncConfig(t, srv, src, dst, srv.KnownHostsFile)

	write(t, src, "ready", "1", 0o644)
	d := startSyncDaemon(t, bin, cfg)
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)

	// Large enough files that the kill lands mid-transfer.
	chunk := randomBytes(t, 128<<10)
	const files = 800
	for i := 0; i < files; i++ {
		p := filepath.Join(src, "burst", fmt.Sprintf("d%02d", i%8), fmt.Sprintf("f%04d.bin", i))
		if i < 8 {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		data := chunk[:1+(i*7919)%len(chunk)]
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(convergeTimeout)
	for countFiles(dst, "burst") < 50 {
		if time.Now().After(deadline) {
			t.Fatal("the burst never started to arrive")
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.kill()
	landed := countFiles(dst, "burst")
	temps, _ := filepath.Glob(filepath.Join(dst, "burst", "*", lsync.TempPrefix+"*"))
	t.Logf("killed with %d of %d burst files landed, %d temp files left behind", landed, files, len(temps))

	// Whatever is visible at a final name is complete.
	err := filepath.WalkDir(dst, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() || strings.HasPrefix(e.Name(), lsync.TempPrefix) {
			return err
		}
		rel, _ := filepath.Rel(dst, p)
		want, err := os.ReadFile(filepath.Join(src, rel))
		if err != nil {
			return err
		}
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is visible but incomplete (%d of %d bytes)", rel, len(got), len(want))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The restarted daemon catches up; DiffTrees also flags any temp file
	// left behind on the target.
	d2 := startSyncDaemon(t, bin, cfg)
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)
	if code := d2.stop(); code != 0 {
		t.Errorf("lockstep sync exited %d after SIGTERM", code)
	}

	// --once agrees that the target matches.
	out, err := exec.Command(bin, "sync", "-c", cfg, "--once").CombinedOutput()
	if err != nil {
		t.Errorf("sync --once after convergence: %v\n%s", err, out)
	}
}

// TestSSHSyncOnceUnknownHostKey: the CLI refuses a peer whose host key is
// not in known_hosts, exits 1 and tells the admin what to do.
func TestSSHSyncOnceUnknownHostKey(t *testing.T) {
	bin := lockstepBinary(t)
	srv := sshdtest.Start(t)
	src, dst := t.TempDir(), t.TempDir()
	write(t, src, "a", "1", 0o644)
	kh := filepath.Join(t.TempDir(), "known_hosts")
	if err := sshdtest.WriteKnownHosts(kh, srv.Addr(), nil); err != nil {
		t.Fatal(err)
	}
	cfg := writeSyncConfig(t, srv, src, dst, kh)
	out, err := exec.Command(bin, "sync", "-c", cfg, "--once").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("want exit 1, got %v\n%s", err, out)
	}
	for _, want := range []string{"web2", kh, "ssh-keyscan"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if entries, _ := os.ReadDir(dst); len(entries) != 0 {
		t.Errorf("files reached a target with an unknown host key: %v", entries)
	}

	// An identity readable by others is a configuration error (exit 2).
	open := filepath.Join(t.TempDir(), "id_open")
	b, err := os.ReadFile(srv.IdentityFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(open, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	cfgBytes, _ := os.ReadFile(cfg)
	bad := strings.Replace(string(cfgBytes), srv.IdentityFile, open, 1)
	if err := os.WriteFile(cfg, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(bin, "sync", "-c", cfg, "--once").CombinedOutput()
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), open) || !strings.Contains(string(out), "0644") {
		t.Errorf("world-readable identity: want exit 2 naming %s and 0644, got %v\n%s", open, err, out)
	}
}
