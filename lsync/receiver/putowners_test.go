package receiver

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// TestPutManyOwners: in version 4 a putmany file and a mkdir carry their
// owner, mapped by name as a chown's is, and land with it; a file sent
// without one keeps the receiver's. Confinement is per file as before:
// a file through a symlink or out of the root is refused, with or
// without an owner, and nothing outside changes (owners included).
func TestPutManyOwners(t *testing.T) {
	needRoot(t)
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
		hooks := serveHooks{ids: peer}
		if walkOnly {
			hooks.tweak = func(r *Root) { r.noOpenat2.Store(true) }
		}
		c, err := hookedConn(t, root, hooks, Version)
		if err != nil {
			t.Fatal(err)
		}
		if !c.PutsOwners() {
			t.Fatalf("a version %d client does not send owners", c.Version())
		}
		ctx := context.Background()
		wd := &lsync.Owner{UID: 33, GID: 33, User: "www-data", Group: "www-data"}
		deploy := &lsync.Owner{UID: 1500, GID: 1501, User: "deploy"} // unknown there: the numbers
		res := c.MkdirOwned(ctx, "a", fs.ModeSetgid|0o750, wd)
		if res.Err != nil || !res.OwnerSet || res.OwnerErr != nil {
			t.Fatalf("mkdir with an owner: %+v", res)
		}
		if res := c.MkdirOwned(ctx, "link/evil", 0o755, wd); !errors.Is(res.Err, lsync.ErrRefused) {
			t.Errorf("mkdir through the symlink: %+v, want ErrRefused", res)
		}
		mtime := time.Unix(1_600_000_000, 42)
		results, err := c.PutManyOwned(ctx, []PutFile{
			{Rel: "a/one.txt", Mode: fs.ModeSetuid | 0o755, MTime: mtime, Data: []byte("one"), Owner: wd},
			{Rel: "a/two.txt", Mode: 0o640, MTime: mtime, Data: []byte("two"), Owner: deploy},
			{Rel: "link/victim.txt", Mode: 0o644, MTime: mtime, Data: []byte("pwned"), Owner: wd},
			{Rel: "../victim.txt", Mode: 0o644, MTime: mtime, Data: []byte("pwned"), Owner: wd},
			{Rel: "b/three.txt", Mode: 0o644, MTime: mtime, Data: []byte("three")},
		})
		if err != nil {
			t.Fatal(err)
		}
		for i, want := range []bool{true, true, false, false, true} {
			if (results[i].Err == nil) != want {
				t.Errorf("file %d: %+v, want success=%v", i, results[i], want)
			}
		}
		if !errors.Is(results[2].Err, lsync.ErrRefused) {
			t.Errorf("through the symlink: %v, want ErrRefused", results[2].Err)
		}
		if !results[0].OwnerSet || !results[1].OwnerSet || results[4].OwnerSet {
			t.Errorf("owner outcomes %+v %+v %+v: want set, set, not asked", results[0], results[1], results[4])
		}
		lsynctest.AssertSnapshotUnchanged(t, outside, before)
		for _, tc := range []struct {
			rel      string
			uid, gid uint32
			mode     uint32
		}{
			{"a", 4301, 4302, unix.S_IFDIR | 0o2750},
			{"a/one.txt", 4301, 4302, unix.S_IFREG | 0o4755}, // the chown came first: set-user-ID kept
			{"a/two.txt", 1500, 1501, unix.S_IFREG | 0o640},
			{"b/three.txt", 0, 0, unix.S_IFREG | 0o644},
		} {
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(root, tc.rel), &st); err != nil {
				t.Fatal(err)
			}
			if st.Uid != tc.uid || st.Gid != tc.gid || st.Mode != tc.mode {
				t.Errorf("%s: %d:%d mode %o, want %d:%d %o", tc.rel, st.Uid, st.Gid, st.Mode, tc.uid, tc.gid, tc.mode)
			}
		}
		if fi, err := os.Stat(filepath.Join(root, "a/one.txt")); err != nil || !fi.ModTime().Equal(mtime) {
			t.Errorf("a/one.txt: %v %v, want mtime %v", fi, err, mtime)
		}
	})
}

// TestPutManyOwnerNamesInvalid: a putmany or a mkdir with a name no user
// database holds is refused as malformed, before anything is written.
func TestPutManyOwnerNamesInvalid(t *testing.T) {
	root := t.TempDir()
	c, err := hookedConn(t, root, serveHooks{ids: peer}, Version)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	bad := &lsync.Owner{User: "root:x"}
	_, err = c.PutManyOwned(ctx, []PutFile{
		{Rel: "first.txt", Data: []byte("x")},
		{Rel: "second.txt", Data: []byte("x"), Owner: bad},
	})
	if !malformed(err) {
		t.Errorf("putmany with a bad owner name: %v, want it refused as malformed", err)
	}
	if res := c.MkdirOwned(ctx, "d", 0o755, bad); !malformed(res.Err) {
		t.Errorf("mkdir with a bad owner name: %+v, want it refused as malformed", res)
	}
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Errorf("a refused request left %v", entries)
	}
}

// TestOwnerOutcomeRoundTrip: an owner that could not be set (a peer
// user that may not chown) is reported with its errno next to a file or
// directory that landed.
func TestOwnerOutcomeRoundTrip(t *testing.T) {
	s := &server{}
	var e enc
	s.ownerOutcome(&e, &fs.PathError{Op: "chown", Path: "/srv/www/a", Err: unix.EPERM})
	s.ownerOutcome(&e, nil)
	d := dec{b: e.b}
	failed, ok := d.ownerOutcome(true), d.ownerOutcome(true)
	if err := d.done(); err != nil {
		t.Fatal(err)
	}
	if failed.Err != nil || failed.OwnerSet || !errors.Is(failed.OwnerErr, unix.EPERM) || !errors.Is(failed.OwnerErr, fs.ErrPermission) {
		t.Errorf("failed chown: %+v, want an EPERM owner error and no file error", failed)
	}
	if ok.Err != nil || ok.OwnerErr != nil || !ok.OwnerSet {
		t.Errorf("chown done: %+v", ok)
	}
}

// TestOwnersVersionFallback: a version 4 client before a version 3
// receiver says hello again in version 3, and then sends putmany files
// and mkdirs without owners (the receiver's owner stays, the caller
// chowns); a version 3 client before this receiver is served its own
// putmany and mkdir (no owner byte), and lands its files.
func TestOwnersVersionFallback(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	wd := &lsync.Owner{UID: 33, GID: 34, User: "www-data", Group: "www-data"}
	t.Run("v4 client, v3 receiver", func(t *testing.T) {
		root := t.TempDir()
		old := serveHooks{ids: peer, version: 3}
		_, err := hookedConn(t, root, old, Version)
		var ve *VersionError
		if !errors.As(err, &ve) || ve.Server != 3 || !ve.Older() {
			t.Fatalf("hello v%d to a v3 receiver: %v, want a VersionError from an older server", Version, err)
		}
		c, err := hookedConn(t, root, old, ve.Server)
		if err != nil {
			t.Fatal(err)
		}
		if c.PutsOwners() || !c.MapsOwnerNames() {
			t.Fatalf("a v3 conversation: puts owners %v, maps names %v", c.PutsOwners(), c.MapsOwnerNames())
		}
		if res := c.MkdirOwned(ctx, "d", 0o755, wd); res.Err != nil || res.OwnerSet || res.OwnerErr != nil {
			t.Fatalf("mkdir in v3: %+v, want done without an owner", res)
		}
		res, err := c.PutManyOwned(ctx, []PutFile{{Rel: "d/f", Mode: 0o644, MTime: timeZero, Data: []byte("x"), Owner: wd}})
		if err != nil || res[0].Err != nil || res[0].OwnerSet {
			t.Fatalf("putmany in v3: %+v %v, want landed without an owner", res, err)
		}
		for _, rel := range []string{"d", "d/f"} {
			if uid, gid := ownerOf(t, filepath.Join(root, rel)); uid != 0 || gid != 0 {
				t.Errorf("%s: owner %d:%d, want the receiver's 0:0", rel, uid, gid)
			}
		}
		// The caller's chown by path, as before version 4.
		if err := c.Lchown(ctx, "d/f", *wd); err != nil {
			t.Fatal(err)
		}
		if uid, gid := ownerOf(t, filepath.Join(root, "d/f")); uid != 4301 || gid != 4302 {
			t.Errorf("after the chown: %d:%d, want 4301:4302", uid, gid)
		}
	})
	t.Run("v3 client, v4 receiver", func(t *testing.T) {
		root := t.TempDir()
		c, err := hookedConn(t, root, serveHooks{ids: peer}, 3)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Mkdir(ctx, "d", 0o750); err != nil {
			t.Fatal(err)
		}
		errs, err := c.PutMany(ctx, []PutFile{{Rel: "d/f", Mode: 0o600, MTime: timeZero, Data: []byte("v3")}, {Rel: "link/../../x", Data: []byte("x")}})
		if err != nil || errs[0] != nil || errs[1] == nil {
			t.Fatalf("putmany from a v3 client: %v %v", errs, err)
		}
		if b, err := os.ReadFile(filepath.Join(root, "d/f")); err != nil || string(b) != "v3" {
			t.Errorf("d/f: %q %v", b, err)
		}
		if fi, err := os.Stat(filepath.Join(root, "d")); err != nil || fi.Mode().Perm() != 0o750 {
			t.Errorf("d: %v %v", fi, err)
		}
	})
}

// TestPutManyThenDirTime: a version 4 putmany sets its directory's mtime
// after its files (which would otherwise have moved it), confined like a
// chtimes of its own: a directory through a symlink is refused and the
// files' outcomes stand. Before a version 3 receiver it is not sent.
func TestPutManyThenDirTime(t *testing.T) {
	modes(t, func(t *testing.T, walkOnly bool) {
		base := t.TempDir()
		root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
		if err := os.MkdirAll(filepath.Join(outside, "d"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(root, "d"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
			t.Fatal(err)
		}
		before := lsynctest.Snapshot(t, outside)
		c := pipeConn(t, root, walkOnly)
		ctx := context.Background()
		dirTime := time.Unix(1_500_000_000, 7)
		res, done, err := c.PutManyThen(ctx, []PutFile{
			{Rel: "d/a", Mode: 0o644, MTime: timeZero, Data: []byte("a")},
			{Rel: "d/b", Mode: 0o644, MTime: timeZero, Data: []byte("b")},
		}, &DirTime{Rel: "d", MTime: dirTime})
		if err != nil || !done || res[0].Err != nil || res[1].Err != nil {
			t.Fatalf("putmany then chtimes: %+v %v %v", res, done, err)
		}
		if fi, err := os.Stat(filepath.Join(root, "d")); err != nil || !fi.ModTime().Equal(dirTime) {
			t.Errorf("d after its files: %v %v, want mtime %v", fi.ModTime(), err, dirTime)
		}
		res, done, err = c.PutManyThen(ctx, []PutFile{{Rel: "d/c", Data: []byte("c")}}, &DirTime{Rel: "link/d", MTime: dirTime})
		var te *ThenError
		if !done || !errors.As(err, &te) || res == nil || res[0].Err != nil {
			t.Fatalf("a directory through a symlink: %+v %v %v, want the file landed and the chtimes failed", res, done, err)
		}
		if !errors.Is(err, lsync.ErrRefused) {
			t.Errorf("through the symlink: %v, want a refusal", err)
		}
		lsynctest.AssertSnapshotUnchanged(t, outside, before)
	})
	t.Run("v3 receiver", func(t *testing.T) {
		root := t.TempDir()
		c, err := hookedConn(t, root, serveHooks{version: 3}, 3)
		if err != nil {
			t.Fatal(err)
		}
		res, done, err := c.PutManyThen(context.Background(), []PutFile{{Rel: "d/a", Data: []byte("a")}}, &DirTime{Rel: "d", MTime: timeZero})
		if err != nil || done || res[0].Err != nil {
			t.Fatalf("before a v3 receiver: %+v %v %v, want the files only", res, done, err)
		}
	})
}

// TestPutManyDirectories: in version 4 a putmany entry with a directory
// mode is a mkdir (owner included), in its place in the order, so that a
// file after it can land inside; confined like a mkdir (through a
// symlink: refused); with content, or from a version 3 client, the
// request is refused as malformed.
func TestPutManyDirectories(t *testing.T) {
	needRoot(t)
	modes(t, func(t *testing.T, walkOnly bool) {
		base := t.TempDir()
		root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
		if err := os.MkdirAll(outside, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(root, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
			t.Fatal(err)
		}
		before := lsynctest.Snapshot(t, outside)
		hooks := serveHooks{ids: peer}
		if walkOnly {
			hooks.tweak = func(r *Root) { r.noOpenat2.Store(true) }
		}
		c, err := hookedConn(t, root, hooks, Version)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		wd := &lsync.Owner{UID: 33, GID: 33, User: "www-data", Group: "www-data"}
		res, done, err := c.PutManyThen(ctx, []PutFile{
			{Rel: "d", Mode: fs.ModeDir | 0o750, Owner: wd},
			{Rel: "link/evil", Mode: fs.ModeDir | 0o755, Owner: wd},
			{Rel: "d/f", Mode: 0o644, MTime: timeZero, Data: []byte("f"), Owner: wd},
		}, &DirTime{Rel: "d", MTime: timeZero})
		if err != nil || !done {
			t.Fatal(err, done)
		}
		if res[0].Err != nil || !res[0].OwnerSet || res[2].Err != nil || !errors.Is(res[1].Err, lsync.ErrRefused) {
			t.Errorf("results %+v", res)
		}
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, "d"), &st); err != nil || st.Mode != unix.S_IFDIR|0o750 || st.Uid != 4301 || st.Gid != 4302 {
			t.Errorf("d: mode %o %d:%d %v", st.Mode, st.Uid, st.Gid, err)
		}
		if fi, err := os.Stat(filepath.Join(root, "d")); err != nil || !fi.ModTime().Equal(timeZero) {
			t.Errorf("d's mtime after its entries: %v %v", fi, err)
		}
		lsynctest.AssertSnapshotUnchanged(t, outside, before)
		if _, err := c.PutManyOwned(ctx, []PutFile{{Rel: "e", Mode: fs.ModeDir | 0o755, Data: []byte("x")}}); err == nil {
			t.Error("a directory with content was sent")
		}
		// What a client would send: refused as a whole.
		var e enc
		e.u32(1)
		e.str("e")
		e.u32(uint32(fs.ModeDir | 0o755))
		e.time(timeZero)
		e.bytes([]byte("x"))
		e.owner(nil)
		e.u8(0)
		if _, err := c.call(ctx, opPutMany, e.b); !malformed(err) {
			t.Errorf("a directory with content: %v, want it refused as malformed", err)
		}
		if _, err := os.Lstat(filepath.Join(root, "e")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("e: %v, want nothing made", err)
		}
	})
	t.Run("v3 client", func(t *testing.T) {
		root := t.TempDir()
		c, err := hookedConn(t, root, serveHooks{}, 3)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.PutMany(context.Background(), []PutFile{{Rel: "d", Mode: fs.ModeDir | 0o755}}); err == nil {
			t.Error("a v3 client sent a directory in a putmany")
		}
		var e enc
		e.u32(1)
		e.str("d")
		e.u32(uint32(fs.ModeDir | 0o755))
		e.time(timeZero)
		e.bytes(nil)
		if _, err := c.call(context.Background(), opPutMany, e.b); !malformed(err) {
			t.Errorf("a directory in a v3 putmany: %v, want it refused as malformed", err)
		}
	})
}
