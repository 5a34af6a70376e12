package sftptarget

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/integration/sshdtest"
	"github.com/lockstep-ha/lockstep/lsync"
)

// connectReceiver returns a receiver session rooted at a fresh directory.
func connectReceiver(t *testing.T, srv *sshdtest.Server) (*recvSession, string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	cfg := srv.TargetConfig("peer", root)
	cfg.Receiver, cfg.ReceiverCommand = lsync.ReceiverOn, lockstepBinary(t)
	c, err := newConnector(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	tg, err := c.Connect(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	s, ok := tg.(*recvSession)
	if !ok {
		_ = tg.Close()
		t.Fatalf("receiver: on gave a %T", tg)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, root
}

func TestReceiverSessionOperations(t *testing.T) {
	srv := sshdtest.Start(t)
	s, root := connectReceiver(t, srv)
	ctx := testContext(t)
	mt := time.Date(2022, 3, 4, 5, 6, 7, 890, time.UTC)

	if err := s.WriteFile(ctx, "a/small.html", strings.NewReader("<p>hi</p>"), 0o640, mt); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789"), 300_000) // several chunks
	if err := s.WriteFile(ctx, "a/big.bin", bytes.NewReader(big), 0o600, mt); err != nil {
		t.Fatal(err)
	}
	e, err := s.Stat(ctx, "a/big.bin")
	if err != nil || e.Size != int64(len(big)) || e.Mode != 0o600 || !e.ModTime.Equal(mt) {
		t.Fatalf("stat: %+v %v (nanosecond mtimes survive the receiver)", e, err)
	}
	rc, err := s.Open(ctx, "a/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(back, big) {
		t.Fatalf("read back: %d bytes, %v", len(back), err)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Mkdir(ctx, "empty/nested", fs.ModeDir|0o750); err != nil {
		t.Fatal(err)
	}
	if err := s.Symlink(ctx, "a/link", "small.html"); err != nil {
		t.Fatal(err)
	}
	if err := s.Chmod(ctx, "a/small.html", 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Chtimes(ctx, "a", mt); err != nil {
		t.Fatal(err)
	}
	var walked []string
	if err := s.Walk(ctx, "", func(e lsync.Entry) error { walked = append(walked, e.Path); return nil }); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(walked, ","); got != "a,a/big.bin,a/link,a/small.html,empty,empty/nested" {
		t.Errorf("walk: %s", got)
	}
	if err := s.Rename(ctx, "a", "b/a"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveEmptyDir(ctx, "b/a"); err == nil {
		t.Error("RemoveEmptyDir removed a directory with content")
	}
	if err := s.RemoveEmptyDir(ctx, "empty/nested"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveAll(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx, "b"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat after RemoveAll: %v", err)
	}
	assertNoTemps(t, root)

	// Confinement is the receiver's: a symlinked parent is refused.
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(root, "up")); err != nil {
		t.Fatal(err)
	}
	err = s.WriteFile(ctx, "up/x", strings.NewReader("x"), 0o644, mt)
	if !errors.Is(err, lsync.ErrRefused) || errors.Is(err, lsync.ErrDisconnected) {
		t.Errorf("write through a symlinked parent: %v", err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("written outside: %v", entries)
	}
	// The session survives per-path failures.
	if err := s.WriteFile(ctx, "still-works", strings.NewReader("y"), 0o644, mt); err != nil {
		t.Fatal(err)
	}
}

// A receiver that goes away (sshd stopped) marks the session dead at once.
func TestReceiverSessionNoticesPeerGone(t *testing.T) {
	srv := sshdtest.Start(t)
	s, _ := connectReceiver(t, srv)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Disconnected():
	case <-time.After(10 * time.Second):
		t.Fatal("the session did not notice the peer going away")
	}
	err := s.Mkdir(context.Background(), "x", fs.ModeDir|0o755)
	if !errors.Is(err, lsync.ErrDisconnected) {
		t.Errorf("after the peer went away: %v", err)
	}
}

// receiver_command reaches the peer's shell: the connector re-checks it
// even when the config loader was bypassed.
func TestConnectorRejectsShellInReceiverCommand(t *testing.T) {
	srv := sshdtest.Start(t)
	cfg := srv.TargetConfig("peer", t.TempDir())
	cfg.ReceiverCommand = "lockstep; touch /tmp/pwned"
	if _, err := NewConnector(cfg, nil); err == nil || !strings.Contains(err.Error(), "receiver_command") {
		t.Errorf("NewConnector: %v", err)
	}
	if got := shellQuote("/var/www/it's"); got != `'/var/www/it'\''s'` {
		t.Errorf("shellQuote: %s", got)
	}
}
