package lsync

import (
	"context"
	"errors"
	"os"
	"slices"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
)

// dirFunc is called once per directory of a walkDirs with the
// directory's entries (sorted by name, excluded ones left out), or with
// listErr when it could not be listed. It returns the subdirectories
// (paths, among entries) to walk next.
type dirFunc func(dir string, entries []Entry, listErr error) (descend []string, err error)

// walkDirWorkers lists that many directories at once when only the
// source is read: a walk is mostly system calls, and a second core
// halves it when there is one.
const walkDirWorkers = 4

// walkDirs visits the source directory by directory, starting at the
// root (""), on up to workers goroutines: fn must be safe for
// concurrent use. Memory is
// one directory's listing per worker, whatever the tree's size.
//
// Each directory is opened by its whole path below the root with
// openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), so no symlink is ever
// followed, and its entries are lstat'ed relative to it; without openat2,
// os.Root does the same one component at a time.
func (s *Source) walkDirs(ctx context.Context, workers int, fn dirFunc) error {
	return s.walkDirsFrom(ctx, "", workers, fn)
}

// walkDirsFrom is walkDirs starting at the directory start ("" the root).
func (s *Source) walkDirsFrom(ctx context.Context, start string, workers int, fn dirFunc) error {
	h, err := s.acquire()
	if err != nil {
		return err
	}
	defer h.release()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(workers, 1))
	watch := passWatchFrom(ctx)
	var visit func(dir string) error
	visit = func(dir string) error {
		if err := gctx.Err(); err != nil {
			return err
		}
		entries, lerr := s.listDir(h, dir, watch)
		if lerr != nil && gone(lerr) {
			return nil // removed meanwhile: its parent's next pass sees it
		}
		descend, err := fn(dir, entries, lerr)
		if err != nil {
			return err
		}
		for _, d := range descend {
			if !g.TryGo(func() error { return visit(d) }) {
				if err := visit(d); err != nil {
					return err
				}
			}
		}
		return nil
	}
	g.Go(func() error { return visit(start) })
	return g.Wait()
}

// listDir returns the entries of dir, sorted by name; watch (nil: none)
// watches dir from before it is read.
func (s *Source) listDir(h *rootHandle, dir string, watch *passWatch) ([]Entry, error) {
	if entries, ok, err := listDirBeneath(h.beneath, dir, s.keep, watch); ok {
		return entries, err
	}
	watch.spoil("listed without openat2: " + dotIfRoot(dir))
	name := dir
	if name == "" {
		name = "."
	}
	r, err := h.root.OpenRoot(name)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	f, err := r.Open(".")
	if err != nil {
		return nil, err
	}
	names, err := f.Readdirnames(-1)
	_ = f.Close()
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	out := make([]Entry, 0, len(names))
	for _, n := range names {
		e, err := s.entry(r, n, joinRel(dir, n))
		if err != nil {
			if gone(err) {
				continue
			}
			return nil, err
		}
		if e != nil {
			out = append(out, *e)
		}
	}
	return out, nil
}

// keep reports whether an lstat'ed entry is listed: not when excluded
// or of a type that is not synced.
func (s *Source) keep(e *Entry) bool {
	if s.excluder.Excluded(e.Path, e.Mode.IsDir()) {
		return false
	}
	return e.Mode.IsDir() || e.Mode.IsRegular() || e.Mode&os.ModeSymlink != 0
}

// countEntries estimates the number of entries below the root, cheaply
// (names only; excluded ones counted too): the total of a progress bar.
func (s *Source) countEntries(ctx context.Context) (int64, error) {
	h, err := s.acquire()
	if err != nil {
		return 0, err
	}
	defer h.release()
	var total atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(2)
	var visit func(dir string) error
	visit = func(dir string) error {
		if err := gctx.Err(); err != nil {
			return err
		}
		n, subdirs, ok, err := countDirBeneath(h.beneath, dir)
		if !ok {
			return errors.ErrUnsupported
		}
		if err != nil {
			return nil // an estimate: what cannot be read is not counted
		}
		total.Add(int64(n))
		for _, d := range subdirs {
			if s.excluder.Excluded(d, true) {
				continue
			}
			if !g.TryGo(func() error { return visit(d) }) {
				if err := visit(d); err != nil {
					return err
				}
			}
		}
		return nil
	}
	g.Go(func() error { return visit("") })
	err = g.Wait()
	return total.Load(), err
}
