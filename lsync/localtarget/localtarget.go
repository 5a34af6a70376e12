// Package localtarget implements lsync.Target on a local directory (an NFS
// mount, a second disk, tests) with the same guarantees as the SFTP target:
// atomic landing (temp name, fsync, rename) and confinement under the root.
package localtarget

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockstep-ha/lockstep/internal/unixmode"
	"github.com/lockstep-ha/lockstep/lsync"
)

// Target is a local directory. Every operation goes through an os.Root, so
// that nothing can resolve outside the directory even if the tree changes
// underneath; in addition, writes refuse to traverse any symlinked parent
// (os.Root alone would allow symlinks that stay inside the root).
type Target struct {
	dir  string
	root *os.Root
	// rootFD anchors the descriptor-relative hot paths (parentFD), which
	// resolve a path in one openat per component instead of os.Root's
	// per-operation walk.
	rootFD int
	// unmarked: files land without the delivery mark (a one-way job's;
	// see SkipDeliveryMarks).
	unmarked atomic.Bool
}

// SkipDeliveryMarks lands the files of a one-way job without the
// delivery mark, which only a two-way node's merge reads.
func (t *Target) SkipDeliveryMarks(context.Context) error {
	t.unmarked.Store(true)
	return nil
}

var (
	_ lsync.Target           = (*Target)(nil)
	_ lsync.ProtocolReporter = (*Target)(nil)
)

// Protocol implements lsync.ProtocolReporter.
func (t *Target) Protocol() string { return "local" }

// Fallback implements lsync.ProtocolReporter.
func (t *Target) Fallback() string { return "" }

// Open opens the target rooted at dir, which must be an existing directory.
func Open(dir string) (*Target, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open target directory %s: %w", dir, err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("open target directory %s: %w", dir, err)
	}
	return &Target{dir: dir, root: root, rootFD: fd}, nil
}

// Dir returns the root directory.
func (t *Target) Dir() string { return t.dir }

// Close releases the root.
func (t *Target) Close() error {
	unix.Close(t.rootFD)
	return t.root.Close()
}

func (t *Target) clean(rel string) (string, error) {
	c, err := lsync.CleanRel(rel)
	if err != nil {
		return "", err
	}
	return c, nil
}

// noOpenat2 is set once openat2 turned out to be unavailable.
var noOpenat2 atomic.Bool

// parentFD opens the parent directory of rel one component at a time with
// O_NOFOLLOW, so that a write can never go through a symlinked (or
// swapped-in) parent, and returns it with rel's last component. With
// create, missing parents are created as real directories.
func (t *Target) parentFD(rel string, create bool) (int, string, error) {
	dir, base := path.Dir(rel), path.Base(rel)
	fd, err := unix.Openat(t.rootFD, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, "", &fs.PathError{Op: "open root", Path: t.dir, Err: err}
	}
	if dir == "." {
		return fd, base, nil
	}
	if !noOpenat2.Load() {
		// One syscall resolves the whole parent path and refuses any
		// symlink on the way (Linux >= 5.6).
		pfd, err := unix.Openat2(fd, dir, &unix.OpenHow{
			Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
		})
		switch err {
		case nil:
			unix.Close(fd)
			return pfd, base, nil
		case unix.ENOSYS, unix.EPERM: // old kernel, or a seccomp filter
			noOpenat2.Store(true)
		case unix.ENOENT:
			if !create {
				unix.Close(fd)
				return -1, "", &fs.PathError{Op: "open parent", Path: rel, Err: err}
			}
			// Fall through to the walk that creates what is missing.
		default:
			// ELOOP, ENOTDIR, EXDEV: the walk below names the component.
		}
	}
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	for _, comp := range strings.Split(dir, "/") {
		next, err := unix.Openat(fd, comp, flags, 0)
		if err == unix.ENOENT && create {
			if merr := unix.Mkdirat(fd, comp, 0o755); merr != nil && merr != unix.EEXIST {
				unix.Close(fd)
				return -1, "", &fs.PathError{Op: "mkdir", Path: rel, Err: merr}
			}
			next, err = unix.Openat(fd, comp, flags, 0)
		}
		unix.Close(fd)
		switch {
		case err == unix.ELOOP || err == unix.ENOTDIR:
			return -1, "", &fs.PathError{Op: "write", Path: rel, Err: fmt.Errorf("parent %q is a symlink or not a directory; refusing to write through it: %w", comp, lsync.ErrRefused)}
		case err != nil:
			return -1, "", &fs.PathError{Op: "open parent", Path: rel, Err: err}
		}
		fd = next
	}
	return fd, base, nil
}

// checkParents refuses paths whose parents include a symlink or a
// non-directory. Missing parents are fine.
func (t *Target) checkParents(rel string) error {
	fd, _, err := t.parentFD(rel, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	unix.Close(fd)
	return nil
}

func (t *Target) prepare(rel string) (string, error) {
	c, err := t.clean(rel)
	if err != nil {
		return "", err
	}
	if err := t.checkParents(c); err != nil {
		return "", err
	}
	return c, nil
}

func tempBase(base string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return lsync.TempPrefix + base + "-" + hex.EncodeToString(b[:])
}

// renameAt moves tmp over base in dir fd; a directory in the way (the
// source turned a directory into a file or link) is removed first.
func (t *Target) renameAt(fd int, tmp, base, rel string) error {
	err := unix.Renameat(fd, tmp, fd, base)
	if err == unix.EISDIR || err == unix.ENOTEMPTY || err == unix.EEXIST {
		if rerr := t.root.RemoveAll(rel); rerr != nil {
			return rerr
		}
		err = unix.Renameat(fd, tmp, fd, base)
	}
	if err != nil {
		return &fs.PathError{Op: "rename", Path: rel, Err: err}
	}
	return nil
}

// stillIs checks that base in dfd is what expect says (nil: absent).
func stillIs(dfd int, base, rel string, expect *lsync.Entry) error {
	var st unix.Stat_t
	var got *lsync.Entry
	switch err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); {
	case err == nil:
		e := lsync.Entry{Path: rel, Mode: unixmode.FromStat(st.Mode), Size: st.Size, ModTime: time.Unix(st.Mtim.Unix())}
		if e.Mode&fs.ModeSymlink != 0 {
			buf := make([]byte, 4096)
			n, err := unix.Readlinkat(dfd, base, buf)
			if err != nil {
				return &fs.PathError{Op: "readlink", Path: rel, Err: err}
			}
			e.LinkTarget = string(buf[:n])
		}
		got = &e
	case err != unix.ENOENT:
		return &fs.PathError{Op: "lstat", Path: rel, Err: err}
	}
	if !lsync.StillIs(got, expect) {
		return fmt.Errorf("%s: %w", rel, lsync.ErrChangedOnTarget)
	}
	return nil
}

func timespecs(mtime time.Time) []unix.Timespec {
	ts := unix.NsecToTimespec(mtime.UnixNano())
	return []unix.Timespec{ts, ts}
}

func entryFromInfo(rel string, fi fs.FileInfo) lsync.Entry {
	e := lsync.Entry{Path: rel, Mode: fi.Mode(), Size: fi.Size(), ModTime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.UID, e.GID, e.Owned = st.Uid, st.Gid, true
	}
	return e
}

// Walk visits every entry, parents before children, without following
// symlinks.
func (t *Target) Walk(ctx context.Context, sub string, fn func(lsync.Entry) error) error {
	start := "."
	if sub != "" {
		c, err := t.clean(sub)
		if err != nil {
			return err
		}
		e, err := t.Stat(ctx, c)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || err == nil && !e.Mode.IsDir() {
			return nil
		}
		if err != nil {
			return err
		}
		start = c
	}
	return fs.WalkDir(t.root.FS(), start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p != start && errors.Is(err, fs.ErrNotExist) {
				return nil // removed while we walked
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == start {
			return nil
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // vanished while walking
		}
		if err != nil {
			return err
		}
		e := entryFromInfo(p, fi)
		if fi.Mode()&fs.ModeSymlink != 0 {
			if e.LinkTarget, err = t.root.Readlink(p); err != nil {
				return err
			}
		}
		if d.IsDir() {
			// WalkDir would report an unreadable directory only after
			// fn saw it: look first, and leave it out.
			f, err := t.root.Open(p)
			if err == nil {
				_ = f.Close()
			} else if !errors.Is(err, fs.ErrNotExist) {
				e.ListErr = err
				if err := fn(e); err != nil && !errors.Is(err, fs.SkipDir) {
					return err
				}
				return fs.SkipDir
			}
		}
		return fn(e)
	})
}

// Stat returns the entry for rel without following a final symlink.
func (t *Target) Stat(_ context.Context, rel string) (lsync.Entry, error) {
	c, err := t.clean(rel)
	if err != nil {
		return lsync.Entry{}, err
	}
	// Below a symlink or a file there is nothing inside the tree (os.Root
	// would follow a symlink that stays inside the root, and fail with a
	// non-"not found" error on one that leaves it).
	if err := t.checkParents(c); err != nil {
		return lsync.Entry{}, &fs.PathError{Op: "lstat", Path: c, Err: fs.ErrNotExist}
	}
	fi, err := t.root.Lstat(c)
	if err != nil {
		return lsync.Entry{}, err
	}
	e := entryFromInfo(c, fi)
	if fi.Mode()&fs.ModeSymlink != 0 {
		if e.LinkTarget, err = t.root.Readlink(c); err != nil {
			return lsync.Entry{}, err
		}
	}
	return e, nil
}

func (t *Target) mkParents(rel string) error {
	if dir := path.Dir(rel); dir != "." {
		return t.root.MkdirAll(dir, 0o755)
	}
	return nil
}

// replace renames tmp over rel; a directory in the way (the source changed
// a directory into a file or link) is removed first.
func (t *Target) replace(tmp, rel string) error {
	err := t.root.Rename(tmp, rel)
	if err == nil {
		return nil
	}
	if fi, serr := t.root.Lstat(rel); serr == nil && fi.IsDir() {
		if rerr := t.root.RemoveAll(rel); rerr != nil {
			return rerr
		}
		return t.root.Rename(tmp, rel)
	}
	return err
}

// WriteFile lands r at rel atomically.
func (t *Target) WriteFile(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time) error {
	return t.writeFile(ctx, rel, r, mode, mtime, false, nil)
}

// WriteFileIf implements lsync.GuardedWriter: the path is looked at again
// right before the rename, through the same directory handle.
func (t *Target) WriteFileIf(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time, expect *lsync.Entry) error {
	return t.writeFile(ctx, rel, r, mode, mtime, true, expect)
}

func (t *Target) writeFile(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time, guard bool, expect *lsync.Entry) (err error) {
	c, err := t.clean(rel)
	if err != nil {
		return err
	}
	dfd, base, err := t.parentFD(c, true)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	tmp := tempBase(base)
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &fs.PathError{Op: "create", Path: c, Err: err}
	}
	f := os.NewFile(uintptr(fd), tmp)
	defer func() {
		if err != nil {
			_ = unix.Unlinkat(dfd, tmp, 0)
		}
	}()
	n, err := io.Copy(f, ctxReader{ctx, r})
	if err != nil {
		f.Close()
		return err
	}
	// A two-way node reads it to tell this delivery from its own files.
	if !t.unmarked.Load() {
		lsync.MarkDelivered(int(f.Fd()), c, n, mtime)
	}
	if err = f.Chmod(mode & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)); err != nil {
		f.Close()
		return err
	}
	if err = f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = unix.UtimesNanoAt(dfd, tmp, timespecs(mtime), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "chtimes", Path: c, Err: err}
	}
	if guard {
		if err = stillIs(dfd, base, c, expect); err != nil {
			return err
		}
		return t.swapIn(dfd, tmp, base, c, expect)
	}
	return t.renameAt(dfd, tmp, base, c)
}

// swapIn publishes tmp at base only if base still holds expect, with no
// window: an edit landing after the check above is captured by the
// atomic exchange itself and put back, never overwritten. Readers of base
// see the old or the new file, never none.
func (t *Target) swapIn(dfd int, tmp, base, rel string, expect *lsync.Entry) error {
	if expect == nil {
		err := unix.Renameat2(dfd, tmp, dfd, base, unix.RENAME_NOREPLACE)
		if err == unix.EEXIST {
			return fmt.Errorf("%s: %w", rel, lsync.ErrChangedOnTarget)
		}
		if err != nil {
			return &fs.PathError{Op: "rename", Path: rel, Err: err}
		}
		return nil
	}
	if expect.Mode.IsDir() || !expect.Mode.IsRegular() && expect.Mode&fs.ModeSymlink == 0 {
		return t.renameAt(dfd, tmp, base, rel) // a directory in the way: removed first, as before
	}
	var ours unix.Stat_t
	if err := unix.Fstatat(dfd, tmp, &ours, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "lstat", Path: rel, Err: err}
	}
	if err := unix.Renameat2(dfd, tmp, dfd, base, unix.RENAME_EXCHANGE); err != nil {
		if err == unix.ENOENT { // gone meanwhile: compared again
			return fmt.Errorf("%s: %w", rel, lsync.ErrChangedOnTarget)
		}
		return &fs.PathError{Op: "rename", Path: rel, Err: err}
	}
	// tmp now names what base held at the exchange.
	if stillIs(dfd, tmp, rel, expect) == nil {
		return unlinkQuiet(dfd, tmp)
	}
	// An edit landed in between: put it back, and take ours away.
	if err := unix.Renameat2(dfd, tmp, dfd, base, unix.RENAME_EXCHANGE); err != nil {
		// tmp holds that edit: out of the temp namespace, so that no
		// cleanup deletes it.
		_ = unix.Renameat(dfd, tmp, dfd, base+".sync-conflict-"+time.Now().UTC().Format("20060102-150405")+"-concurrent")
		return &fs.PathError{Op: "rename", Path: rel, Err: err}
	}
	var back unix.Stat_t
	if err := unix.Fstatat(dfd, tmp, &back, unix.AT_SYMLINK_NOFOLLOW); err == nil && back.Ino == ours.Ino && back.Dev == ours.Dev {
		_ = unlinkQuiet(dfd, tmp)
	} else {
		// Yet another write landed at base within microseconds: tmp holds
		// it now. Kept in plain sight rather than deleted.
		keep := base + ".sync-conflict-" + time.Now().UTC().Format("20060102-150405") + "-concurrent"
		_ = unix.Renameat(dfd, tmp, dfd, keep)
	}
	return fmt.Errorf("%s: %w", rel, lsync.ErrChangedOnTarget)
}

func unlinkQuiet(dfd int, name string) error {
	if err := unix.Unlinkat(dfd, name, 0); err != nil && err != unix.ENOENT {
		return &fs.PathError{Op: "unlink", Path: name, Err: err}
	}
	return nil
}

// ctxReader stops a long copy when the job is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Mkdir creates rel and missing parents, replacing a non-directory in the
// way, and sets its mode.
func (t *Target) Mkdir(_ context.Context, rel string, mode fs.FileMode) error {
	c, err := t.prepare(rel)
	if err != nil {
		return err
	}
	if fi, err := t.root.Lstat(c); err == nil && !fi.IsDir() {
		if err := t.root.Remove(c); err != nil {
			return err
		}
	}
	if err := t.root.MkdirAll(c, 0o755); err != nil {
		return err
	}
	return t.root.Chmod(c, mode.Perm()|mode&(fs.ModeSetgid|fs.ModeSticky))
}

// Symlink replaces rel by a symlink to linkTarget, atomically.
func (t *Target) Symlink(_ context.Context, rel, linkTarget string) error {
	c, err := t.clean(rel)
	if err != nil {
		return err
	}
	dfd, base, err := t.parentFD(c, true)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	tmp := tempBase(base)
	if err := unix.Symlinkat(linkTarget, dfd, tmp); err != nil {
		return &fs.PathError{Op: "symlink", Path: c, Err: err}
	}
	if err := t.renameAt(dfd, tmp, base, c); err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return err
	}
	return nil
}

// noSymlink refuses operations that would follow a final symlink.
func (t *Target) noSymlink(c string) error {
	fi, err := t.root.Lstat(c)
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return &fs.PathError{Op: "set attributes", Path: c, Err: errors.New("is a symlink")}
	}
	return nil
}

// attrTarget opens rel's parent and refuses a final symlink.
func (t *Target) attrTarget(rel string) (int, string, error) {
	return t.attrTargetOf(rel, false)
}

// attrTargetOf opens rel's parent; a final symlink is refused unless the
// caller acts on the link itself (AT_SYMLINK_NOFOLLOW), as a chown does.
func (t *Target) attrTargetOf(rel string, linkItself bool) (int, string, error) {
	c, err := t.clean(rel)
	if err != nil {
		return -1, "", err
	}
	dfd, base, err := t.parentFD(c, false)
	if err != nil {
		return -1, "", err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		unix.Close(dfd)
		return -1, "", &fs.PathError{Op: "stat", Path: c, Err: err}
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK && !linkItself {
		unix.Close(dfd)
		return -1, "", &fs.PathError{Op: "set attributes", Path: c, Err: errors.New("is a symlink")}
	}
	return dfd, base, nil
}

// Chtimes sets the mtime of rel.
func (t *Target) Chtimes(_ context.Context, rel string, mtime time.Time) error {
	dfd, base, err := t.attrTarget(rel)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.UtimesNanoAt(dfd, base, timespecs(mtime), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "chtimes", Path: rel, Err: err}
	}
	return nil
}

// Chmod sets the mode of rel.
func (t *Target) Chmod(_ context.Context, rel string, mode fs.FileMode) error {
	dfd, base, err := t.attrTarget(rel)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Fchmodat(dfd, base, unixmode.ToUnix(mode), 0); err != nil {
		return &fs.PathError{Op: "chmod", Path: rel, Err: err}
	}
	return nil
}

// Lchown sets the owner and group of rel (a symlink's own). The local
// target is on the source's host, where own's names stand for own's
// numbers: the numbers are used, whatever the owner mode.
func (t *Target) Lchown(_ context.Context, rel string, own lsync.Owner) error {
	uid, gid := own.UID, own.GID
	dfd, base, err := t.attrTargetOf(rel, true)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Fchownat(dfd, base, int(uid), int(gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "chown", Path: rel, Err: err}
	}
	return nil
}

// Rename moves from to to, replacing to (even a directory).
func (t *Target) Rename(_ context.Context, from, to string) error {
	f, err := t.prepare(from)
	if err != nil {
		return err
	}
	d, err := t.prepare(to)
	if err != nil {
		return err
	}
	if _, err := t.root.Lstat(f); err != nil {
		return err
	}
	if err := t.mkParents(d); err != nil {
		return err
	}
	return t.replace(f, d)
}

// RemoveAll removes rel recursively; a missing path is not an error.
func (t *Target) RemoveAll(_ context.Context, rel string) error {
	c, err := t.prepare(rel)
	if err != nil {
		return err
	}
	return t.root.RemoveAll(c)
}

// RemoveEmptyDir implements lsync.DirRemover: rmdir(2), which fails on a
// directory with entries.
func (t *Target) RemoveEmptyDir(_ context.Context, rel string) error {
	c, err := t.clean(rel)
	if err != nil {
		return err
	}
	dfd, base, err := t.parentFD(c, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Unlinkat(dfd, base, unix.AT_REMOVEDIR); err != nil && err != unix.ENOENT {
		return &fs.PathError{Op: "rmdir", Path: rel, Err: err}
	}
	return nil
}

// Open reads back a regular file.
func (t *Target) Open(_ context.Context, rel string) (io.ReadCloser, error) {
	c, err := t.prepare(rel)
	if err != nil {
		return nil, err
	}
	if err := t.noSymlink(c); err != nil {
		return nil, err
	}
	return t.root.Open(c)
}

// Connector dials a local directory target.
type Connector struct {
	cfg lsync.TargetConfig
}

// NewConnector returns a Connector for a target whose Host is empty.
func NewConnector(cfg lsync.TargetConfig) (*Connector, error) {
	if !cfg.IsLocal() {
		return nil, fmt.Errorf("target %q: host %q set; not a local target", cfg.Name, cfg.Host)
	}
	return &Connector{cfg: cfg}, nil
}

// Name is the target's configured name.
func (c *Connector) Name() string { return c.cfg.Name }

// Connect opens the directory. A missing directory (an unmounted NFS
// share) counts as a disconnected target so that the job retries with
// backoff instead of writing into the empty mount point's parent.
func (c *Connector) Connect(_ context.Context) (lsync.Target, error) {
	fi, err := os.Stat(c.cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w: %w", c.cfg.Name, lsync.ErrDisconnected, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("target %s: %s is not a directory", c.cfg.Name, c.cfg.Path)
	}
	t, err := Open(c.cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w: %w", c.cfg.Name, lsync.ErrDisconnected, err)
	}
	return t, nil
}

// ReadDir implements lsync.DirLister: the entries of rel ("" the root),
// sorted by name; a rel that is not a real directory inside the tree (a
// symlink included) has none.
func (t *Target) ReadDir(ctx context.Context, rel string) ([]lsync.Entry, error) {
	dir := "."
	if rel != "" {
		e, err := t.Stat(ctx, rel)
		if err != nil {
			return nil, err
		}
		if !e.Mode.IsDir() {
			return nil, &fs.PathError{Op: "readdir", Path: rel, Err: syscall.ENOTDIR}
		}
		dir = e.Path
	}
	des, err := fs.ReadDir(t.root.FS(), dir)
	if err != nil {
		return nil, err
	}
	out := make([]lsync.Entry, 0, len(des))
	for _, d := range des {
		p := d.Name()
		if rel != "" {
			p = dir + "/" + p
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // vanished meanwhile
		}
		if err != nil {
			return nil, err
		}
		e := entryFromInfo(p, fi)
		if fi.Mode()&fs.ModeSymlink != 0 {
			if e.LinkTarget, err = t.root.Readlink(p); err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				return nil, err
			}
		}
		out = append(out, e)
	}
	return out, nil
}
