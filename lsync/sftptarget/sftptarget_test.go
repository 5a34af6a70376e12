package sftptarget

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/lockstep-ha/lockstep/integration/sshdtest"
	"github.com/lockstep-ha/lockstep/lsync"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// connect returns a session rooted at a fresh directory on srv.
func connect(t *testing.T, srv *sshdtest.Server) (*session, string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	c, err := newConnector(srv.TargetConfig("peer", root), nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.connect(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, root
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func assertNoTemps(t *testing.T, root string) {
	t.Helper()
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), lsync.TempPrefix) {
			t.Errorf("leftover temp file %s", p)
		}
		return nil
	})
}

func TestWriteFileLandsWithModeAndMtime(t *testing.T) {
	srv := sshdtest.Start(t)
	s, root := connect(t, srv)
	ctx := testContext(t)

	mtime := time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)
	big := bytes.Repeat([]byte("0123456789abcdef"), 300_000) // 4.8 MB: many pipelined packets
	cases := []struct {
		rel  string
		data []byte
		mode fs.FileMode
	}{
		{"a.txt", []byte("hello"), 0o644},
		{"deep/er/b.sh", []byte("#!/bin/sh\n"), 0o755},
		{"empty", nil, 0o600},
		{"big.bin", big, 0o640},
		// Either side of the single-request path for small files.
		{"edge/exact", big[:smallFile], 0o644},
		{"edge/over", big[:smallFile+1], 0o644},
	}
	for _, c := range cases {
		if err := s.WriteFile(ctx, c.rel, bytes.NewReader(c.data), c.mode, mtime); err != nil {
			t.Fatalf("WriteFile %s: %v", c.rel, err)
		}
		p := filepath.Join(root, c.rel)
		if got := readFile(t, p); got != string(c.data) {
			t.Errorf("%s: content differs (len %d want %d)", c.rel, len(got), len(c.data))
		}
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != c.mode {
			t.Errorf("%s: mode %v want %v", c.rel, fi.Mode(), c.mode)
		}
		if !fi.ModTime().Equal(mtime) {
			t.Errorf("%s: mtime %v want %v", c.rel, fi.ModTime(), mtime)
		}
	}
	// Overwrite keeps atomicity and applies the new mode.
	if err := s.WriteFile(ctx, "a.txt", strings.NewReader("second"), 0o600, mtime); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(root, "a.txt")); got != "second" {
		t.Errorf("overwrite: got %q", got)
	}
	// A reader of unknown size (pipe) must still arrive complete.
	pr, pw := io.Pipe()
	go func() {
		for i := 0; i < 100; i++ {
			_, _ = pw.Write(bytes.Repeat([]byte{byte(i)}, 10_000))
		}
		_ = pw.Close()
	}()
	if err := s.WriteFile(ctx, "piped", pr, 0o644, mtime); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(root, "piped")); err != nil || fi.Size() != 1_000_000 {
		t.Errorf("piped: %v size %d", err, fi.Size())
	}
	assertNoTemps(t, root)
}

// gateReader delivers the first part, then blocks until released.
type gateReader struct {
	first, rest []byte
	reached     chan struct{}
	release     chan struct{}
}

func (g *gateReader) Read(p []byte) (int, error) {
	if len(g.first) > 0 {
		n := copy(p, g.first)
		g.first = g.first[n:]
		return n, nil
	}
	if g.reached != nil {
		close(g.reached)
		g.reached = nil
		<-g.release
	}
	if len(g.rest) == 0 {
		return 0, io.EOF
	}
	n := copy(p, g.rest)
	g.rest = g.rest[n:]
	return n, nil
}

func TestWriteFileNeverShowsPartialContent(t *testing.T) {
	srv := sshdtest.Start(t)
	s, root := connect(t, srv)
	ctx := testContext(t)
	final := filepath.Join(root, "index.html")

	if err := s.WriteFile(ctx, "index.html", strings.NewReader("old version"), 0o644, time.Now()); err != nil {
		t.Fatal(err)
	}
	g := &gateReader{
		first:   bytes.Repeat([]byte("n"), 100_000),
		rest:    bytes.Repeat([]byte("m"), 100_000),
		reached: make(chan struct{}),
		release: make(chan struct{}),
	}
	reached := g.reached
	done := make(chan error, 1)
	go func() { done <- s.WriteFile(ctx, "index.html", g, 0o644, time.Now()) }()
	<-reached
	// Half of the new content is on the target, under a temp name only.
	if got := readFile(t, final); got != "old version" {
		t.Errorf("final name shows %d bytes of in-flight content", len(got))
	}
	temps, _ := filepath.Glob(filepath.Join(root, lsync.TempPrefix+"index.html.*"))
	if len(temps) != 1 {
		t.Errorf("expected one temp file during the upload, found %v", temps)
	}
	close(g.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, final); len(got) != 200_000 || got[0] != 'n' || got[199_999] != 'm' {
		t.Errorf("final content wrong: %d bytes", len(got))
	}
	assertNoTemps(t, root)
}

type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("source vanished")
	}
	n := min(len(p), f.n)
	f.n -= n
	return n, nil
}

func TestWriteFileSourceErrorRemovesTemp(t *testing.T) {
	srv := sshdtest.Start(t)
	s, root := connect(t, srv)
	ctx := testContext(t)
	if err := s.WriteFile(ctx, "f", strings.NewReader("keep"), 0o644, time.Now()); err != nil {
		t.Fatal(err)
	}
	err := s.WriteFile(ctx, "f", &failingReader{n: 70_000}, 0o644, time.Now())
	if err == nil || !strings.Contains(err.Error(), "source vanished") {
		t.Fatalf("want the source error, got %v", err)
	}
	if errors.Is(err, lsync.ErrDisconnected) {
		t.Errorf("a local read error must not look like a disconnect: %v", err)
	}
	if got := readFile(t, filepath.Join(root, "f")); got != "keep" {
		t.Errorf("final file changed to %q", got)
	}
	assertNoTemps(t, root)
	// The session is still usable.
	if _, err := s.Stat(ctx, "f"); err != nil {
		t.Errorf("session unusable after a source error: %v", err)
	}
}

func TestDirsSymlinksAndMetadata(t *testing.T) {
	srv := sshdtest.Start(t)
	s, root := connect(t, srv)
	ctx := testContext(t)

	if err := s.Mkdir(ctx, "a/b/c", 0o750); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(root, "a/b/c")); err != nil || fi.Mode() != fs.ModeDir|0o750 {
		t.Fatalf("mkdir: %v %v", err, fi.Mode())
	}
	// Mkdir on an existing dir only fixes the mode.
	if err := s.Mkdir(ctx, "a/b/c", 0o700); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(root, "a/b/c")); fi.Mode().Perm() != 0o700 {
		t.Errorf("mkdir existing: mode %v", fi.Mode())
	}
	// A change of type on the source replaces what is in the way.
	if err := s.WriteFile(ctx, "file", strings.NewReader("x"), 0o644, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.Mkdir(ctx, "file", 0o755); err != nil {
		t.Fatalf("mkdir over a file: %v", err)
	}
	if err := s.WriteFile(ctx, "file/inner", strings.NewReader("x"), 0o644, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteFile(ctx, "file", strings.NewReader("file again"), 0o644, time.Now()); err != nil {
		t.Fatalf("file over a non-empty dir: %v", err)
	}
	if got := readFile(t, filepath.Join(root, "file")); got != "file again" {
		t.Fatalf("file over dir: %q", got)
	}
	if err := s.Mkdir(ctx, "dir2/sub", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := s.Symlink(ctx, "dir2", "file"); err != nil {
		t.Fatalf("symlink over a dir: %v", err)
	}
	if l, err := os.Readlink(filepath.Join(root, "dir2")); err != nil || l != "file" {
		t.Fatalf("symlink over dir: %q %v", l, err)
	}
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(root, "link-out")); err != nil {
		t.Fatal(err)
	}
	if err := s.Mkdir(ctx, "link-out", 0o700); err != nil {
		t.Fatalf("mkdir over a symlink: %v", err)
	}
	if fi, err := os.Lstat(filepath.Join(root, "link-out")); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("mkdir over symlink: %v %v", fi, err)
	}
	if fi, _ := os.Stat(outside); fi.Mode().Perm() == 0o700 {
		t.Error("mkdir over a symlink changed its target's mode")
	}
	assertNoTemps(t, root)

	// Symlink replaces a file atomically, then another symlink.
	if err := s.Symlink(ctx, "file", "a/b"); err != nil {
		t.Fatal(err)
	}
	if l, err := os.Readlink(filepath.Join(root, "file")); err != nil || l != "a/b" {
		t.Fatalf("symlink: %q %v", l, err)
	}
	if err := s.Symlink(ctx, "file", "../outside/not/followed"); err != nil {
		t.Fatal(err)
	}
	e, err := s.Stat(ctx, "file")
	if err != nil {
		t.Fatal(err)
	}
	if e.Mode&fs.ModeSymlink == 0 || e.LinkTarget != "../outside/not/followed" {
		t.Errorf("stat symlink: %+v", e)
	}
	// Metadata calls refuse symlinks instead of following them.
	if err := s.Chmod(ctx, "file", 0o600); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("chmod symlink: %v", err)
	}

	mtime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := s.Chtimes(ctx, "a/b", mtime); err != nil {
		t.Fatal(err)
	}
	if err := s.Chmod(ctx, "a/b", 0o711); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(root, "a/b"))
	if err != nil {
		t.Fatal(err)
	}
	if !fi.ModTime().Equal(mtime) || fi.Mode().Perm() != 0o711 {
		t.Errorf("dir meta: %v %v", fi.ModTime(), fi.Mode())
	}
	if _, err := s.Stat(ctx, "missing/deeper"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat missing: %v", err)
	}
	if _, err := s.Stat(ctx, "a/b/c/x/y"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat missing: %v", err)
	}
	if _, err := s.Stat(ctx, "file/under-a-file"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat under a file: %v", err)
	}
	if _, err := s.Stat(ctx, "nothing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat missing: %v", err)
	}
}

func TestWalkRenameRemoveOpen(t *testing.T) {
	srv := sshdtest.Start(t)
	s, root := connect(t, srv)
	ctx := testContext(t)
	mtime := time.Date(2022, 6, 1, 0, 0, 0, 0, time.UTC)
	for _, f := range []string{"b/x", "b/y/z", "a", "c/d"} {
		if err := s.WriteFile(ctx, f, strings.NewReader(f), 0o644, mtime); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Symlink(ctx, "link", "b/x"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "b", lsync.TempPrefix+"x.dead"), []byte("crash"), 0o600); err != nil {
		t.Fatal(err)
	}
	var got []string
	err := s.Walk(ctx, "", func(e lsync.Entry) error {
		desc := e.Path
		switch {
		case e.Mode.IsDir():
			desc += "/"
		case e.Mode&fs.ModeSymlink != 0:
			desc += "->" + e.LinkTarget
		default:
			desc += ":" + strconv.FormatInt(e.Size, 10)
			if !e.ModTime.Equal(mtime) && !strings.Contains(e.Path, lsync.TempPrefix) {
				t.Errorf("%s: mtime %v", e.Path, e.ModTime)
			}
		}
		got = append(got, desc)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "a:1 b/ b/" + lsync.TempPrefix + "x.dead:5 b/x:3 b/y/ b/y/z:5 c/ c/d:3 link->b/x"
	if strings.Join(got, " ") != want {
		t.Errorf("walk:\n got %s\nwant %s", strings.Join(got, " "), want)
	}

	// Directory rename, then replacing a file by rename.
	if err := s.Rename(ctx, "b", "moved/b2"); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(root, "moved/b2/y/z")); got != "b/y/z" {
		t.Errorf("after rename: %q", got)
	}
	if err := s.Rename(ctx, "a", "c/d"); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(root, "c/d")); got != "a" {
		t.Errorf("rename over: %q", got)
	}

	rc, err := s.Open(ctx, "c/d")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	if err != nil || string(b) != "a" {
		t.Errorf("open: %q %v", b, err)
	}
	if err := rc.Close(); err != nil {
		t.Error(err)
	}
	if _, err := s.Open(ctx, "link"); err == nil {
		t.Error("Open followed a symlink")
	}

	// RemoveAll: tree, symlink (not its target), missing.
	if err := s.Symlink(ctx, "moved/b2/y/escape", root+"/c"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveAll(ctx, "moved"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveAll(ctx, "link"); err != nil {
		t.Fatal(err)
	}
	for _, rel := range []string{"missing", "missing/too", "c/d/under-a-file"} {
		if err := s.RemoveAll(ctx, rel); err != nil {
			t.Errorf("RemoveAll %s: %v", rel, err)
		}
	}
	entries, _ := os.ReadDir(root)
	if len(entries) != 1 || entries[0].Name() != "c" {
		t.Errorf("after RemoveAll: %v", entries)
	}
	if got := readFile(t, filepath.Join(root, "c/d")); got != "a" {
		t.Errorf("RemoveAll followed a symlink: %q", got)
	}
}

func TestConfinement(t *testing.T) {
	srv := sshdtest.Start(t)
	s, root := connect(t, srv)
	ctx := testContext(t)
	outside := t.TempDir()

	for _, bad := range []string{"../evil", "a/../../evil", "/etc/passwd", "", ".", "x\x00y"} {
		if err := s.WriteFile(ctx, bad, strings.NewReader("x"), 0o644, time.Now()); err == nil {
			t.Errorf("WriteFile(%q) accepted", bad)
		}
		if err := s.RemoveAll(ctx, bad); err == nil {
			t.Errorf("RemoveAll(%q) accepted", bad)
		}
	}
	if err := s.Rename(ctx, "x", "../y"); err == nil {
		t.Error("Rename to ../y accepted")
	}

	// A directory on the target that someone replaced by a symlink
	// pointing outside the root.
	if err := os.Symlink(outside, filepath.Join(root, "uploads")); err != nil {
		t.Fatal(err)
	}
	attempts := map[string]func() error{
		"WriteFile": func() error {
			return s.WriteFile(ctx, "uploads/x.php", strings.NewReader("pwn"), 0o644, time.Now())
		},
		"WriteFile deep": func() error {
			return s.WriteFile(ctx, "uploads/sub/x.php", strings.NewReader("pwn"), 0o644, time.Now())
		},
		"Mkdir":   func() error { return s.Mkdir(ctx, "uploads/dir", 0o755) },
		"Symlink": func() error { return s.Symlink(ctx, "uploads/l", "/") },
		"Rename":  func() error { return s.Rename(ctx, "uploads2", "uploads/x") },
		"Chmod":   func() error { return s.Chmod(ctx, "uploads/f", 0o777) },
		"Chtimes": func() error { return s.Chtimes(ctx, "uploads/f", time.Now()) },
	}
	if err := os.WriteFile(filepath.Join(outside, "f"), []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "uploads2"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, fn := range attempts {
		err := fn()
		if !errors.Is(err, errSymlinkParent) {
			t.Errorf("%s through a symlinked parent: got %v", name, err)
		} else if !strings.Contains(err.Error(), root+"/uploads") {
			t.Errorf("%s: error does not name the path: %v", name, err)
		}
	}
	// Reads see nothing under a symlinked parent: inside the confined
	// tree that path does not exist.
	if _, err := s.Open(ctx, "uploads/f"); !errors.Is(err, errSymlinkParent) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open through a symlinked parent: %v", err)
	}
	if _, err := s.Stat(ctx, "uploads/f"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat through a symlinked parent: %v", err)
	}
	if err := s.RemoveAll(ctx, "uploads/f"); err != nil {
		t.Errorf("RemoveAll through a symlinked parent: %v", err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 1 {
		t.Errorf("something was written outside the root: %v", entries)
	}
	if fi, _ := os.Stat(filepath.Join(outside, "f")); fi.Mode().Perm() != 0o600 {
		t.Errorf("outside file mode changed: %v", fi.Mode())
	}

	// A directory verified earlier in the session and then replaced by a
	// symlink through our own Symlink call must be re-checked.
	if err := s.WriteFile(ctx, "d/one", strings.NewReader("1"), 0o644, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveAll(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	if err := s.Symlink(ctx, "d", outside); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteFile(ctx, "d/two", strings.NewReader("2"), 0o644, time.Now()); !errors.Is(err, errSymlinkParent) {
		t.Errorf("write through a symlink created in-session: %v", err)
	}
	// The final component may be a symlink: it is replaced, not followed.
	if err := s.WriteFile(ctx, "d", strings.NewReader("file now"), 0o644, time.Now()); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(filepath.Join(root, "d")); !fi.Mode().IsRegular() {
		t.Errorf("symlink at final name not replaced: %v", fi.Mode())
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 1 {
		t.Errorf("something was written outside the root: %v", entries)
	}
}

func TestUnknownHostKeyRefused(t *testing.T) {
	srv := sshdtest.Start(t)
	cfg := srv.TargetConfig("web2", t.TempDir())
	cfg.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
	if err := sshdtest.WriteKnownHosts(cfg.KnownHosts, srv.Addr(), nil); err != nil {
		t.Fatal(err)
	}
	c, err := NewConnector(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Connect(testContext(t))
	if !errors.Is(err, ErrHostKey) {
		t.Fatalf("want ErrHostKey, got %v", err)
	}
	for _, want := range []string{"web2", "[127.0.0.1]:" + strconv.Itoa(srv.Port), cfg.KnownHosts, "ssh-keyscan -p " + strconv.Itoa(srv.Port), ssh.FingerprintSHA256(srv.HostKey())} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if errors.Is(err, lsync.ErrDisconnected) {
		t.Error("a refused host key must not look like a transient disconnect")
	}
}

func TestChangedHostKeyRefused(t *testing.T) {
	srv := sshdtest.Start(t)
	cfg := srv.TargetConfig("web2", t.TempDir())
	cfg.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
	other, err := sshdtest.NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := sshdtest.WriteKnownHosts(cfg.KnownHosts, srv.Addr(), other); err != nil {
		t.Fatal(err)
	}
	c, err := NewConnector(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Connect(testContext(t))
	if !errors.Is(err, ErrHostKey) {
		t.Fatalf("want ErrHostKey, got %v", err)
	}
	for _, want := range []string{"HOST KEY CHANGED", cfg.KnownHosts + ":1", ssh.FingerprintSHA256(other), ssh.FingerprintSHA256(srv.HostKey()), "ssh-keygen -R"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestHostKeyOfOtherTypeRefused(t *testing.T) {
	// known_hosts records only an RSA key; the server has only Ed25519.
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("ssh-keygen not installed")
	}
	srv := sshdtest.Start(t)
	dir := t.TempDir()
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", filepath.Join(dir, "k")).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	pubBytes, err := os.ReadFile(filepath.Join(dir, "k.pub"))
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(pubBytes)
	if err != nil {
		t.Fatal(err)
	}
	cfg := srv.TargetConfig("web2", t.TempDir())
	cfg.KnownHosts = filepath.Join(dir, "known_hosts")
	if err := sshdtest.WriteKnownHosts(cfg.KnownHosts, srv.Addr(), pub); err != nil {
		t.Fatal(err)
	}
	c, err := NewConnector(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Connect(testContext(t))
	if !errors.Is(err, ErrHostKey) || !strings.Contains(err.Error(), "ssh-rsa") {
		t.Fatalf("want ErrHostKey naming ssh-rsa, got %v", err)
	}
}

func TestIdentityValidation(t *testing.T) {
	srv := sshdtest.Start(t)
	dir := t.TempDir()

	open := filepath.Join(dir, "open_key")
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
	cfg := srv.TargetConfig("web2", dir)
	cfg.Identity = open
	_, err = NewConnector(cfg, nil)
	if err == nil || !strings.Contains(err.Error(), open) || !strings.Contains(err.Error(), "0644") {
		t.Errorf("key readable by others: want an error naming %s and 0644, got %v", open, err)
	}

	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	enc := filepath.Join(dir, "enc_key")
	if err := os.WriteFile(enc, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Identity = enc
	_, err = NewConnector(cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "passphrase") || !strings.Contains(err.Error(), enc) {
		t.Errorf("encrypted key: %v", err)
	}

	garbage := filepath.Join(dir, "garbage")
	_ = os.WriteFile(garbage, []byte("not a key"), 0o600)
	cfg.Identity = garbage
	if _, err := NewConnector(cfg, nil); err == nil || !strings.Contains(err.Error(), garbage) {
		t.Errorf("garbage key: %v", err)
	}

	cfg.Identity = filepath.Join(dir, "missing")
	if _, err := NewConnector(cfg, nil); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing key: %v", err)
	}

	cfg.Identity = srv.IdentityFile
	cfg.KnownHosts = filepath.Join(dir, "no_known_hosts")
	if _, err := NewConnector(cfg, nil); err == nil || !strings.Contains(err.Error(), cfg.KnownHosts) {
		t.Errorf("missing known_hosts: %v", err)
	}

	// A key the server does not authorize.
	other := filepath.Join(dir, "other_key")
	_, priv2, _ := ed25519.GenerateKey(rand.Reader)
	block2, _ := ssh.MarshalPrivateKey(priv2, "")
	_ = os.WriteFile(other, pem.EncodeToMemory(block2), 0o600)
	cfg = srv.TargetConfig("web2", dir)
	cfg.Identity = other
	c, err := NewConnector(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Connect(testContext(t)); err == nil || !strings.Contains(err.Error(), "authorized_keys") {
		t.Errorf("unauthorized key: %v", err)
	}
}

func TestReconnectAfterPeerRestart(t *testing.T) {
	srv := sshdtest.Start(t)
	root := t.TempDir()
	c, err := NewConnector(srv.TargetConfig("peer", root), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	tg, err := c.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	if err := tg.WriteFile(ctx, "before", strings.NewReader("1"), 0o644, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-tg.(interface{ Disconnected() <-chan struct{} }).Disconnected():
	case <-time.After(20 * time.Second):
		t.Fatal("peer shutdown not noticed by an idle session")
	}
	err = tg.WriteFile(ctx, "during", strings.NewReader("2"), 0o644, time.Now())
	if !errors.Is(err, lsync.ErrDisconnected) {
		t.Fatalf("write while the peer is down: want ErrDisconnected, got %v", err)
	}
	if _, err := c.Connect(ctx); !errors.Is(err, lsync.ErrDisconnected) {
		t.Fatalf("connect while the peer is down: want ErrDisconnected, got %v", err)
	}
	// The dead session stays dead even once the peer is back.
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := tg.Stat(ctx, "before"); !errors.Is(err, lsync.ErrDisconnected) {
		t.Fatalf("old session after restart: %v", err)
	}
	tg2, err := c.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tg2.Close()
	if err := tg2.WriteFile(ctx, "after", strings.NewReader("3"), 0o644, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(root, "after")); got != "3" {
		t.Errorf("after reconnect: %q", got)
	}
	assertNoTemps(t, root)
}

func TestKeepaliveDetectsHungPeer(t *testing.T) {
	srv := sshdtest.Start(t)
	root := t.TempDir()
	c, err := newConnector(srv.TargetConfig("peer", root), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.keepaliveInterval = 100 * time.Millisecond
	c.keepaliveTimeout = 500 * time.Millisecond
	ctx := testContext(t)
	s, err := c.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	srv.Freeze()
	defer srv.Thaw()
	deadline := time.Now().Add(20 * time.Second)
	for s.deadErr() == nil {
		if time.Now().After(deadline) {
			t.Fatal("hung peer not detected by keepalive")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Requests fail fast instead of hanging on the frozen peer.
	if _, err := s.Stat(ctx, "x"); !errors.Is(err, lsync.ErrDisconnected) {
		t.Errorf("stat on a dead session: %v", err)
	}
}

func TestPermissionErrorIsPerPath(t *testing.T) {
	srv := sshdtest.Start(t)
	s, root := connect(t, srv)
	ctx := testContext(t)
	locked := filepath.Join(root, "locked")
	if err := os.Mkdir(locked, 0o755); err != nil {
		t.Fatal(err)
	}
	// Root ignores mode bits; the immutable attribute stops even root.
	if os.Geteuid() == 0 {
		if out, err := exec.Command("chattr", "+i", locked).CombinedOutput(); err != nil {
			t.Skipf("cannot make a directory immutable here (%v: %s)", err, out)
		}
		t.Cleanup(func() { _ = exec.Command("chattr", "-i", locked).Run() })
	} else if err := os.Chmod(locked, 0o555); err != nil {
		t.Fatal(err)
	}
	err := s.WriteFile(ctx, "locked/f", strings.NewReader("x"), 0o644, time.Now())
	if err == nil || errors.Is(err, lsync.ErrDisconnected) {
		t.Fatalf("want a per-path error, got %v", err)
	}
	if !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), locked) {
		t.Errorf("error should be a permission error naming %s: %v", locked, err)
	}
	if err := s.WriteFile(ctx, "ok", strings.NewReader("x"), 0o644, time.Now()); err != nil {
		t.Errorf("session unusable after a permission error: %v", err)
	}
}

func TestWalkSkipDirAndAbort(t *testing.T) {
	srv := sshdtest.Start(t)
	s, _ := connect(t, srv)
	ctx := testContext(t)
	for i := 0; i < 40; i++ {
		rel := fmt.Sprintf("d%02d/sub/f%d", i, i)
		if err := s.WriteFile(ctx, rel, strings.NewReader("x"), 0o644, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	var seen []string
	err := s.Walk(ctx, "", func(e lsync.Entry) error {
		seen = append(seen, e.Path)
		if e.Mode.IsDir() && strings.HasSuffix(e.Path, "/sub") && e.Path != "d00/sub" {
			return fs.SkipDir
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// d00 fully (3 entries), 39 other dirs with their skipped sub (2 each).
	if len(seen) != 3+39*2 || seen[0] != "d00" || seen[2] != "d00/sub/f0" {
		t.Errorf("walk with SkipDir saw %d entries: %v", len(seen), seen[:min(5, len(seen))])
	}
	stop := errors.New("enough")
	n := 0
	err = s.Walk(ctx, "", func(lsync.Entry) error {
		if n++; n == 5 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 5 {
		t.Errorf("aborted walk: %v after %d entries", err, n)
	}
}

func TestDiskFullIsPerPathError(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	srv := sshdtest.Start(t)
	root := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", root).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s)", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", root).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", root, err, out)
		}
	})
	c, err := newConnector(srv.TargetConfig("peer", root), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	s, err := c.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	err = s.WriteFile(ctx, "dir/big.bin", bytes.NewReader(make([]byte, 2<<20)), 0o644, time.Now())
	if err == nil {
		t.Fatal("a 2 MiB file fit in a 512 KiB filesystem")
	}
	if errors.Is(err, lsync.ErrDisconnected) {
		t.Fatalf("disk full must be a per-path error: %v", err)
	}
	if !strings.Contains(err.Error(), root+"/dir/big.bin") || !strings.Contains(err.Error(), "0 bytes") {
		t.Errorf("error should name the path and the free space: %v", err)
	}
	t.Logf("disk full error: %v", err)
	assertNoTemps(t, root)
	// The temp file was removed, so a small file fits again.
	if err := s.WriteFile(ctx, "dir/small", strings.NewReader("ok"), 0o644, time.Now()); err != nil {
		t.Errorf("after disk full: %v", err)
	}
}

// TestRequestCoalescerPacksWholeRequests feeds the coalescer the way
// pkg/sftp does (header, then payload; or a whole packet) while the
// channel is slow, and checks that requests queued meanwhile leave in one
// send, that no send splits a request, and that the stream is unchanged.
func TestRequestCoalescerPacksWholeRequests(t *testing.T) {
	pkt := func(body string) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
		return append(b, body...)
	}
	rec := &recordingWriter{release: make(chan struct{}), started: make(chan struct{}, 16)}
	w := newRequestCoalescer(rec, func() error { return nil })
	a, b, c := pkt("open-request"), pkt(strings.Repeat("d", 40_000)), pkt("x")
	write := func(p []byte) {
		t.Helper()
		if n, err := w.Write(p); err != nil || n != len(p) {
			t.Fatalf("Write(%d bytes) = %d, %v", len(p), n, err)
		}
	}
	write(a)
	<-rec.started // the first send is under way and held
	for _, st := range [][]byte{b[:17], b[17:30], b[30:], append(append([]byte{}, c...), a[:3]...)} {
		write(st)
	}
	close(rec.release)
	write(a[3:])
	want := slices.Concat(a, b, c, a)
	// Close drops what is still queued (its callers fail with the
	// connection), so wait for the sender to catch up first.
	deadline := time.Now().Add(5 * time.Second)
	for rec.size() < len(want) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var stream []byte
	for _, wr := range rec.writes {
		stream = append(stream, wr...)
		// Each send is a sequence of whole requests.
		for len(wr) > 0 {
			if len(wr) < 4 || int(binary.BigEndian.Uint32(wr))+4 > len(wr) {
				t.Fatalf("a send ends inside a request")
			}
			wr = wr[int(binary.BigEndian.Uint32(wr))+4:]
		}
	}
	if !bytes.Equal(stream, want) {
		t.Fatalf("stream of %d bytes differs from the %d bytes written", len(stream), len(want))
	}
	if len(rec.writes) < 2 || !bytes.Equal(rec.writes[1][:len(b)+len(c)], slices.Concat(b, c)) {
		t.Errorf("requests queued during a send did not leave together: %d sends", len(rec.writes))
	}
}

func TestRequestCoalescerReportsSendError(t *testing.T) {
	boom := errors.New("channel closed")
	w := newRequestCoalescer(failingWriter{boom}, func() error { return nil })
	defer w.Close()
	pkt := binary.BigEndian.AppendUint32(nil, 1)
	pkt = append(pkt, 'x')
	if _, err := w.Write(pkt); err != nil {
		t.Fatalf("first write: %v", err)
	}
	// The failure surfaces on a later write, never silently.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := w.Write(pkt)
		if errors.Is(err, boom) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes still succeed after the channel failed: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
}

type failingWriter struct{ err error }

func (f failingWriter) Write([]byte) (int, error) { return 0, f.err }

// recordingWriter holds its first write until release is closed.
type recordingWriter struct {
	mu      sync.Mutex
	writes  [][]byte
	started chan struct{}
	release chan struct{}
}

func (r *recordingWriter) Write(p []byte) (int, error) {
	r.started <- struct{}{}
	<-r.release
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes = append(r.writes, append([]byte(nil), p...))
	return len(p), nil
}

func (r *recordingWriter) size() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, w := range r.writes {
		n += len(w)
	}
	return n
}

// TestTempFileIsPrivateWhileWritten: over plain SFTP the temp file is
// made 0600 before its first byte, whatever the server's umask; only the
// rename publishes it with its final mode.
func TestTempFileIsPrivateWhileWritten(t *testing.T) {
	srv := sshdtest.Start(t)
	s, root := connect(t, srv)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- s.WriteFile(context.Background(), "public.html", pr, 0o644, time.Now())
	}()
	if _, err := pw.Write(bytes.Repeat([]byte("secret "), 10000)); err != nil {
		t.Fatal(err)
	}
	var tmp string
	deadline := time.Now().Add(10 * time.Second)
	for tmp == "" && time.Now().Before(deadline) {
		matches, _ := filepath.Glob(filepath.Join(root, lsync.TempPrefix+"*"))
		if len(matches) == 1 {
			tmp = matches[0]
		}
		time.Sleep(5 * time.Millisecond)
	}
	if tmp == "" {
		t.Fatal("no temp file while the upload is in progress")
	}
	fi, err := os.Stat(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("temp file %s is mode %v while being written: readable by others", tmp, fi.Mode().Perm())
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	fi, err = os.Stat(filepath.Join(root, "public.html"))
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("final file: %v %v", fi, err)
	}
}

// TestWriteFileSetsOwnerThroughHandle: asked for an owner (OwnerRequest),
// the SFTP session sets it, and the mode, through the open temp file
// before the rename, so that no chown by path follows the landing; a
// set-id bit survives the chown (the mode is set after it).
func TestWriteFileSetsOwnerThroughHandle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	srv := sshdtest.Start(t)
	s, root := connect(t, srv)
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		rel  string
		mode fs.FileMode
	}{{"plain.txt", 0o640}, {"bin/tool", 0o755 | fs.ModeSetuid | fs.ModeSetgid}} {
		req := &lsync.OwnerRequest{Owner: lsync.Owner{UID: 1234, GID: 2345}}
		ctx := lsync.WithOwner(testContext(t), req)
		if err := s.WriteFile(ctx, c.rel, strings.NewReader("x"), c.mode, mtime); err != nil {
			t.Fatal(err)
		}
		if !req.Done || req.Err != nil {
			t.Errorf("%s: request not marked done: %+v", c.rel, req)
		}
		fi, err := os.Lstat(filepath.Join(root, c.rel))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != 1234 || st.Gid != 2345 {
			t.Errorf("%s: owner %d:%d, want 1234:2345", c.rel, st.Uid, st.Gid)
		}
		if fi.Mode() != c.mode || !fi.ModTime().Equal(mtime) {
			t.Errorf("%s: mode %v mtime %v, want %v %v", c.rel, fi.Mode(), fi.ModTime(), c.mode, mtime)
		}
	}
	assertNoTemps(t, root)
}
