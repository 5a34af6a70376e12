package receiver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pipeConn runs a server on root in this process, connected by pipes.
func pipeConn(t *testing.T, root string, walkOnly bool) *Client {
	t.Helper()
	cr, sw := io.Pipe() // server → client
	sr, cw := io.Pipe() // client → server
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		var tweak func(*Root)
		if walkOnly {
			tweak = func(r *Root) { r.noOpenat2.Store(true) }
		}
		err := serve(ctx, sr, sw, root, nil, serveHooks{tweak: tweak})
		_ = sw.CloseWithError(io.EOF)
		served <- err
	}()
	got, err := Hello(cr, cw, Version)
	if err != nil {
		t.Fatal(err)
	}
	if got != root {
		t.Fatalf("hello: root %q, want %q", got, root)
	}
	c := NewClient(cr, cw, Version)
	t.Cleanup(func() {
		_ = cw.Close() // EOF: the server drains and returns
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
		<-c.Done()
		cancel()
	})
	return c
}

func modes(t *testing.T, f func(t *testing.T, walkOnly bool)) {
	t.Run("openat2", func(t *testing.T) { f(t, false) })
	t.Run("per-component", func(t *testing.T) { f(t, true) })
}

func TestRoundTrip(t *testing.T) {
	modes(t, func(t *testing.T, walkOnly bool) {
		root := t.TempDir()
		c := pipeConn(t, root, walkOnly)
		ctx := context.Background()
		mt := time.Date(2021, 2, 3, 4, 5, 6, 789, time.UTC)
		if err := c.Put(ctx, "a/b/c.txt", 0o640, mt, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		e, err := c.Stat(ctx, "a/b/c.txt")
		if err != nil || e.Size != 5 || e.Mode != 0o640 || !e.ModTime.Equal(mt) {
			t.Fatalf("stat: %+v %v", e, err)
		}
		if err := c.Mkdir(ctx, "a/d", fs.ModeSetgid|0o750|fs.ModeDir); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(filepath.Join(root, "a/d")); err != nil || fi.Mode() != fs.ModeDir|fs.ModeSetgid|0o750 {
			t.Fatalf("mkdir: %v %v", fi.Mode(), err)
		}
		if err := c.Symlink(ctx, "a/link", "../elsewhere"); err != nil {
			t.Fatal(err)
		}
		list, err := c.ReadDir(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, x := range list {
			names = append(names, x.Name)
			if x.Name == "link" && (x.Mode&fs.ModeSymlink == 0 || x.LinkTarget != "../elsewhere") {
				t.Errorf("link entry %+v", x)
			}
		}
		if strings.Join(names, ",") != "b,d,link" {
			t.Errorf("readdir: %v", names)
		}
		// A large file in chunks.
		big := bytes.Repeat([]byte("0123456789abcdef"), 3*maxChunk/16+7)
		h, err := c.Create(ctx, "big.bin")
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off < len(big); off += maxChunk {
			if err := c.Write(ctx, h, int64(off), big[off:min(off+maxChunk, len(big))]); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Commit(ctx, h, 0o600, mt); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(filepath.Join(root, "big.bin")); !bytes.Equal(got, big) {
			t.Fatal("big file content differs")
		}
		rh, size, err := c.Open(ctx, "big.bin")
		if err != nil || size != int64(len(big)) {
			t.Fatalf("open: %d %v", size, err)
		}
		var back []byte
		for {
			b, err := c.ReadAt(ctx, rh, int64(len(back)), maxChunk)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) == 0 {
				break
			}
			back = append(back, b...)
		}
		if !bytes.Equal(back, big) {
			t.Fatal("read back differs")
		}
		if err := c.CloseFile(ctx, rh); err != nil {
			t.Fatal(err)
		}
		if err := c.Chmod(ctx, "big.bin", 0o644); err != nil {
			t.Fatal(err)
		}
		if err := c.Chtimes(ctx, "a", mt); err != nil {
			t.Fatal(err)
		}
		if err := c.Lchown(ctx, "a/link", lsync.Owner{UID: 1234, GID: 5678}); err != nil {
			t.Fatal(err)
		}
		if e, _ := c.Stat(ctx, "a/link"); e.UID != 1234 || e.GID != 5678 {
			t.Errorf("lchown: %+v", e)
		}
		if err := c.Rename(ctx, "a/b", "x/y/b"); err != nil {
			t.Fatal(err)
		}
		if err := c.Rmdir(ctx, "x/y"); !errors.Is(err, unix.ENOTEMPTY) {
			t.Errorf("rmdir of a non-empty directory: %v", err)
		}
		if err := c.RemoveAll(ctx, "x"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Stat(ctx, "x"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("stat after removeall: %v", err)
		}
		// A file replaced by a directory and back.
		if err := c.Mkdir(ctx, "big.bin", fs.ModeDir|0o755); err != nil {
			t.Fatal(err)
		}
		if err := c.Put(ctx, "big.bin/inner", 0o644, mt, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Put(ctx, "big.bin", 0o644, mt, []byte("file again")); err != nil {
			t.Fatal(err)
		}
		// An unfinished write leaves no temp file once aborted.
		h, err = c.Create(ctx, "tmp-test")
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Abort(ctx, h); err != nil {
			t.Fatal(err)
		}
		entries, _ := os.ReadDir(root)
		for _, de := range entries {
			if strings.HasPrefix(de.Name(), lsync.TempPrefix) {
				t.Errorf("temp file left: %s", de.Name())
			}
		}
	})
}

// A connection cut in the middle of a chunked write leaves no temp file.
func TestUnfinishedWriteRemovedOnDisconnect(t *testing.T) {
	root := t.TempDir()
	cr, sw := io.Pipe()
	sr, cw := io.Pipe()
	served := make(chan error, 1)
	go func() {
		err := Serve(context.Background(), sr, sw, root, nil)
		_ = sw.Close()
		served <- err
	}()
	if _, err := Hello(cr, cw, Version); err != nil {
		t.Fatal(err)
	}
	c := NewClient(cr, cw, Version)
	ctx := context.Background()
	h, err := c.Create(ctx, "d/half")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, h, 0, []byte("partial")); err != nil {
		t.Fatal(err)
	}
	_ = cw.Close()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	<-c.Done()
	entries, _ := os.ReadDir(filepath.Join(root, "d"))
	if len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
}

func TestVersionMismatch(t *testing.T) {
	root := t.TempDir()
	cr, sw := io.Pipe()
	sr, cw := io.Pipe()
	served := make(chan error, 1)
	go func() {
		err := Serve(context.Background(), sr, sw, root, nil)
		_ = sw.Close()
		served <- err
	}()
	var e enc
	e.str(Magic)
	e.u32(Version + 1)
	go func() { _ = writeFrame(cw, typeHello, 0, e.b) }()
	typ, _, payload, err := readFrame(cr, nil)
	if err != nil || typ != typeHello {
		t.Fatalf("hello reply: %q %v", typ, err)
	}
	d := dec{b: payload}
	if d.str() != Magic || d.u32() != Version {
		t.Error("hello reply does not carry the server's version")
	}
	if err := <-served; err == nil || !strings.Contains(err.Error(), "version") {
		t.Errorf("serve with a mismatched client: %v", err)
	}
	_ = cw.Close()
}

func TestHostilePaths(t *testing.T) {
	modes(t, func(t *testing.T, walkOnly bool) {
		base := t.TempDir()
		root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
		lsynctest.WriteFile(t, outside, "victim.txt", "keep me", 0o644, time.Time{})
		lsynctest.WriteFile(t, outside, "sub/deep.txt", "me too", 0o600, time.Time{})
		lsynctest.WriteFile(t, root, "real/file.txt", "inside", 0o644, time.Time{})
		must(t, os.Symlink(outside, filepath.Join(root, "out")))                 // absolute, pointing out
		must(t, os.Symlink("../outside", filepath.Join(root, "rel-out")))        // relative, pointing out
		must(t, os.Symlink("real", filepath.Join(root, "in")))                   // pointing inside
		must(t, os.Symlink(outside+"/victim.txt", filepath.Join(root, "f-out"))) // a file pointing out
		must(t, os.Symlink(outside, filepath.Join(root, "real/nested-out")))     // a symlinked parent deeper down
		before := lsynctest.Snapshot(t, outside)
		c := pipeConn(t, root, walkOnly)
		ctx := context.Background()
		mt := time.Now()

		bad := []string{"..", "../outside/victim.txt", "/etc/passwd", outside + "/victim.txt", "real/../../outside/victim.txt",
			"real//file.txt", "./real/file.txt", "real/", "a\x00b", ""}
		for _, p := range bad {
			for name, err := range map[string]error{
				"put":       c.Put(ctx, p, 0o644, mt, []byte("x")),
				"mkdir":     c.Mkdir(ctx, p, 0o755),
				"chmod":     c.Chmod(ctx, p, 0o777),
				"chtimes":   c.Chtimes(ctx, p, mt),
				"removeall": c.RemoveAll(ctx, p),
				"symlink":   c.Symlink(ctx, p, "x"),
				"rename":    c.Rename(ctx, "real/file.txt", p),
			} {
				if !errors.Is(err, lsync.ErrRefused) {
					t.Errorf("%s %q: %v, want a refusal", name, p, err)
				}
			}
			if _, err := c.Stat(ctx, p); !errors.Is(err, lsync.ErrRefused) {
				t.Errorf("stat %q: %v", p, err)
			}
		}
		for _, dir := range []string{"out", "rel-out", "in", "real/nested-out"} {
			p := dir + "/victim.txt"
			if err := c.Put(ctx, p, 0o644, mt, []byte("pwned")); !errors.Is(err, lsync.ErrRefused) {
				t.Errorf("put %s: %v", p, err)
			}
			if err := c.Put(ctx, dir+"/new/x", 0o644, mt, []byte("pwned")); !errors.Is(err, lsync.ErrRefused) {
				t.Errorf("put %s/new/x: %v", dir, err)
			}
			if err := c.Mkdir(ctx, dir+"/newdir", 0o755); !errors.Is(err, lsync.ErrRefused) {
				t.Errorf("mkdir under %s: %v", dir, err)
			}
			if err := c.Symlink(ctx, dir+"/l", "/"); !errors.Is(err, lsync.ErrRefused) {
				t.Errorf("symlink under %s: %v", dir, err)
			}
			if err := c.Chmod(ctx, p, 0o777); !errors.Is(err, lsync.ErrRefused) || !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("chmod %s: %v", p, err)
			}
			if err := c.Chtimes(ctx, p, mt); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("chtimes %s: %v", p, err)
			}
			if err := c.Lchown(ctx, p, lsync.Owner{UID: 1, GID: 1}); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("chown %s: %v", p, err)
			}
			if err := c.RemoveAll(ctx, p); err != nil {
				t.Errorf("removeall %s: %v (nothing there inside the root)", p, err)
			}
			if err := c.RemoveAll(ctx, dir+"/sub"); err != nil {
				t.Errorf("removeall %s/sub: %v", dir, err)
			}
			if err := c.Rmdir(ctx, dir+"/sub"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("rmdir %s/sub: %v", dir, err)
			}
			if _, err := c.Stat(ctx, p); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("stat %s: %v", p, err)
			}
			if _, _, err := c.Open(ctx, p); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("open %s: %v", p, err)
			}
			if _, err := c.ReadDir(ctx, dir); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("readdir %s: %v", dir, err)
			}
			if err := c.Rename(ctx, p, "stolen"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("rename %s: %v", p, err)
			}
			if err := c.Rename(ctx, "real/file.txt", dir+"/moved"); !errors.Is(err, lsync.ErrRefused) {
				t.Errorf("rename into %s: %v", dir, err)
			}
		}
		// The final component being a symlink: metadata is refused, reads
		// see the link itself, writes replace the link.
		if err := c.Chmod(ctx, "f-out", 0o777); !errors.Is(err, lsync.ErrRefused) {
			t.Errorf("chmod of a symlink: %v", err)
		}
		if _, _, err := c.Open(ctx, "f-out"); !errors.Is(err, unix.ELOOP) {
			t.Errorf("open of a symlink: %v", err)
		}
		if err := c.Chtimes(ctx, "f-out", mt); err != nil { // the link's own times
			t.Errorf("chtimes of a symlink: %v", err)
		}
		if err := c.Put(ctx, "f-out", 0o644, mt, []byte("replaces the link")); err != nil {
			t.Errorf("put over a symlink: %v", err)
		}
		if err := c.RemoveAll(ctx, "out"); err != nil {
			t.Errorf("removeall of a symlink: %v", err)
		}
		if err := c.Mkdir(ctx, "rel-out", 0o755); err != nil { // replaces the link by a directory
			t.Errorf("mkdir over a symlink: %v", err)
		}
		if fi, err := os.Lstat(filepath.Join(root, "rel-out")); err != nil || !fi.IsDir() {
			t.Errorf("rel-out: %v %v", fi, err)
		}
		lsynctest.AssertSnapshotUnchanged(t, outside, before)
		if got, _ := os.ReadFile(filepath.Join(root, "real/file.txt")); string(got) != "inside" {
			t.Errorf("real/file.txt: %q", got)
		}
	})
}

// TestRenameExchangeRace swaps a directory of the root with a symlink to
// a victim directory outside, atomically and continuously, while every
// kind of write goes on below it. Nothing may ever land outside.
func TestRenameExchangeRace(t *testing.T) {
	modes(t, func(t *testing.T, walkOnly bool) {
		base := t.TempDir()
		root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
		for i := range 5 {
			lsynctest.WriteFile(t, outside, fmt.Sprintf("f%d", i), "victim", 0o644, time.Time{})
		}
		lsynctest.WriteFile(t, outside, "sub/deep", "victim", 0o600, time.Time{})
		lsynctest.WriteFile(t, root, "uploads/f0", "inside", 0o644, time.Time{})
		must(t, os.MkdirAll(filepath.Join(root, "uploads/sub"), 0o755))
		must(t, os.Symlink(outside, filepath.Join(root, ".swap")))
		before := lsynctest.Snapshot(t, outside)
		c := pipeConn(t, root, walkOnly)

		ctx, cancel := context.WithCancel(context.Background())
		var swaps atomic.Int64
		var wg sync.WaitGroup
		wg.Go(func() {
			a, b := filepath.Join(root, "uploads"), filepath.Join(root, ".swap")
			for ctx.Err() == nil {
				if err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE); err != nil {
					t.Errorf("renameat2: %v", err)
					return
				}
				swaps.Add(1)
			}
		})
		deadline := time.Now().Add(2 * time.Second)
		var ok, refused atomic.Int64
		var workers sync.WaitGroup
		for w := range 4 {
			workers.Go(func() {
				for i := 0; time.Now().Before(deadline); i++ {
					f := fmt.Sprintf("uploads/f%d", i%5)
					errs := []error{
						c.Put(ctx, f, 0o666, time.Unix(1, 0), []byte(fmt.Sprintf("pwned %d/%d", w, i))),
						c.Chmod(ctx, f, 0o777),
						c.Chtimes(ctx, f, time.Unix(2, 0)),
						c.Lchown(ctx, f, lsync.Owner{UID: 4242, GID: 4242}),
						c.Mkdir(ctx, "uploads/sub/new", 0o777),
						c.Symlink(ctx, "uploads/l", "/etc"),
						c.RemoveAll(ctx, "uploads/sub"),
						c.RemoveAll(ctx, fmt.Sprintf("uploads/f%d", (i+1)%5)),
						c.Rename(ctx, "uploads/f1", "uploads/f2"),
					}
					if h, err := c.Create(ctx, "uploads/big"); err == nil {
						_ = c.Write(ctx, h, 0, []byte("pwned"))
						errs = append(errs, c.Commit(ctx, h, 0o666, time.Unix(3, 0)))
					}
					for _, err := range errs {
						switch {
						case err == nil:
							ok.Add(1)
						case errors.Is(err, lsync.ErrRefused):
							refused.Add(1)
						}
					}
				}
			})
		}
		workers.Wait()
		cancel()
		wg.Wait()
		t.Logf("%d swaps, %d operations succeeded, %d refused", swaps.Load(), ok.Load(), refused.Load())
		if ok.Load() == 0 || swaps.Load() < 100 {
			t.Errorf("the race did not run: %d swaps, %d successes", swaps.Load(), ok.Load())
		}
		lsynctest.AssertSnapshotUnchanged(t, outside, before)
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestHelloReportsUnusableRoot(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no", "such", "root")
	cr, sw := io.Pipe()
	sr, cw := io.Pipe()
	served := make(chan error, 1)
	go func() {
		err := Serve(context.Background(), sr, sw, missing, nil)
		_ = sw.Close()
		served <- err
	}()
	_, err := Hello(cr, cw, Version)
	if err == nil || !strings.Contains(err.Error(), "cannot serve "+missing) {
		t.Errorf("hello with a missing root: %v", err)
	}
	if err := <-served; err == nil {
		t.Error("Serve with a missing root returned nil")
	}
	_ = cw.Close()
}

// Malformed requests get an error reply; the connection stays usable.
func TestMalformedRequests(t *testing.T) {
	root := t.TempDir()
	c := pipeConn(t, root, false)
	ctx := context.Background()
	for _, rq := range []struct {
		typ     byte
		payload []byte
	}{
		{opStat, nil},                        // truncated
		{opStat, []byte{0, 0, 0, 1, 'a', 9}}, // trailing bytes
		{'?', nil},                           // unknown type
		{opWrite, (&enc{b: []byte{0, 0, 0, 42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}}).b}, // no such handle
		{opCommit, []byte{0, 0, 0, 7, 0, 0, 1, 0xa4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
		{opRead, []byte{0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}},
	} {
		_, err := c.call(ctx, rq.typ, rq.payload)
		var re *Error
		if !errors.As(err, &re) || re.Errno != 0 {
			t.Errorf("request %q %v: %v, want a malformed-request error", rq.typ, rq.payload, err)
		}
	}
	if err := c.Put(ctx, "still/works", 0o644, time.Now(), []byte("ok")); err != nil {
		t.Fatal(err)
	}
}

// Serve returns when its context ends, even while the client is idle: it
// closes its input, which unblocks the read.
func TestServeStopsOnContext(t *testing.T) {
	cr, sw := io.Pipe()
	sr, cw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		err := Serve(ctx, sr, sw, t.TempDir(), nil)
		_ = sw.Close()
		served <- err
	}()
	if _, err := Hello(cr, cw, Version); err != nil {
		t.Fatal(err)
	}
	c := NewClient(cr, cw, Version)
	if err := c.Mkdir(ctx, "d", fs.ModeDir|0o755); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-served:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Serve after cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	<-c.Done()
	if err := c.Mkdir(context.Background(), "e", fs.ModeDir|0o755); !errors.Is(err, ErrClosed) {
		t.Errorf("request after the server stopped: %v", err)
	}
	_ = cw.Close()
}

// TestPutManyConfinedPerFile: a batch of small files lands each one like
// a put of its own: the ones that would leave the root or go through a
// symlink are refused, one by one, and the others land, with their modes
// and mtimes.
func TestPutManyConfinedPerFile(t *testing.T) {
	modes(t, func(t *testing.T, walkOnly bool) {
		base := t.TempDir()
		root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
		lsynctest.WriteFile(t, outside, "victim.txt", "keep me", 0o644, time.Time{})
		if err := os.MkdirAll(root, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
			t.Fatal(err)
		}
		before := lsynctest.Snapshot(t, outside)
		c := pipeConn(t, root, walkOnly)
		mtime := time.Unix(1_600_000_000, 123)
		errs, err := c.PutMany(t.Context(), []PutFile{
			{Rel: "a/one.txt", Mode: 0o640, MTime: mtime, Data: []byte("one")},
			{Rel: "../victim.txt", Mode: 0o644, MTime: mtime, Data: []byte("pwned")},
			{Rel: "link/victim.txt", Mode: 0o644, MTime: mtime, Data: []byte("pwned")},
			{Rel: "/abs.txt", Mode: 0o644, MTime: mtime, Data: []byte("pwned")},
			{Rel: "b/two.txt", Mode: 0o600, MTime: mtime, Data: nil},
		})
		if err != nil {
			t.Fatal(err)
		}
		for i, want := range []bool{true, false, false, false, true} {
			if (errs[i] == nil) != want {
				t.Errorf("file %d: err %v, want success=%v", i, errs[i], want)
			}
		}
		if !errors.Is(errs[2], lsync.ErrRefused) {
			t.Errorf("through the symlink: %v, want ErrRefused", errs[2])
		}
		lsynctest.AssertSnapshotUnchanged(t, outside, before)
		for rel, want := range map[string]string{"a/one.txt": "one", "b/two.txt": ""} {
			fi, err := os.Stat(filepath.Join(root, rel))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(filepath.Join(root, rel))
			if string(b) != want || !fi.ModTime().Equal(mtime) {
				t.Errorf("%s: %q %v", rel, b, fi.ModTime())
			}
		}
	})
}

// TestServesOlderClients: a version 1 client is served in version 1 by
// this receiver (its hello check expects its own version), and what
// version 2 added is refused to it.
func TestServesOlderClients(t *testing.T) {
	root := t.TempDir()
	cr, sw := io.Pipe()
	sr, cw := io.Pipe()
	served := make(chan error, 1)
	go func() {
		err := Serve(context.Background(), sr, sw, root, nil)
		_ = sw.Close()
		served <- err
	}()
	var e enc
	e.str(Magic)
	e.u32(1)
	if err := writeFrame(cw, typeHello, 0, e.b); err != nil {
		t.Fatal(err)
	}
	typ, _, payload, err := readFrame(cr, nil)
	if err != nil || typ != typeHello {
		t.Fatalf("hello reply: %q %v", typ, err)
	}
	d := dec{b: payload}
	if d.str() != Magic || d.u32() != 1 {
		t.Fatal("a version 1 client is not answered in version 1")
	}
	c := NewClient(cr, cw, Version)
	if err := c.Put(t.Context(), "v1.txt", 0o644, time.Now(), []byte("old client")); err != nil {
		t.Errorf("version 1 put: %v", err)
	}
	if _, err := c.PutMany(t.Context(), []PutFile{{Rel: "v2.txt", Data: []byte("x")}}); err == nil {
		t.Error("putmany served to a version 1 client")
	}
	_ = cw.Close()
	if err := <-served; err != nil {
		t.Errorf("serve: %v", err)
	}
	<-c.Done()
}

// TestHardLinkMetadataRefused: the peer's web user hard-links a file
// outside the root (same filesystem) into the docroot. A chmod or chown
// of that name would change the outside file (the mode and owner belong
// to the inode): both are refused, counted like a symlink on the way
// (lsync.ErrRefused), and the outside file keeps its mode, owner and
// times. Landing the source's file (temp file renamed over the name)
// replaces the name only and is how the name gets the source's mode.
func TestHardLinkMetadataRefused(t *testing.T) {
	modes(t, func(t *testing.T, walkOnly bool) {
		base := t.TempDir()
		root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
		old := time.Date(2015, 1, 2, 3, 4, 5, 0, time.UTC)
		lsynctest.WriteFile(t, outside, "secret", "outside content", 0o600, old)
		if err := os.Chown(filepath.Join(outside, "secret"), 1234, 1234); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(root, "uploads"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(filepath.Join(outside, "secret"), filepath.Join(root, "uploads/x.php")); err != nil {
			t.Fatal(err)
		}
		before := lsynctest.Snapshot(t, outside)
		c := pipeConn(t, root, walkOnly)
		ctx := context.Background()
		if err := c.Chmod(ctx, "uploads/x.php", 0o644); !errors.Is(err, lsync.ErrRefused) || !errors.Is(err, unix.EMLINK) {
			t.Errorf("chmod of a hard-linked file: %v, want a refusal (EMLINK)", err)
		}
		if err := c.Lchown(ctx, "uploads/x.php", lsync.Owner{UID: 33, GID: 33}); !errors.Is(err, lsync.ErrRefused) || !errors.Is(err, unix.EMLINK) {
			t.Errorf("chown of a hard-linked file: %v, want a refusal (EMLINK)", err)
		}
		lsynctest.AssertSnapshotUnchanged(t, outside, before)

		// The repair: the source's file lands over the name.
		if err := c.Put(ctx, "uploads/x.php", 0o644, old, []byte("outside content")); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, "uploads/x.php"), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&0o7777 != 0o644 || st.Nlink != 1 {
			t.Errorf("uploads/x.php after landing: mode %o, %d links; want 0644, 1", st.Mode&0o7777, st.Nlink)
		}
		// A name of its own again: metadata changes apply.
		if err := c.Chmod(ctx, "uploads/x.php", 0o640); err != nil {
			t.Errorf("chmod after landing: %v", err)
		}
		if err := c.Lchown(ctx, "uploads/x.php", lsync.Owner{UID: 33, GID: 33}); err != nil {
			t.Errorf("chown after landing: %v", err)
		}
		lsynctest.AssertSnapshotUnchanged(t, outside, before)
	})
}
