package localtarget

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockstep-ha/lockstep/lsync"
)

func open(t *testing.T) (*Target, string) {
	t.Helper()
	dir := t.TempDir()
	lt, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lt.Close() })
	return lt, dir
}

func TestConfinement(t *testing.T) {
	lt, dir := open(t)
	ctx := context.Background()
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub", filepath.Join(dir, "inner-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(rel string) error {
		return lt.WriteFile(ctx, rel, strings.NewReader("x"), 0o644, time.Now())
	}
	for _, rel := range []string{"escape/pwned", "inner-link/x", "../pwned", "/etc/pwned", "a/../../pwned"} {
		if err := write(rel); err == nil {
			t.Errorf("WriteFile(%q) succeeded", rel)
		}
		if err := lt.Mkdir(ctx, rel, 0o755); err == nil {
			t.Errorf("Mkdir(%q) succeeded", rel)
		}
		if err := lt.Symlink(ctx, rel, "/"); err == nil {
			t.Errorf("Symlink(%q) succeeded", rel)
		}
		if err := lt.RemoveAll(ctx, rel); err == nil && !strings.HasPrefix(rel, "escape") && !strings.HasPrefix(rel, "inner") {
			t.Errorf("RemoveAll(%q) succeeded", rel)
		}
	}
	if err := lt.Rename(ctx, "sub", "escape/moved"); err == nil {
		t.Error("Rename into a symlinked parent succeeded")
	}
	if err := lt.Chmod(ctx, "escape", 0o777); err == nil {
		t.Error("Chmod through a final symlink succeeded")
	}
	if err := lt.RemoveAll(ctx, "escape/x"); err == nil {
		t.Error("RemoveAll through a symlinked parent succeeded")
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("something was written outside the root: %v", entries)
	}
	// Removing the symlink itself is fine and leaves the outside alone.
	if err := lt.RemoveAll(ctx, "escape"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Fatal(err)
	}
}

func TestAtomicWriteAndTypeChanges(t *testing.T) {
	lt, dir := open(t)
	ctx := context.Background()
	mtime := time.Unix(1_600_000_000, 42)
	if err := lt.WriteFile(ctx, "a/b/file", strings.NewReader("content"), 0o640, mtime); err != nil {
		t.Fatal(err)
	}
	e, err := lt.Stat(ctx, "a/b/file")
	if err != nil || e.Size != 7 || e.Mode.Perm() != 0o640 || !e.ModTime.Equal(mtime) {
		t.Fatalf("stat after write: %+v %v", e, err)
	}
	// A failing reader leaves neither the final name nor a temp file.
	boom := errors.New("boom")
	if err := lt.WriteFile(ctx, "a/b/broken", io.MultiReader(strings.NewReader("half"), errReader{boom}), 0o644, mtime); !errors.Is(err, boom) {
		t.Fatalf("want boom, got %v", err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "a/b"))
	if len(entries) != 1 {
		t.Fatalf("leftovers after a failed write: %v", entries)
	}
	// A directory in the way of a file, a file in the way of a directory.
	if err := lt.WriteFile(ctx, "a", strings.NewReader("now a file"), 0o644, mtime); err != nil {
		t.Fatal(err)
	}
	if e, _ := lt.Stat(ctx, "a"); !e.Mode.IsRegular() {
		t.Fatalf("a is %v", e.Mode)
	}
	if err := lt.Mkdir(ctx, "a", 0o750); err != nil {
		t.Fatal(err)
	}
	if e, _ := lt.Stat(ctx, "a"); !e.Mode.IsDir() || e.Mode.Perm() != 0o750 {
		t.Fatalf("a is %v", e.Mode)
	}
	if err := lt.Symlink(ctx, "a", "/etc/passwd"); err != nil {
		t.Fatal(err)
	}
	if e, _ := lt.Stat(ctx, "a"); e.Mode&fs.ModeSymlink == 0 || e.LinkTarget != "/etc/passwd" {
		t.Fatalf("a is %+v", e)
	}
	if _, err := lt.Open(ctx, "a"); err == nil {
		t.Fatal("Open followed a symlink")
	}
	// Rename replaces, even a non-empty directory.
	if err := lt.WriteFile(ctx, "d1/x", strings.NewReader("1"), 0o644, mtime); err != nil {
		t.Fatal(err)
	}
	if err := lt.WriteFile(ctx, "d2/y", strings.NewReader("2"), 0o644, mtime); err != nil {
		t.Fatal(err)
	}
	if err := lt.Rename(ctx, "d1", "d2"); err != nil {
		t.Fatal(err)
	}
	if _, err := lt.Stat(ctx, "d2/x"); err != nil {
		t.Fatal(err)
	}
	if _, err := lt.Stat(ctx, "d2/y"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("old d2 content survived: %v", err)
	}
	var walked []string
	if err := lt.Walk(ctx, "", func(e lsync.Entry) error { walked = append(walked, e.Path); return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(walked, ",") != "a,d2,d2/x" {
		t.Fatalf("walk: %v", walked)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestConnector(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewConnector(lsync.TargetConfig{Name: "x", Host: "h", Path: dir}); err == nil {
		t.Fatal("remote config accepted")
	}
	c, err := NewConnector(lsync.TargetConfig{Name: "nfs", Path: filepath.Join(dir, "mnt")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Connect(context.Background()); !errors.Is(err, lsync.ErrDisconnected) {
		t.Fatalf("missing mount point: want ErrDisconnected, got %v", err)
	}
	if err := os.Mkdir(filepath.Join(dir, "mnt"), 0o755); err != nil {
		t.Fatal(err)
	}
	tg, err := c.Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tg.Close()
}

// TestWriteFileIfNeverOverwritesAnEditItDidNotSee: a two-way upload is
// decided against the target's version at comparison time; an edit that
// landed there since is not replaced.
func TestWriteFileIfNeverOverwritesAnEditItDidNotSee(t *testing.T) {
	lt, dir := open(t)
	ctx := context.Background()
	old := time.Unix(1_700_000_000, 0)
	if err := lt.WriteFile(ctx, "page.html", strings.NewReader("v1"), 0o644, old); err != nil {
		t.Fatal(err)
	}
	seen, err := lt.Stat(ctx, "page.html")
	if err != nil {
		t.Fatal(err)
	}
	// The peer's own edit lands after the comparison.
	if err := os.WriteFile(filepath.Join(dir, "page.html"), []byte("peer's edit"), 0o644); err != nil {
		t.Fatal(err)
	}
	err = lt.WriteFileIf(ctx, "page.html", strings.NewReader("mine"), 0o644, time.Now(), &seen)
	if !errors.Is(err, lsync.ErrChangedOnTarget) {
		t.Fatalf("want ErrChangedOnTarget, got %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "page.html")); string(b) != "peer's edit" {
		t.Fatalf("the peer's edit was overwritten: %q", b)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, lsync.TempPrefix+"*")); len(leftovers) != 0 {
		t.Fatalf("temp files left: %v", leftovers)
	}
	now, _ := lt.Stat(ctx, "page.html")
	if err := lt.WriteFileIf(ctx, "page.html", strings.NewReader("mine"), 0o644, time.Now(), &now); err != nil {
		t.Fatalf("unchanged since compared: %v", err)
	}
	if err := lt.WriteFileIf(ctx, "new.html", strings.NewReader("x"), 0o644, time.Now(), nil); err != nil {
		t.Fatalf("absent as expected: %v", err)
	}
	if err := lt.WriteFileIf(ctx, "new.html", strings.NewReader("y"), 0o644, time.Now(), nil); !errors.Is(err, lsync.ErrChangedOnTarget) {
		t.Fatalf("created meanwhile: want ErrChangedOnTarget, got %v", err)
	}
}

// TestSwapInPutsBackAnEditThatLandedAfterTheCheck: the edit lands between
// the last look and the publishing rename (swapIn is called directly, as
// if the check had passed): the exchange captures it and puts it back;
// ours is taken away and the caller is told to compare again.
func TestSwapInPutsBackAnEditThatLandedAfterTheCheck(t *testing.T) {
	dir := t.TempDir()
	c, err := NewConnector(lsync.TargetConfig{Name: "peer", Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	tg, err := c.Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	lt := tg.(*Target)
	seen := time.Unix(1_700_000_000, 0)
	for _, tc := range []struct {
		name    string
		current string // what is at the path when ours is published
		expect  *lsync.Entry
		want    string
		changed bool
	}{
		{"unchanged", "old", &lsync.Entry{Mode: 0o644, Size: 3, ModTime: seen}, "ours", false},
		{"edited since", "edited", &lsync.Entry{Mode: 0o644, Size: 3, ModTime: seen}, "edited", true},
		{"created since", "created", nil, "created", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, "f.txt")
			must := func(err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
			}
			must(os.WriteFile(p, []byte(tc.current), 0o644))
			must(os.Chtimes(p, seen, seen))
			tmp := lsync.TempPrefix + "f.txt-x"
			must(os.WriteFile(filepath.Join(dir, tmp), []byte("ours"), 0o644))
			dfd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY, 0)
			must(err)
			defer unix.Close(dfd)
			err = lt.swapIn(dfd, tmp, "f.txt", "f.txt", tc.expect)
			if got := errors.Is(err, lsync.ErrChangedOnTarget); got != tc.changed {
				t.Fatalf("swapIn: %v, want changed=%v", err, tc.changed)
			}
			if b, _ := os.ReadFile(p); string(b) != tc.want {
				t.Errorf("f.txt = %q, want %q", b, tc.want)
			}
			if _, err := os.Lstat(filepath.Join(dir, tmp)); err == nil {
				if tc.changed {
					os.Remove(filepath.Join(dir, tmp)) // the caller's cleanup
				} else {
					t.Error("the replaced version is left under the temp name")
				}
			}
		})
	}
}

// TestLchownSymlinkItself: a landed symlink gets the source link's owner
// on the link itself (it was refused as "is a symlink", so every symlink
// failed and was retried forever); the file it points at keeps its own.
func TestLchownSymlinkItself(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	lt, dir := open(t)
	ctx := context.Background()
	if err := os.WriteFile(filepath.Join(dir, "file"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := lt.Symlink(ctx, "link", "file"); err != nil {
		t.Fatal(err)
	}
	if err := lt.Lchown(ctx, "link", lsync.Owner{UID: 1234, GID: 2345}); err != nil {
		t.Fatalf("Lchown of a symlink: %v", err)
	}
	var link, file unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "link"), &link); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(filepath.Join(dir, "file"), &file); err != nil {
		t.Fatal(err)
	}
	if link.Uid != 1234 || link.Gid != 2345 {
		t.Errorf("link owner %d:%d, want 1234:2345", link.Uid, link.Gid)
	}
	if file.Uid != 0 || file.Gid != 0 {
		t.Errorf("the link's target was chowned to %d:%d", file.Uid, file.Gid)
	}
	// Chmod and Chtimes still refuse a final symlink: they would follow it.
	if err := lt.Chmod(ctx, "link", 0o600); err == nil {
		t.Error("Chmod through a final symlink succeeded")
	}
}
