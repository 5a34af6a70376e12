package lsync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// Source is the tree a job pushes. All reads go through an os.Root or
// openat2 confined to the root, so a symlink is never followed out of it.
//
// The root is a name, not an inode: deploys swap the docroot for a new
// directory (rename away, rename in) or switch a `current` symlink to a
// new release. Refresh, called before every pass and batch, reopens the
// root when the name leads elsewhere, and reports ErrSourceMissing while it
// leads nowhere, so that a job never reads, or deletes on the strength
// of, a tree that was moved away.
type Source struct {
	Dir      string
	excluder *Excluder

	mu  sync.Mutex
	cur *rootHandle // nil while the root is missing
	// onChange, when set, hears that Refresh moved to another root (the
	// job tells its watcher, for changes inotify does not report, such as
	// a volume mounted over the root).
	onChange func()
}

// rootHandle is one opening of the root. It is reference-counted so that
// a walk in progress keeps reading the tree it started on while Refresh
// moves the Source on to the new one.
type rootHandle struct {
	root    *os.Root
	beneath *beneath // the same directory, for one-call opens
	id      os.FileInfo
	refs    atomic.Int64
}

func openRoot(dir string) (*rootHandle, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s", ErrSourceMissing, dir)
		}
		return nil, fmt.Errorf("source: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("source: %s is not a directory", dir)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	// Identity of what was opened, not of what the name meant a moment
	// before: a swap between the Stat and the open must not go unseen.
	id, err := root.Stat(".")
	if err != nil {
		_ = root.Close()
		return nil, fmt.Errorf("source: %w", err)
	}
	fast, err := openBeneath(dir)
	if err != nil {
		_ = root.Close()
		return nil, fmt.Errorf("source: %w", err)
	}
	h := &rootHandle{root: root, beneath: fast, id: id}
	h.refs.Store(1)
	return h, nil
}

func (h *rootHandle) release() {
	if h.refs.Add(-1) == 0 {
		_ = h.root.Close()
		_ = h.beneath.close()
	}
}

// OpenSource opens dir as a source tree. A missing dir is not an error:
// the Source then reports ErrSourceMissing until the root appears.
func OpenSource(dir string, excluder *Excluder) (*Source, error) {
	s := &Source{Dir: dir, excluder: excluder}
	if _, err := s.Refresh(); err != nil && !errors.Is(err, ErrSourceMissing) {
		return nil, err
	}
	return s, nil
}

// Refresh makes the Source follow its name: it reopens the root when the
// name now leads to another directory (changed is then true) and lets go
// of it when the name leads nowhere (ErrSourceMissing).
func (s *Source) Refresh() (changed bool, err error) {
	fi, serr := os.Stat(s.Dir)
	s.mu.Lock()
	cur := s.cur
	s.mu.Unlock()
	if serr == nil && cur != nil && os.SameFile(fi, cur.id) {
		return false, nil
	}
	h, err := openRoot(s.Dir)
	s.mu.Lock()
	old := s.cur
	s.cur = h // nil when missing: never read a tree that was moved away
	s.mu.Unlock()
	if old != nil {
		old.release()
	}
	changed = old != nil || h != nil
	if changed && s.onChange != nil {
		s.onChange()
	}
	return changed, err
}

// acquire returns the current root, which stays open until released.
func (s *Source) acquire() (*rootHandle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return nil, fmt.Errorf("%w: %s", ErrSourceMissing, s.Dir)
	}
	s.cur.refs.Add(1)
	return s.cur, nil
}

// checkRoot refreshes the root before a pass or batch. A missing root
// holds the job (ErrSourceMissing); a replaced one is followed.
func (s *Source) checkRoot() error {
	_, err := s.Refresh()
	return err
}

// Close releases the source root.
func (s *Source) Close() error {
	s.mu.Lock()
	h := s.cur
	s.cur = nil
	s.mu.Unlock()
	if h != nil {
		h.release()
	}
	return nil
}

// openFile opens the regular file rel for reading, never through a
// symlink (a symlink at rel or on the way fails with ELOOP). The file
// stays readable after the root moves on.
func (s *Source) openFile(rel string) (*os.File, error) {
	h, err := s.acquire()
	if err != nil {
		return nil, err
	}
	defer h.release()
	if f, ok, err := h.beneath.openFile(s.Dir, rel); ok {
		return f, err
	}
	return h.root.OpenFile(rel, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
}

// readWhole reads rel whole, expected to hold size bytes, without an
// os.File (see beneath.readWhole); ok is false where it cannot.
func (s *Source) readWhole(rel string, size int64) ([]byte, fileStat, bool, error) {
	h, err := s.acquire()
	if err != nil {
		return nil, fileStat{}, false, nil // the careful path reports it
	}
	defer h.release()
	return h.beneath.readWhole(s.Dir, rel, size)
}

// Lstat returns the source entry for rel, or nil when it does not exist
// (or is excluded).
//
// An entry below a symlinked directory does not exist in the tree (the
// walk never descends into a symlink), although os.Root would follow a
// symlink that stays inside the root: answering "present" would make a
// directory replaced by a symlink never delete its old content on the
// targets, and copy the link's target there under the old names.
func (s *Source) Lstat(rel string) (*Entry, error) {
	h, err := s.acquire()
	if err != nil {
		return nil, err
	}
	defer h.release()
	if dir := path.Dir(rel); dir != "." {
		real, ok := h.beneath.realDir(dir)
		if !ok {
			real = realDir(h.root, dir)
		}
		if !real {
			return nil, nil
		}
	}
	return s.entry(h.root, rel, rel)
}

// realDir is beneath.realDir without openat2: each ancestor is lstat'ed.
func realDir(root *os.Root, dir string) bool {
	for p := dir; p != "."; p = path.Dir(p) {
		fi, err := root.Lstat(p)
		if err != nil || !fi.IsDir() {
			return false
		}
	}
	return true
}

// lookup is what one resolution of dir, then name in it, found.
type lookup int

const (
	lookPresent lookup = iota // name is in dir, dir a real directory
	lookAbsent                // dir is a real directory without name
	lookNoDir                 // dir does not exist
	lookNotReal               // a symlink or non-directory on the way to dir
)

// notDeleted reports, for a path the source was found not to have, that
// this is no evidence of a deletion. Two-way mode asks before deleting
// the path on the peer:
//
//   - An ancestor is a symlink out of the root (absolute, or climbing
//     above it with ".."): what was below the directory the link now
//     stands for is not in this tree at all, so its absence says nothing
//     (a peer user exchanging uploads/ with a link to /tmp and back, or an
//     admin linking uploads/ to a mount, deleted nothing). A link to
//     elsewhere inside the root (assets -> v2) is the tree's own content
//     and keeps propagating the deletions that came with it.
//   - The path is there now: the absence was a moment of such a swap.
//
// The directory and the name are looked up in one resolution (beneath.look)
// so that a swap between two checks cannot make a hidden file look deleted.
func (s *Source) notDeleted(rel string) bool {
	h, err := s.acquire()
	if err != nil {
		return false
	}
	defer h.release()
	dir := path.Dir(rel)
	if dir == "." {
		return false
	}
	res, ok := h.beneath.look(dir, path.Base(rel))
	if !ok { // no openat2: each ancestor, then the name, by path
		switch {
		case !realDir(h.root, dir):
			res = lookNotReal
		case func() bool { _, err := h.root.Lstat(rel); return err == nil }():
			res = lookPresent
		default:
			res = lookAbsent
		}
	}
	switch res {
	case lookPresent:
		return true
	case lookAbsent, lookNoDir:
		return false // gone from a real directory, or with its directory
	}
	// A symlink or a file on the way: it hides rel unless it is a link
	// to elsewhere in the tree. None there now (swapped back meanwhile):
	// not known deleted either.
	inRootLink := false
	for p := dir; p != "."; p = path.Dir(p) {
		fi, err := h.root.Lstat(p)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			continue
		}
		target, err := h.root.Readlink(p)
		if err != nil || path.IsAbs(target) {
			return true
		}
		if j := path.Join(path.Dir(p), target); j == ".." || strings.HasPrefix(j, "../") {
			return true
		}
		inRootLink = true
	}
	return !inRootLink
}

// Empty reports whether the root holds no entry at all (excluded ones
// count as entries: the tree is there).
func (s *Source) Empty() (bool, error) {
	h, err := s.acquire()
	if err != nil {
		return false, err
	}
	defer h.release()
	f, err := h.root.Open(".")
	if err != nil {
		return false, err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return len(names) == 0, err
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
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.UID, e.GID, e.Owned = st.Uid, st.Gid, true
	}
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
	// Its directories are not watched: a pass that walks this way cannot
	// take its watch for its verification.
	passWatchFrom(ctx).spoil("the pass walked the source without watching it")
	h, err := s.acquire()
	if err != nil {
		return err
	}
	defer h.release()
	start := "."
	if sub != "" {
		e, err := s.entry(h.root, sub, sub)
		if err != nil || e == nil {
			return err
		}
		if !e.Mode.IsDir() {
			return fn(*e)
		}
		start = sub
	}
	dir, err := h.root.OpenRoot(start)
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
		if !e.Mode.IsDir() {
			if err := fn(*e); err != nil {
				return err
			}
			continue
		}
		// The lstat above saw a real directory; should it have been
		// swapped for a symlink since, os.Root still keeps the walk
		// inside the source root.
		child, err := dir.OpenRoot(name)
		if err == nil {
			var f *os.File
			if f, err = child.Open("."); err == nil {
				_ = f.Close()
			}
		}
		if err != nil && gone(err) {
			if child != nil {
				_ = child.Close()
			}
			continue
		}
		if err != nil {
			e.ListErr = err // unreadable: reported, its contents left alone
		}
		ferr := fn(*e)
		if ferr == nil && err == nil {
			ferr = s.walkDir(ctx, child, p, fn)
		}
		if child != nil {
			_ = child.Close()
		}
		if ferr != nil && !errors.Is(ferr, fs.SkipDir) {
			return ferr
		}
	}
	return nil
}

// gone reports an entry removed or replaced while the walk reached it.
func gone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}
