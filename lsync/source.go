package lsync

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"syscall"
)

// Source is the tree a job pushes. All reads go through an os.Root or
// openat2 confined to the root, so a symlink is never followed out of it.
type Source struct {
	Dir      string
	root     *os.Root
	beneath  *beneath // the same directory, for one-call opens
	excluder *Excluder
}

// OpenSource opens dir as a source tree.
func OpenSource(dir string, excluder *Excluder) (*Source, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("source: %s is not a directory", dir)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	fast, err := openBeneath(dir)
	if err != nil {
		_ = root.Close()
		return nil, fmt.Errorf("source: %w", err)
	}
	return &Source{Dir: dir, root: root, beneath: fast, excluder: excluder}, nil
}

// checkRoot refuses to work from a source root that was deleted or
// replaced (a remount, a `mv docroot docroot.old`): walking the stale
// directory would find it empty and delete the whole target.
func (s *Source) checkRoot() error {
	byPath, err := os.Stat(s.Dir)
	if err != nil {
		return fmt.Errorf("source root %s: %w; refusing to reconcile", s.Dir, err)
	}
	opened, err := s.root.Stat(".")
	if err != nil {
		return fmt.Errorf("source root %s: %w; refusing to reconcile", s.Dir, err)
	}
	if !os.SameFile(byPath, opened) {
		return fmt.Errorf("source root %s was replaced since the job started; refusing to reconcile (restart the job)", s.Dir)
	}
	return nil
}

// Close releases the source root.
func (s *Source) Close() error {
	return errors.Join(s.root.Close(), s.beneath.close())
}

// openFile opens the regular file rel for reading, never through a
// symlink (a symlink at rel or on the way fails with ELOOP).
func (s *Source) openFile(rel string) (*os.File, error) {
	if f, ok, err := s.beneath.openFile(s.Dir, rel); ok {
		return f, err
	}
	return s.root.OpenFile(rel, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
}

// Lstat returns the source entry for rel, or nil when it does not exist
// (or is excluded).
func (s *Source) Lstat(rel string) (*Entry, error) {
	return s.entry(s.root, rel, rel)
}

// entry lstats name inside dir, which holds the tree's path rel. It
// returns nil for a missing or excluded entry and for the file types that
// are not synced (sockets, fifos, devices).
func (s *Source) entry(dir *os.Root, name, rel string) (*Entry, error) {
	fi, err := dir.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if s.excluder.Excluded(rel, fi.IsDir()) {
		return nil, nil
	}
	e := &Entry{Path: rel, Mode: fi.Mode(), Size: fi.Size(), ModTime: fi.ModTime()}
	if fi.Mode()&fs.ModeSymlink != 0 {
		if e.LinkTarget, err = dir.Readlink(name); err != nil {
			return nil, err
		}
	}
	if !fi.IsDir() && !fi.Mode().IsRegular() && fi.Mode()&fs.ModeSymlink == 0 {
		return nil, nil
	}
	return e, nil
}

// Walk visits every non-excluded entry under sub ("" for the whole tree),
// parents before children, in lexical order.
//
// Each directory is opened once, below its parent's handle, and its
// entries are looked up by name in it: resolving every path from the
// root instead costs an open and a close per path component, which was
// most of the CPU of a pass over a 100k-file tree.
func (s *Source) Walk(ctx context.Context, sub string, fn func(Entry) error) error {
	start := "."
	if sub != "" {
		e, err := s.Lstat(sub)
		if err != nil || e == nil {
			return err
		}
		if !e.Mode.IsDir() {
			return fn(*e)
		}
		start = sub
	}
	dir, err := s.root.OpenRoot(start)
	if err != nil {
		if gone(err) {
			return nil
		}
		return err
	}
	defer dir.Close()
	return s.walkDir(ctx, dir, sub, fn)
}

func (s *Source) walkDir(ctx context.Context, dir *os.Root, rel string, fn func(Entry) error) error {
	f, err := dir.Open(".")
	if err != nil {
		if gone(err) {
			return nil
		}
		return err
	}
	names, err := f.Readdirnames(-1)
	_ = f.Close()
	if err != nil {
		if gone(err) {
			return nil
		}
		return err
	}
	slices.Sort(names)
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		p := name
		if rel != "" {
			p = rel + "/" + name
		}
		e, err := s.entry(dir, name, p)
		if err != nil || e == nil {
			if err != nil {
				return err
			}
			continue
		}
		if err := fn(*e); err != nil {
			return err
		}
		if !e.Mode.IsDir() {
			continue
		}
		// The lstat above saw a real directory; should it have been
		// swapped for a symlink since, os.Root still keeps the walk
		// inside the source root.
		child, err := dir.OpenRoot(name)
		if err != nil {
			if gone(err) {
				continue
			}
			return err
		}
		err = s.walkDir(ctx, child, p, fn)
		_ = child.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// gone reports an entry removed or replaced while the walk reached it.
func gone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}
