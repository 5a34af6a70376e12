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
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
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
	// Delivered marks a file renamed into place from a TempPrefix name:
	// a two-way peer's delivery landing here, not a local change.
	Delivered bool
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

// watchMask is what every directory watch asks for. IN_CLOSE_WRITE besides
// IN_MODIFY: a write through mmap only shows at close. IN_EXCL_UNLINK: a
// file unlinked but still open (a log being rotated away) is no longer
// ours. IN_DONTFOLLOW|IN_ONLYDIR: a directory replaced by a symlink
// between the scan and the watch is not followed out of the tree.
const watchMask = unix.IN_CREATE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_DELETE |
	unix.IN_MODIFY | unix.IN_CLOSE_WRITE | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF |
	unix.IN_EXCL_UNLINK | unix.IN_DONT_FOLLOW | unix.IN_ONLYDIR

// movePairWait is how long a rename's IN_MOVED_FROM waits for its
// IN_MOVED_TO. The kernel queues both within one rename(2), so the wait is
// only ever spent on a rename out of the tree (whose second half never
// comes) or on a reader that caught the queue between the two.
const movePairWait = 20 * time.Millisecond

// watch is one inotify watch: a directory under the root.
type watch struct {
	wd  int32
	ino uint64
}

// Watcher watches a tree recursively: one inotify watch per directory,
// including directories created later.
//
// It speaks inotify itself rather than through fsnotify because the path
// of an event must be the path at the moment of the event: fsnotify keeps
// naming a moved directory's events by its old path until the directory
// is watched again, so a file moved out of a directory that had just been
// moved was reported under a name that no longer existed and its real old
// name stayed on the target. Here the watch-descriptor → path map is
// renamed in place when a directory moves, in queue order, the way lsyncd
// does it: events queued before the move carry the old name, later ones
// the new name, and the watches of the moved subtree stay as they are.
//
// The root is a name, not an inode (deploys swap directories and switch
// symlinks): the root's parent is watched for that name too, and when the
// name is moved away, replaced, re-created, or (a symlinked root)
// switched, every watch is dropped and the tree at the name is watched
// afresh, and a rescan is requested. Events of the tree moved away are
// never reported: their watches are gone before the next one is read.
type Watcher struct {
	root     string // as configured (may be a symlink)
	excluder *Excluder
	logger   *slog.Logger

	real     string // the directory root leads to now; "" while missing
	parentWd int32  // watch on root's parent for root's name; -1 if none
	base     string
	// reroot asks Run to follow the root (Refresh saw it change, e.g. a
	// volume mounted over it, which inotify does not report).
	rerootReq chan string

	file      *os.File // the inotify instance (non-blocking, on the poller)
	fd        int
	closeOnce sync.Once

	// Owned by NewWatcher, then by Run's goroutine: the watched
	// directories, by path and by watch descriptor.
	tree watchTree
	// addWatch is inotify_add_watch, replaceable in tests to simulate
	// ENOSPC.
	addWatch func(abs string) (int32, error)
	// inject feeds Run records the kernel is hard to make produce on
	// demand (a queue overflow); nil outside tests.
	inject chan []rawEvent
}

// NewWatcher sets up watches for every directory under root.
func NewWatcher(root string, excluder *Excluder, logger *slog.Logger) (*Watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		if errors.Is(err, syscall.EMFILE) {
			return nil, fmt.Errorf("inotify: too many instances (raise fs.inotify.max_user_instances): %w", err)
		}
		return nil, fmt.Errorf("inotify: %w", err)
	}
	w := newWatcher(root, excluder, logger, fd)
	if err := w.watchParent(); err != nil {
		w.Close()
		return nil, err
	}
	if err := w.watchRoot(context.Background()); err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

// parentMask: the events that tell the root's name changed hands.
const parentMask = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_DELETE | unix.IN_ONLYDIR

func (w *Watcher) watchParent() error {
	parent := filepath.Dir(w.root)
	w.base = filepath.Base(w.root)
	if parent == w.root {
		return nil // "/" has no parent to watch
	}
	wd, err := unix.InotifyAddWatch(w.fd, parent, parentMask)
	if err != nil {
		return fmt.Errorf("watch %s (the source root's parent): %w", parent, err)
	}
	w.parentWd = int32(wd)
	return nil
}

// watchRoot resolves the root's name and watches the tree it leads to; a
// missing root is watched for through its parent.
func (w *Watcher) watchRoot(ctx context.Context) error {
	real, err := filepath.EvalSymlinks(w.root)
	if errors.Is(err, fs.ErrNotExist) {
		w.real = ""
		return nil
	}
	if err != nil {
		return fmt.Errorf("source root %s: %w", w.root, err)
	}
	w.real = real
	return w.addTree(ctx, "", nil)
}

// Reroot asks a running watcher to follow the root's name again; it does
// not block.
func (w *Watcher) Reroot(why string) {
	select {
	case w.rerootReq <- why:
	default: // one request pending is enough
	}
}

// followsRoot reports whether the watched tree is the one the root's name
// leads to.
func (w *Watcher) followsRoot() bool {
	fi, err := os.Stat(w.root)
	wt, watched := w.tree.watched("")
	if err != nil {
		return !watched
	}
	return watched && inodeOf(fi) == wt.ino
}

// reroot drops every watch of the tree and watches what the root's name
// leads to now, then asks for a rescan.
func (w *Watcher) reroot(ctx context.Context, out sink, why string) error {
	w.tree.reset(w.rmWatch)
	old := w.real
	if err := w.watchRoot(ctx); err != nil {
		return err
	}
	now := w.real
	if now == "" {
		now = "(missing: holding)"
	}
	w.logger.Warn("source root "+why+"; following the name", "root", w.root, "was", old, "now", now, "directories", w.tree.count())
	out.rescan(ctx, "source root "+why)
	return nil
}

func newWatcher(root string, excluder *Excluder, logger *slog.Logger, fd int) *Watcher {
	w := &Watcher{
		root: root, excluder: excluder, logger: logger,
		file: os.NewFile(uintptr(fd), "inotify"), fd: fd,
		tree: newWatchTree(),
		real: root, parentWd: -1, rerootReq: make(chan string, 1),
	}
	w.addWatch = func(abs string) (int32, error) {
		wd, err := unix.InotifyAddWatch(fd, abs, watchMask)
		if err != nil {
			return -1, &os.SyscallError{Syscall: "inotify_add_watch", Err: err}
		}
		return int32(wd), nil
	}
	return w
}

// Close releases the inotify instance; it also ends a running Run.
func (w *Watcher) Close() error {
	var err error
	w.closeOnce.Do(func() { err = w.file.Close() })
	return err
}

// WatchedDirs returns how many directories are watched. Not safe while Run
// runs.
func (w *Watcher) WatchedDirs() int { return w.tree.count() }

// rmWatch removes a watch from the inotify instance; it may be gone
// already (the kernel removes the watch of a deleted directory).
func (w *Watcher) rmWatch(wd int32) { _, _ = unix.InotifyRmWatch(w.fd, uint32(wd)) }

func (w *Watcher) abs(rel string) string {
	if rel == "" {
		return w.real
	}
	return filepath.Join(w.real, filepath.FromSlash(rel))
}

func inodeOf(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

func joinRel(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func under(p, dir string) bool { return p == dir || dir == "" || strings.HasPrefix(p, dir+"/") }

// setWatch records that rel is watched by wd (see watchTree.set).
func (w *Watcher) setWatch(rel string, wd int32, ino uint64) {
	w.tree.set(rel, wd, ino, w.rmWatch)
}

// renameTree renames the watched directory from, and those below it, to.
func (w *Watcher) renameTree(from, to string) { w.tree.rename(from, to, w.rmWatch) }

// dropTree forgets rel and the directories below it and removes their
// watches: the kernel removes the watch of a deleted directory by itself,
// but one moved out of the tree would go on reporting.
func (w *Watcher) dropTree(rel string) { w.tree.drop(rel, w.rmWatch) }

// addTree watches rel and every directory below it. When emit is not nil,
// every entry found is reported as created: files written into a new
// directory before its watch existed would otherwise be missed. seen, when
// not nil, collects the watch descriptors found.
func (w *Watcher) addTree(ctx context.Context, rel string, emit sink) error {
	return w.walkWatch(ctx, rel, emit, nil)
}

func (w *Watcher) walkWatch(ctx context.Context, rel string, emit sink, seen map[int32]bool) error {
	return filepath.WalkDir(w.abs(rel), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // vanished meanwhile; its removal event follows
			}
			return err
		}
		r, err := filepath.Rel(w.real, p)
		if err != nil {
			return err
		}
		r = filepath.ToSlash(r)
		if r == "." {
			r = ""
		}
		if r != "" && w.excluder.Excluded(r, d.IsDir()) {
			if d.IsDir() {
				if n := w.tree.lookup(r); n != nil {
					w.dropTree(r) // excluded at its new place
				}
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
		wd, err := w.addWatch(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.ELOOP) {
				return filepath.SkipDir // replaced meanwhile; its events follow
			}
			if errors.Is(err, syscall.ENOSPC) {
				return &WatchLimitError{Dir: p, Current: readWatchLimit(), Needed: countDirs(w.real, w.excluder)}
			}
			return fmt.Errorf("watch %s: %w", p, err)
		}
		w.setWatch(r, wd, inodeOf(fi))
		if seen != nil {
			seen[wd] = true
		}
		if emit != nil && r != rel {
			emit.event(ctx, Event{Path: r, Op: OpCreate, IsDir: true, Inode: inodeOf(fi)})
		}
		return nil
	})
}

// resync rebuilds the watch map from the tree after an overflow, when
// moves may have been lost: watches that still exist get their current
// names, those of directories that are gone are removed.
func (w *Watcher) resync(ctx context.Context) error {
	seen := map[int32]bool{}
	if err := w.walkWatch(ctx, "", nil, seen); err != nil {
		return err
	}
	for wd, n := range w.tree.byWd {
		if !seen[wd] {
			w.tree.dropNode(n, w.rmWatch)
		}
	}
	return nil
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

// rawEvent is one inotify record.
type rawEvent struct {
	wd     int32
	mask   uint32
	cookie uint32
	name   string
}

// read pumps the inotify queue to out until the instance is closed.
func (w *Watcher) read(out chan<- []rawEvent) {
	defer close(out)
	buf := make([]byte, 64<<10)
	for {
		n, err := w.file.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				w.logger.Warn("inotify read failed", "err", err)
			}
			return
		}
		var evs []rawEvent
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			raw := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			ev := rawEvent{wd: raw.Wd, mask: raw.Mask, cookie: raw.Cookie}
			nameStart := off + unix.SizeofInotifyEvent
			if raw.Len > 0 && nameStart+int(raw.Len) <= n {
				name := buf[nameStart : nameStart+int(raw.Len)]
				if i := indexNUL(name); i >= 0 {
					name = name[:i]
				}
				ev.name = string(name)
			}
			evs = append(evs, ev)
			off = nameStart + int(raw.Len)
		}
		out <- evs
	}
}

func indexNUL(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// Run forwards events to out until ctx is done. A non-nil return is
// fatal for the job (a watch could not be added).
func (w *Watcher) Run(ctx context.Context, out sink) error {
	raw := make(chan []rawEvent, 16)
	var reader sync.WaitGroup
	reader.Go(func() { w.read(raw) })
	defer func() {
		w.Close() // ends the reader
		for range raw {
		}
		reader.Wait()
	}()
	var pending *rawEvent // an IN_MOVED_FROM waiting for its IN_MOVED_TO
	var pairTimer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-pairTimer:
			pairTimer = nil
			if pending != nil {
				ev := *pending
				pending = nil
				if err := w.moveOut(ctx, ev, out); err != nil {
					return err
				}
			}
		case why := <-w.rerootReq:
			if w.followsRoot() {
				continue // this watcher got there first
			}
			if err := w.reroot(ctx, out, why); err != nil {
				return err
			}
		case evs := <-w.inject:
			raw <- evs // behind what the kernel queued before
		case evs, ok := <-raw:
			if !ok {
				return nil
			}
			for i := range evs {
				ev := evs[i]
				if ev.wd == w.parentWd && ev.wd >= 0 || ev.mask&unix.IN_UNMOUNT != 0 {
					// The root's name changed hands, or its volume went
					// away: whatever is pending belongs to the old tree.
					pending = nil
					if why := w.rootChange(ev); why != "" {
						if err := w.reroot(ctx, out, why); err != nil {
							return err
						}
					}
					continue
				}
				if pending != nil {
					from := *pending
					pending = nil
					if ev.mask&unix.IN_MOVED_TO != 0 && ev.cookie == from.cookie {
						if err := w.move(ctx, from, ev, out); err != nil {
							return err
						}
						continue
					}
					if err := w.moveOut(ctx, from, out); err != nil {
						return err
					}
				}
				if ev.mask&unix.IN_MOVED_FROM != 0 {
					pending = &ev
					continue
				}
				if err := w.handle(ctx, ev, out); err != nil {
					return err
				}
			}
			pairTimer = nil
			if pending != nil {
				pairTimer = time.After(movePairWait)
			}
		}
	}
}

// rootChange tells whether ev, an event of the root's parent (or an
// unmount), means the root's name leads elsewhere now.
func (w *Watcher) rootChange(ev rawEvent) string {
	switch {
	case ev.mask&unix.IN_UNMOUNT != 0:
		if _, ok := w.tree.byWd[ev.wd]; ok {
			return "unmounted"
		}
	case ev.mask&unix.IN_IGNORED != 0:
		w.logger.Error("the source root's parent directory is gone; a replaced root is no longer noticed", "root", w.root)
		w.parentWd = -1
	case ev.name != w.base:
	case ev.mask&(unix.IN_MOVED_FROM|unix.IN_DELETE) != 0:
		return "moved away or deleted"
	case ev.mask&(unix.IN_MOVED_TO|unix.IN_CREATE) != 0:
		return "replaced"
	}
	return ""
}

// pathOf names the subject of ev; ok is false when its watch is no longer
// known (events queued before a watch was removed).
func (w *Watcher) pathOf(ev rawEvent) (string, bool) {
	dir, ok := w.tree.dirOf(ev.wd)
	if !ok {
		return "", false
	}
	if ev.name == "" {
		return dir, true
	}
	return joinRel(dir, ev.name), true
}

func (w *Watcher) handle(ctx context.Context, ev rawEvent, out sink) error {
	switch {
	case ev.mask&unix.IN_Q_OVERFLOW != 0:
		// Events were lost, moves among them perhaps: rebuild the map
		// and resynchronise instead of restarting.
		w.logger.Warn("inotify queue overflow; rescanning", "root", w.root)
		if err := w.resync(ctx); err != nil {
			return err
		}
		out.rescan(ctx, "inotify overflow")
		return nil
	case ev.mask&unix.IN_IGNORED != 0:
		if n, ok := w.tree.byWd[ev.wd]; ok {
			w.tree.forget(n)
		}
		return nil
	}
	rel, ok := w.pathOf(ev)
	if !ok {
		return nil
	}
	if ev.name == "" {
		// An event of a watched directory about itself: its parent
		// reports the same change by name (for the root, the parent
		// watch does).
		return nil
	}
	isDir := ev.mask&unix.IN_ISDIR != 0
	switch {
	case ev.mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
		return w.created(ctx, rel, out)
	case ev.mask&unix.IN_DELETE != 0:
		wt, wasDir := w.tree.watched(rel)
		if w.excluder.Excluded(rel, isDir || wasDir) {
			return nil
		}
		if wasDir {
			w.dropTree(rel)
		}
		out.event(ctx, Event{Path: rel, Op: OpRemove, IsDir: wasDir, Inode: wt.ino})
	case ev.mask&(unix.IN_MODIFY|unix.IN_CLOSE_WRITE) != 0:
		if w.excluder.Excluded(rel, false) {
			return nil
		}
		out.event(ctx, Event{Path: rel, Op: OpWrite})
	case ev.mask&unix.IN_ATTRIB != 0:
		if w.excluder.Excluded(rel, isDir) {
			return nil
		}
		out.event(ctx, Event{Path: rel, Op: OpChmod, IsDir: isDir})
	}
	return nil
}

// created handles a new name: a file or directory created or moved in.
func (w *Watcher) created(ctx context.Context, rel string, out sink) error {
	fi, err := os.Lstat(w.abs(rel))
	if err != nil {
		// Gone already: a removal event follows; still report the path
		// so that a stale target copy is checked.
		out.event(ctx, Event{Path: rel, Op: OpCreate})
		return nil
	}
	if w.excluder.Excluded(rel, fi.IsDir()) {
		return nil
	}
	if wt, wasDir := w.tree.watched(rel); wasDir && (!fi.IsDir() || wt.ino != inodeOf(fi)) {
		w.dropTree(rel) // replaced: its watches belong to a directory gone
	}
	if fi.IsDir() {
		out.event(ctx, Event{Path: rel, Op: OpCreate, IsDir: true, Inode: inodeOf(fi)})
		return w.addTree(ctx, rel, out)
	}
	out.event(ctx, Event{Path: rel, Op: OpCreate})
	return nil
}

// moveOut handles an IN_MOVED_FROM whose IN_MOVED_TO never came: the
// name left the tree (or its new name is not watched).
func (w *Watcher) moveOut(ctx context.Context, from rawEvent, out sink) error {
	rel, ok := w.pathOf(from)
	if !ok {
		return nil
	}
	wt, wasDir := w.tree.watched(rel)
	if w.excluder.Excluded(rel, wasDir || from.mask&unix.IN_ISDIR != 0) {
		return nil
	}
	if wasDir {
		w.dropTree(rel)
	}
	out.event(ctx, Event{Path: rel, Op: OpRename, IsDir: wasDir, Inode: wt.ino})
	return nil
}

// move handles a rename within the tree. A watched directory keeps its
// watches: only their names change, and the moved subtree is walked again
// for watches only, so that exclude rules anchored at the root apply at
// its new place.
func (w *Watcher) move(ctx context.Context, from, to rawEvent, out sink) error {
	fromRel, fromOK := w.pathOf(from)
	toRel, toOK := w.pathOf(to)
	if !toOK {
		return w.moveOut(ctx, from, out)
	}
	if !fromOK {
		return w.created(ctx, toRel, out)
	}
	wt, wasDir := w.tree.watched(fromRel)
	isDir := to.mask&unix.IN_ISDIR != 0
	if !wasDir || !isDir || w.excluder.Excluded(toRel, true) {
		// A file, or a directory we did not watch: the old name is gone,
		// the new one is new.
		if err := w.moveOut(ctx, from, out); err != nil {
			return err
		}
		if !isDir && strings.HasPrefix(path.Base(fromRel), TempPrefix) {
			if !w.excluder.Excluded(toRel, false) {
				out.event(ctx, Event{Path: toRel, Op: OpCreate, Delivered: true})
			}
			return nil
		}
		return w.created(ctx, toRel, out)
	}
	w.renameTree(fromRel, toRel)
	if !w.excluder.Excluded(fromRel, true) {
		out.event(ctx, Event{Path: fromRel, Op: OpRename, IsDir: true, Inode: wt.ino})
	}
	out.event(ctx, Event{Path: toRel, Op: OpCreate, IsDir: true, Inode: wt.ino})
	return w.addTree(ctx, toRel, nil)
}

// parentOf returns the parent of a relative path, "" for top-level names.
func parentOf(rel string) string {
	d := path.Dir(rel)
	if d == "." {
		return ""
	}
	return d
}
