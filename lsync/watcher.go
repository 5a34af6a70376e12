package lsync

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/fsnotify/fsnotify"
)

// EventOp is what happened to a path, reduced to what the batcher needs.
type EventOp uint8

const (
	OpCreate EventOp = iota + 1
	OpWrite
	OpRemove
	OpRename // the path was renamed away (the new name arrives as OpCreate)
	OpChmod
)

func (o EventOp) String() string {
	switch o {
	case OpCreate:
		return "create"
	case OpWrite:
		return "write"
	case OpRemove:
		return "remove"
	case OpRename:
		return "rename"
	case OpChmod:
		return "chmod"
	}
	return "op(" + strconv.Itoa(int(o)) + ")"
}

// Event is one change under the source root. Inode is set for directories
// so that the batcher can pair a rename's old and new names.
type Event struct {
	Path  string
	Op    EventOp
	IsDir bool
	Inode uint64
}

// WatchLimitError means inotify ran out of watches: part of the tree would
// go unwatched, which this daemon refuses to do silently.
type WatchLimitError struct {
	Dir     string
	Current int // fs.inotify.max_user_watches, -1 if unreadable
	Needed  int // directories under the source root
}

func (e *WatchLimitError) Error() string {
	cur := "unknown"
	if e.Current >= 0 {
		cur = strconv.Itoa(e.Current)
	}
	return fmt.Sprintf("cannot watch %s: inotify watch limit reached (fs.inotify.max_user_watches = %s; this job alone needs %d watches, one per directory, plus those of other processes); raise it, e.g. sysctl -w fs.inotify.max_user_watches=%d",
		e.Dir, cur, e.Needed, max(e.Needed*2, 524288))
}

// sink receives watcher output; the batcher implements it.
type sink interface {
	event(ctx context.Context, ev Event)
	rescan(ctx context.Context, reason string)
}

// Watcher watches a tree recursively: one inotify watch per directory,
// including directories created later.
type Watcher struct {
	root     string
	excluder *Excluder
	logger   *slog.Logger
	fsw      *fsnotify.Watcher
	// dirs maps every watched directory (relative, "" for the root) to its
	// inode, to recognise a directory rename and to drop watches below a
	// directory that moved or vanished.
	dirs map[string]uint64
	// addWatch is fsw.Add, replaceable in tests to simulate ENOSPC.
	addWatch func(string) error
}

// NewWatcher sets up watches for every directory under root.
func NewWatcher(root string, excluder *Excluder, logger *slog.Logger) (*Watcher, error) {
	fsw, err := fsnotify.NewBufferedWatcher(8192)
	if err != nil {
		if errors.Is(err, syscall.EMFILE) {
			return nil, fmt.Errorf("inotify: too many instances (raise fs.inotify.max_user_instances): %w", err)
		}
		return nil, fmt.Errorf("inotify: %w", err)
	}
	w := &Watcher{root: root, excluder: excluder, logger: logger, fsw: fsw, dirs: map[string]uint64{}}
	w.addWatch = fsw.Add
	if err := w.addTree(context.Background(), "", nil); err != nil {
		fsw.Close()
		return nil, err
	}
	return w, nil
}

// Close releases the inotify instance.
func (w *Watcher) Close() error { return w.fsw.Close() }

// WatchedDirs returns how many directories are watched.
func (w *Watcher) WatchedDirs() int { return len(w.dirs) }

func (w *Watcher) abs(rel string) string {
	if rel == "" {
		return w.root
	}
	return filepath.Join(w.root, filepath.FromSlash(rel))
}

func inodeOf(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// addTree watches rel and every directory below it. When emit is not nil,
// every entry found is reported as created: files written into a new
// directory before its watch existed would otherwise be missed.
func (w *Watcher) addTree(ctx context.Context, rel string, emit sink) error {
	return filepath.WalkDir(w.abs(rel), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // vanished meanwhile; its removal event follows
			}
			return err
		}
		r, err := filepath.Rel(w.root, p)
		if err != nil {
			return err
		}
		r = filepath.ToSlash(r)
		if r == "." {
			r = ""
		}
		if r != "" && w.excluder.Excluded(r, d.IsDir()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.IsDir() {
			if emit != nil {
				emit.event(ctx, Event{Path: r, Op: OpCreate})
			}
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return filepath.SkipDir
			}
			return err
		}
		if err := w.addWatch(p); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return filepath.SkipDir
			}
			if errors.Is(err, syscall.ENOSPC) {
				return &WatchLimitError{Dir: p, Current: readWatchLimit(), Needed: countDirs(w.root, w.excluder)}
			}
			return fmt.Errorf("watch %s: %w", p, err)
		}
		w.dirs[r] = inodeOf(fi)
		if emit != nil && r != rel {
			emit.event(ctx, Event{Path: r, Op: OpCreate, IsDir: true, Inode: inodeOf(fi)})
		}
		return nil
	})
}

func readWatchLimit() int {
	b, err := os.ReadFile("/proc/sys/fs/inotify/max_user_watches")
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return n
}

func countDirs(root string, ex *Excluder) int {
	n := 0
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if r, _ := filepath.Rel(root, p); r != "." && ex.Excluded(filepath.ToSlash(r), true) {
			return filepath.SkipDir
		}
		n++
		return nil
	})
	return n
}

// dropTree forgets rel and the directories below it. The kernel removes
// the watch of a deleted directory by itself, but a moved directory keeps
// its watches, which would then report events under the old names.
func (w *Watcher) dropTree(rel string) {
	for d := range w.dirs {
		if d == rel || strings.HasPrefix(d, rel+"/") {
			delete(w.dirs, d)
			_ = w.fsw.Remove(w.abs(d)) // may already be gone
		}
	}
}

// Run forwards events to out until ctx is done. A non-nil return is
// fatal for the job (a watch could not be added).
func (w *Watcher) Run(ctx context.Context, out sink) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return nil
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				// Events were lost: resynchronise instead of restarting.
				w.logger.Warn("inotify queue overflow; rescanning", "root", w.root)
				if err := w.addTree(ctx, "", nil); err != nil {
					return err
				}
				out.rescan(ctx, "inotify overflow")
				continue
			}
			w.logger.Warn("watcher error", "err", err)
		case fe, ok := <-w.fsw.Events:
			if !ok {
				return nil
			}
			if err := w.handle(ctx, fe, out); err != nil {
				return err
			}
		}
	}
}

func (w *Watcher) handle(ctx context.Context, fe fsnotify.Event, out sink) error {
	r, err := filepath.Rel(w.root, fe.Name)
	if err != nil || r == "." || strings.HasPrefix(r, "..") {
		return nil
	}
	rel := filepath.ToSlash(r)
	ino, wasDir := w.dirs[rel]
	switch {
	case fe.Has(fsnotify.Create):
		fi, err := os.Lstat(fe.Name)
		if err != nil {
			// Gone already: a removal event follows; still report the
			// path so that a stale target copy is checked.
			out.event(ctx, Event{Path: rel, Op: OpCreate})
			return nil
		}
		if w.excluder.Excluded(rel, fi.IsDir()) {
			return nil
		}
		if fi.IsDir() {
			if wasDir {
				w.dropTree(rel)
			}
			out.event(ctx, Event{Path: rel, Op: OpCreate, IsDir: true, Inode: inodeOf(fi)})
			return w.addTree(ctx, rel, out)
		}
		out.event(ctx, Event{Path: rel, Op: OpCreate})
	case fe.Has(fsnotify.Remove), fe.Has(fsnotify.Rename):
		if w.excluder.Excluded(rel, wasDir) {
			return nil
		}
		op := OpRemove
		if fe.Has(fsnotify.Rename) {
			op = OpRename
		}
		if wasDir {
			w.dropTree(rel)
		}
		out.event(ctx, Event{Path: rel, Op: op, IsDir: wasDir, Inode: ino})
	case fe.Has(fsnotify.Write):
		if w.excluder.Excluded(rel, false) {
			return nil
		}
		out.event(ctx, Event{Path: rel, Op: OpWrite})
	case fe.Has(fsnotify.Chmod):
		if w.excluder.Excluded(rel, wasDir) {
			return nil
		}
		out.event(ctx, Event{Path: rel, Op: OpChmod, IsDir: wasDir})
	}
	return nil
}

// parentOf returns the parent of a relative path, "" for top-level names.
func parentOf(rel string) string {
	d := path.Dir(rel)
	if d == "." {
		return ""
	}
	return d
}
