package sftptarget

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/integration/sshdtest"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/receiver"
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

// TestReceiverMapsOwnerNames: over SSH, the peer's receiver gives a
// chown's names the ids they have there (root, and Debian's www-data),
// keeps the number for a name it does not know, and answers the same
// mapping without changing anything.
func TestReceiverMapsOwnerNames(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	wd, err := user.Lookup("www-data")
	if err != nil {
		t.Skip("no www-data user")
	}
	wdUID, _ := strconv.Atoi(wd.Uid)
	srv := sshdtest.Start(t)
	s, _ := connectReceiver(t, srv)
	ctx := testContext(t)
	if !s.MapsOwnerNames() || s.Protocol() != fmt.Sprintf("receiver v%d", receiver.Version) {
		t.Fatalf("a current receiver does not map names (%s)", s.Protocol())
	}
	if err := s.WriteFile(ctx, "a.txt", strings.NewReader("a"), 0o644, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		own      lsync.Owner
		uid, gid uint32
	}{
		{lsync.Owner{UID: 4242, GID: 4243, User: "www-data", Group: "root"}, uint32(wdUID), 0},
		{lsync.Owner{UID: 4242, GID: 4243, User: "no-such-user-lockstep", Group: "no-such-group-lockstep"}, 4242, 4243},
	} {
		uid, gid, err := s.MapOwner(ctx, tc.own)
		if err != nil || uid != tc.uid || gid != tc.gid {
			t.Errorf("MapOwner(%s) = %d:%d %v, want %d:%d", tc.own, uid, gid, err, tc.uid, tc.gid)
		}
		if err := s.Lchown(ctx, "a.txt", tc.own); err != nil {
			t.Fatal(err)
		}
		e, err := s.Stat(ctx, "a.txt")
		if err != nil || e.UID != tc.uid || e.GID != tc.gid {
			t.Errorf("after Lchown(%s): %d:%d %v, want %d:%d", tc.own, e.UID, e.GID, err, tc.uid, tc.gid)
		}
	}
}

// TestReceiverOlderPeer: before a receiver of protocol version 2 (which
// answers a version 3 hello with its own version and exits) the client
// says hello again in version 2 on a new channel, and then keeps owners
// by number: names are not mapped.
func TestReceiverOlderPeer(t *testing.T) {
	srv := sshdtest.Start(t)
	bin := lockstepBinary(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	// The first run plays the old receiver's answer to a version 3 hello
	// (the hello frame of version 2, then exit); later runs are the real
	// receiver, which serves the version 2 hello that follows in version 2.
	marker := filepath.Join(dir, "answered")
	var frame []byte
	str := func(s string) {
		frame = binary.BigEndian.AppendUint32(frame, uint32(len(s)))
		frame = append(frame, s...)
	}
	str(receiver.Magic)
	frame = binary.BigEndian.AppendUint32(frame, 2)
	str(root)
	str("")
	frame = append(append(binary.BigEndian.AppendUint32(nil, uint32(5+len(frame))), 'H', 0, 0, 0, 0), frame...)
	var esc strings.Builder
	for _, c := range frame {
		fmt.Fprintf(&esc, "\\%03o", c)
	}
	script := filepath.Join(dir, "old-lockstep")
	text := "#!/bin/sh\nif [ ! -e " + marker + " ]; then touch " + marker + "; printf '" + esc.String() + "'; exit 1; fi\nexec " + bin + " \"$@\"\n"
	if err := os.WriteFile(script, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := srv.TargetConfig("peer", root)
	cfg.Receiver, cfg.ReceiverCommand = lsync.ReceiverOn, script
	c, err := newConnector(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	tg, err := c.Connect(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tg.Close() })
	s, ok := tg.(*recvSession)
	if !ok {
		t.Fatalf("got a %T, want a receiver session", tg)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatal("the old receiver was never asked")
	}
	if s.Protocol() != "receiver v2" || s.MapsOwnerNames() {
		t.Fatalf("protocol %s, maps names %v; want receiver v2, by number", s.Protocol(), s.MapsOwnerNames())
	}
	ctx := testContext(t)
	if err := s.WriteFile(ctx, "a.txt", strings.NewReader("a"), 0o644, time.Now()); err != nil {
		t.Fatal(err)
	}
	own := lsync.Owner{UID: 4242, GID: 4243, User: "root", Group: "root"}
	if uid, gid, err := s.MapOwner(ctx, own); err != nil || uid != 4242 || gid != 4243 {
		t.Errorf("MapOwner in v2 = %d:%d %v, want the numbers", uid, gid, err)
	}
	if os.Geteuid() == 0 {
		if err := s.Lchown(ctx, "a.txt", own); err != nil {
			t.Fatal(err)
		}
		if e, err := s.Stat(ctx, "a.txt"); err != nil || e.UID != 4242 || e.GID != 4243 {
			t.Errorf("owner %d:%d %v, want the numbers 4242:4243 (names are not sent in v2)", e.UID, e.GID, err)
		}
	}
}
