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
	"time"

	"github.com/lockstep-ha/lockstep/lsync"
)

// Target is a local directory. Every operation goes through an os.Root, so
// that nothing can resolve outside the directory even if the tree changes
// underneath; in addition, writes refuse to traverse any symlinked parent
// (os.Root alone would allow symlinks that stay inside the root).
type Target struct {
	dir  string
	root *os.Root
}

var _ lsync.Target = (*Target)(nil)

// Open opens the target rooted at dir, which must be an existing directory.
func Open(dir string) (*Target, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open target directory %s: %w", dir, err)
	}
	return &Target{dir: dir, root: root}, nil
}

// Dir returns the root directory.
func (t *Target) Dir() string { return t.dir }

// Close releases the root.
func (t *Target) Close() error { return t.root.Close() }

func (t *Target) clean(rel string) (string, error) {
	c, err := lsync.CleanRel(rel)
	if err != nil {
		return "", err
	}
	return c, nil
}

// checkParents refuses paths whose parents include a symlink or a
// non-directory. Missing parents are fine: they are created as real dirs.
func (t *Target) checkParents(rel string) error {
	dir := path.Dir(rel)
	if dir == "." {
		return nil
	}
	prefix := ""
	for _, comp := range splitPath(dir) {
		if prefix == "" {
			prefix = comp
		} else {
			prefix = prefix + "/" + comp
		}
		fi, err := t.root.Lstat(prefix)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return &fs.PathError{Op: "write", Path: rel, Err: fmt.Errorf("parent %s is a symlink; refusing to write through it", prefix)}
		}
		if !fi.IsDir() {
			return &fs.PathError{Op: "write", Path: rel, Err: fmt.Errorf("parent %s is not a directory", prefix)}
		}
	}
	return nil
}

func splitPath(p string) []string {
	var out []string
	for p != "." && p != "" && p != "/" {
		out = append([]string{path.Base(p)}, out...)
		p = path.Dir(p)
	}
	return out
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

func tempName(rel string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return path.Join(path.Dir(rel), lsync.TempPrefix+path.Base(rel)+"-"+hex.EncodeToString(b[:]))
}

func entryFromInfo(rel string, fi fs.FileInfo) lsync.Entry {
	return lsync.Entry{Path: rel, Mode: fi.Mode(), Size: fi.Size(), ModTime: fi.ModTime()}
}

// Walk visits every entry, parents before children, without following
// symlinks.
func (t *Target) Walk(ctx context.Context, fn func(lsync.Entry) error) error {
	return fs.WalkDir(t.root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == "." {
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
		return fn(e)
	})
}

// Stat returns the entry for rel without following a final symlink.
func (t *Target) Stat(_ context.Context, rel string) (lsync.Entry, error) {
	c, err := t.clean(rel)
	if err != nil {
		return lsync.Entry{}, err
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
func (t *Target) WriteFile(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time) (err error) {
	c, err := t.prepare(rel)
	if err != nil {
		return err
	}
	if err := t.mkParents(c); err != nil {
		return err
	}
	tmp := tempName(c)
	f, err := t.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = t.root.Remove(tmp)
		}
	}()
	if _, err = io.Copy(f, ctxReader{ctx, r}); err != nil {
		f.Close()
		return err
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
	if err = t.root.Chtimes(tmp, mtime, mtime); err != nil {
		return err
	}
	return t.replace(tmp, c)
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
	c, err := t.prepare(rel)
	if err != nil {
		return err
	}
	if err := t.mkParents(c); err != nil {
		return err
	}
	tmp := tempName(c)
	if err := t.root.Symlink(linkTarget, tmp); err != nil {
		return err
	}
	if err := t.replace(tmp, c); err != nil {
		_ = t.root.Remove(tmp)
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

// Chtimes sets the mtime of rel.
func (t *Target) Chtimes(_ context.Context, rel string, mtime time.Time) error {
	c, err := t.prepare(rel)
	if err != nil {
		return err
	}
	if err := t.noSymlink(c); err != nil {
		return err
	}
	return t.root.Chtimes(c, mtime, mtime)
}

// Chmod sets the mode of rel.
func (t *Target) Chmod(_ context.Context, rel string, mode fs.FileMode) error {
	c, err := t.prepare(rel)
	if err != nil {
		return err
	}
	if err := t.noSymlink(c); err != nil {
		return err
	}
	return t.root.Chmod(c, mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
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
