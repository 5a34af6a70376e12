package lsync

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

// errSourceChanged means a file changed while it was being copied; it is
// retried after the next quiet period instead of landing half-written.
var errSourceChanged = errors.New("source file changed during copy")

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
//
// An entry below a symlinked directory does not exist in the tree (the
// walk never descends into a symlink), although os.Root would follow a
// symlink that stays inside the root: answering "present" would make a
// directory replaced by a symlink never delete its old content on the
// targets, and copy the link's target there under the old names.
func (s *Source) Lstat(rel string) (*Entry, error) {
	if dir := path.Dir(rel); dir != "." {
		real, ok := s.beneath.realDir(dir)
		if !ok {
			real = s.realDir(dir)
		}
		if !real {
			return nil, nil
		}
	}
	return s.entry(s.root, rel, rel)
}

// realDir is beneath.realDir without openat2: each ancestor is lstat'ed.
func (s *Source) realDir(dir string) bool {
	for p := dir; p != "."; p = path.Dir(p) {
		fi, err := s.root.Lstat(p)
		if err != nil || !fi.IsDir() {
			return false
		}
	}
	return true
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

func modeBits(m fs.FileMode) fs.FileMode {
	return m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

// sameMTime compares mtimes, at one-second granularity when either side
// carries whole seconds only (SFTP v3 attributes).
func sameMTime(a, b time.Time) bool {
	if a.Equal(b) {
		return true
	}
	if a.Nanosecond() == 0 || b.Nanosecond() == 0 {
		return a.Unix() == b.Unix()
	}
	return false
}

type opKind uint8

const (
	opRemove opKind = iota + 1
	opMkdir
	opUpload
	opSymlink
	opChmod
	opChtimes // content equal (checksum mode) but mtime differs
)

var opNames = map[opKind]string{opRemove: "delete", opMkdir: "mkdir", opUpload: "upload", opSymlink: "symlink", opChmod: "chmod", opChtimes: "touch"}

type op struct {
	kind   opKind
	path   string
	src    Entry
	reason string
	// overDir: a file or symlink takes the place of a directory on the
	// target. In two-way mode the directory is removed only when empty.
	overDir bool
}

func (o op) String() string { return opNames[o.kind] + " " + o.path + " (" + o.reason + ")" }

// PathError is a failure about one path; it is retried.
type PathError struct {
	Path string
	Op   string
	Err  error
}

func (e *PathError) Error() string { return e.Op + " " + e.Path + ": " + e.Err.Error() }
func (e *PathError) Unwrap() error { return e.Err }

// Report summarises a reconciliation pass or a batch for one target.
type Report struct {
	Target    string
	Files     int   // files uploaded
	Bytes     int64 // bytes uploaded
	Dirs      int   // directories created
	Links     int   // symlinks written
	Attrs     int   // modes or mtimes fixed
	Deleted   int
	Renamed   int // directory renames replayed
	Conflicts int // two-way: entries left alone because the peer's copy wins
	Kept      int // two-way: entries only on the target, left for the peer to push
	// Changes lists the actions (or, in a dry run, the differences),
	// capped at maxReportedChanges.
	Changes []string
	Errors  []*PathError
	// Refused lists operations the target refused because they would
	// leave its root or go through a symlink there (ErrRefused). They are
	// not retried before the next full pass: the peer's tree must change
	// first.
	Refused  []*PathError
	Retry    []string // paths that changed while being copied
	Duration time.Duration
	// Entries is the size of the larger tree listing a full pass built
	// (0 for a live batch); the job uses it to return memory afterwards.
	Entries int
}

const maxReportedChanges = 100

// Actions is the number of changes made (or needed, in a dry run).
func (r *Report) Actions() int { return r.Files + r.Dirs + r.Links + r.Attrs + r.Deleted + r.Renamed }

// InSync reports whether the target matched (dry run) or now matches.
func (r *Report) InSync() bool { return len(r.Errors) == 0 && len(r.Retry) == 0 && len(r.Refused) == 0 }

// Matches reports, for a dry run, that nothing differs.
func (r *Report) Matches() bool {
	return r.InSync() && r.Actions() == 0 && r.Kept == 0 && r.Conflicts == 0
}

// wantsNote reports whether note would keep another change, so that
// callers can skip formatting one (a 100k-file initial pass would
// otherwise build 100k strings only to drop them).
func (r *Report) wantsNote() bool { return len(r.Changes) <= maxReportedChanges }

func (r *Report) note(s string) {
	if len(r.Changes) < maxReportedChanges {
		r.Changes = append(r.Changes, s)
	} else if len(r.Changes) == maxReportedChanges {
		r.Changes = append(r.Changes, "...")
	}
}

// Reconciler brings one target in line with the source.
type Reconciler struct {
	Source   *Source
	Target   string // name, for logs and reports
	Delete   bool
	Checksum bool
	// TwoWay enables the conflict rule for two nodes pushing to each
	// other: the newer mtime wins, a tie goes to the node whose name sorts
	// first; a full pass never deletes (a file only on the peer is the
	// peer's to push), only live deletions propagate.
	TwoWay      bool
	Node        string
	Concurrency int
	Logger      *slog.Logger // carries the target name (the job adds it)
	// ProgressEvery logs progress of large passes; 0 means 10s.
	ProgressEvery time.Duration
	// OnTransfer is called after every file landed (metrics).
	OnTransfer func(bytes int64)
	// OnRefused is called for every operation the target refused
	// (ErrRefused), logged or not (metrics).
	OnRefused func()

	refusedMu sync.Mutex
	// refusedLogged holds the paths whose refusal was logged, so that a
	// hostile tree retried by every full pass logs each path once.
	refusedLogged map[string]bool

	landedMu sync.Mutex
	// landed maps a path to the source version last landed or verified
	// on the target, in two generations: when the young one is full it
	// becomes the old one, so the most recent landings always survive.
	landed, landedOld map[string]landedVersion
}

// landedVersion identifies a file version by size and exact mtime.
type landedVersion struct {
	size  int64
	mtime time.Time
}

// maxLanded bounds each generation of the landed cache. It only needs the
// versions landed in the last moments (trailing events, same-second
// edits); anything older costs a content comparison, never correctness.
const maxLanded = 8192

// SuspectSlack widens the window of a catch-up pass that lost the list of
// changed paths (a queue overflow): files whose source mtime is at most
// this much older than the first dropped event are content-checked too,
// covering the delay between a write and its event reaching the batcher.
const SuspectSlack = 5 * time.Second

func (r *Reconciler) rememberLanded(e Entry) {
	r.landedMu.Lock()
	defer r.landedMu.Unlock()
	if r.landed == nil || len(r.landed) >= maxLanded {
		r.landedOld, r.landed = r.landed, make(map[string]landedVersion)
	}
	r.landed[e.Path] = landedVersion{size: e.Size, mtime: e.ModTime}
}

// moveLanded follows a rename on the target: the versions landed under
// from are now under to, so the renamed subtree is not read back as
// "suspect" file by file (5,000 read-backs for one `mv` of a 5k-file dir).
func (r *Reconciler) moveLanded(from, to string) {
	r.landedMu.Lock()
	defer r.landedMu.Unlock()
	under := func(k, dir string) bool { return k == dir || strings.HasPrefix(k, dir+"/") }
	moved := map[string]landedVersion{}
	for _, gen := range []map[string]landedVersion{r.landedOld, r.landed} { // young wins
		for k, v := range gen {
			if under(k, from) {
				moved[to+strings.TrimPrefix(k, from)] = v
			}
		}
	}
	// Whatever was landed under to was replaced by the rename.
	for _, gen := range []map[string]landedVersion{r.landedOld, r.landed} {
		for k := range gen {
			if under(k, from) || under(k, to) {
				delete(gen, k)
			}
		}
	}
	if r.landed == nil {
		r.landed = make(map[string]landedVersion, len(moved))
	}
	maps.Copy(r.landed, moved)
}

func (r *Reconciler) lastLanded(rel string) (Entry, bool) {
	r.landedMu.Lock()
	defer r.landedMu.Unlock()
	v, ok := r.landed[rel]
	if !ok {
		v, ok = r.landedOld[rel]
	}
	return Entry{Path: rel, Size: v.size, ModTime: v.mtime}, ok
}

// ambiguous reports whether src and dst look equal only because the
// target's mtime lost its sub-second part (SFTP v3): a same-size rewrite
// within the same second is then invisible to the size+mtime comparison.
func ambiguous(src, dst Entry) bool {
	return src.Size == dst.Size && !src.ModTime.Equal(dst.ModTime) && sameMTime(src.ModTime, dst.ModTime)
}

// peerWins applies the two-way conflict rule to an entry present on both
// sides with differing content.
func (r *Reconciler) peerWins(src, dst Entry) bool {
	if !r.TwoWay {
		return false
	}
	if !sameMTime(src.ModTime, dst.ModTime) {
		return dst.ModTime.After(src.ModTime)
	}
	// Same second, different content. When the target still holds the
	// version we landed there ourselves, the source is simply newer;
	// otherwise the truncated mtimes cannot order the two and the tie
	// rule decides.
	if l, ok := r.lastLanded(src.Path); ok && l.Size == dst.Size && sameMTime(l.ModTime, dst.ModTime) && src.ModTime.After(l.ModTime) {
		return false
	}
	return r.Target < r.Node
}

// plan decides what rel needs. src or dst nil means absent on that side.
// suspect marks a path known to have changed since it was last landed (a
// live event, or a pending path carried across a disconnect): its content
// is compared when size and mtime match only at whole-second granularity.
func (r *Reconciler) plan(ctx context.Context, t Target, src, dst *Entry, live, suspect bool) (op, bool, error) {
	if src == nil {
		if dst == nil || !r.Delete || (r.TwoWay && !live) {
			return op{}, false, nil
		}
		return op{kind: opRemove, path: dst.Path, reason: "not in source"}, true, nil
	}
	o := op{path: src.Path, src: *src}
	switch {
	case src.Mode.IsDir():
		if dst == nil || !dst.Mode.IsDir() {
			o.kind, o.reason = opMkdir, "missing"
			if dst != nil {
				o.reason = "not a directory on target"
				// Unless this directory changed after the peer's symlink
				// was made (a symlink replaced by a directory here), the
				// two are a type conflict and both are kept; the peer,
				// for its part, never removes a directory with content
				// for its symlink. Timestamps are coarse (a few ms on
				// the filesystem, whole seconds over SFTP): a tie is a
				// conflict, not a win.
				if r.TwoWay && dst.Mode&fs.ModeSymlink != 0 && (sameMTime(src.ModTime, dst.ModTime) || !src.ModTime.After(dst.ModTime)) {
					r.logTypeConflict(src.Path, "a directory here, a symlink at least as new on the peer", nil)
					return op{}, false, errConflict
				}
			}
			return o, true, nil
		}
		if modeBits(src.Mode) != modeBits(dst.Mode) {
			if r.peerWins(*src, *dst) {
				return op{}, false, nil
			}
			o.kind, o.reason = opChmod, fmt.Sprintf("mode %v vs %v", modeBits(src.Mode), modeBits(dst.Mode))
			return o, true, nil
		}
		return op{}, false, nil
	case src.Mode&fs.ModeSymlink != 0:
		if dst != nil && dst.Mode&fs.ModeSymlink != 0 && dst.LinkTarget == src.LinkTarget {
			return op{}, false, nil
		}
		o.kind, o.reason = opSymlink, "missing"
		if dst != nil {
			o.overDir = dst.Mode.IsDir()
			if r.TwoWay && dst.Mode&fs.ModeSymlink != 0 && r.Target < r.Node {
				r.logConflict(*src, *dst)
				return op{}, false, errConflict
			}
			o.reason = fmt.Sprintf("link %q vs %q", src.LinkTarget, dst.LinkTarget)
		}
		return o, true, nil
	}
	// Regular file.
	o.kind = opUpload
	switch {
	case dst == nil:
		o.reason = "missing"
	case !dst.Mode.IsRegular():
		o.reason = "not a file on target"
		o.overDir = dst.Mode.IsDir()
	case src.Size != dst.Size:
		o.reason = fmt.Sprintf("size %d vs %d", src.Size, dst.Size)
	case r.Checksum:
		same, err := r.sameContent(ctx, t, src.Path)
		if err != nil {
			return op{}, false, err
		}
		if !same {
			o.reason = "content differs"
		} else if !sameMTime(src.ModTime, dst.ModTime) {
			o.kind, o.reason = opChtimes, "mtime differs"
		}
	case !sameMTime(src.ModTime, dst.ModTime):
		o.reason = fmt.Sprintf("mtime %s vs %s", src.ModTime.Format(time.RFC3339Nano), dst.ModTime.Format(time.RFC3339Nano))
	case suspect && ambiguous(*src, *dst):
		if l, ok := r.lastLanded(src.Path); ok && l.Size == src.Size && l.ModTime.Equal(src.ModTime) {
			break // this very version landed there (a trailing event)
		}
		same, err := r.sameContent(ctx, t, src.Path)
		if err != nil {
			return op{}, false, err
		}
		if !same {
			o.reason = "same size and second as the target, content differs"
		} else {
			r.rememberLanded(*src)
		}
	}
	if o.reason == "" {
		if modeBits(src.Mode) != modeBits(dst.Mode) {
			if r.TwoWay && r.Target < r.Node {
				return op{}, false, nil
			}
			o.kind, o.reason = opChmod, fmt.Sprintf("mode %v vs %v", modeBits(src.Mode), modeBits(dst.Mode))
			return o, true, nil
		}
		return op{}, false, nil
	}
	if dst != nil && dst.Mode.IsRegular() && r.peerWins(*src, *dst) {
		r.logConflict(*src, *dst)
		return op{}, false, errConflict
	}
	return o, true, nil
}

var errConflict = errors.New("conflict lost to peer")

func (r *Reconciler) logTypeConflict(rel, what string, err error) {
	attrs := []any{"path", rel, "conflict", what, "node", r.Node,
		"rule", "a directory with content is never replaced by a file or symlink in two-way mode; resolve by hand on one node"}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	r.Logger.Warn("two-way type conflict: keeping both", attrs...)
}

// clearForFile removes the directory a file or symlink is about to
// replace, only if it is empty; otherwise the operation is a conflict.
func (r *Reconciler) clearForFile(ctx context.Context, t Target, rel string) error {
	dr, ok := t.(DirRemover)
	if !ok {
		return errors.New("this target cannot remove a directory only when it is empty")
	}
	return dr.RemoveEmptyDir(ctx, rel)
}

// refused records an operation the target refused: logged once per path,
// counted every time.
func (r *Reconciler) refused(o op, err error) {
	if r.OnRefused != nil {
		r.OnRefused()
	}
	r.refusedMu.Lock()
	if r.refusedLogged == nil || len(r.refusedLogged) >= maxLanded {
		r.refusedLogged = map[string]bool{}
	}
	first := !r.refusedLogged[o.path]
	r.refusedLogged[o.path] = true
	r.refusedMu.Unlock()
	if first {
		r.Logger.Warn("target refused the operation: it would leave the target root or go through a symlink there; the rest keeps syncing, this path waits for the next full pass",
			"path", o.path, "op", opNames[o.kind], "err", err)
	}
}

func (r *Reconciler) logConflict(src, dst Entry) {
	r.Logger.Info("two-way conflict: keeping the peer's copy", "path", src.Path,
		"local_mtime", src.ModTime, "peer_mtime", dst.ModTime, "loser", r.Node,
		"rule", "newest mtime wins, a tie goes to the node name sorting first")
}

func (r *Reconciler) sameContent(ctx context.Context, t Target, rel string) (bool, error) {
	hash := func(rc io.ReadCloser) ([]byte, error) {
		defer rc.Close()
		h := sha256.New()
		if _, err := io.Copy(h, rc); err != nil {
			return nil, err
		}
		return h.Sum(nil), nil
	}
	f, err := r.Source.openFile(rel)
	if err != nil {
		return false, err
	}
	a, err := hash(f)
	if err != nil {
		return false, err
	}
	rc, err := t.Open(ctx, rel)
	if err != nil {
		return false, err
	}
	b, err := hash(rc)
	if err != nil {
		return false, err
	}
	return string(a) == string(b), nil
}

// Reconcile compares the whole trees and, unless dry, pushes what differs.
// The returned error is non-nil only when the session broke (it then
// wraps ErrDisconnected) or the walk itself failed; per-path failures are
// in the report.
//
// Files are compared by size and mtime; over SFTP the target's mtime has
// whole seconds only, so a same-size rewrite within the second of the
// target's copy is invisible to this pass (use `checksum: true`, or rely
// on the live events, which CatchUp carries across disconnects).
func (r *Reconciler) Reconcile(ctx context.Context, t Target, dry bool) (*Report, error) {
	return r.reconcile(ctx, t, dry, nil)
}

// CatchUp is the full pass of a rescan batch (after a reconnect, a queue
// overflow or for verification). The batch's paths had events that were
// not applied yet, and files changed at or after b.ChangedSince (minus
// SuspectSlack) may have lost theirs: for both, when size and mtime match
// only at whole-second granularity, the content decides.
func (r *Reconciler) CatchUp(ctx context.Context, t Target, b Batch) (*Report, error) {
	pending := make(map[string]bool, len(b.Paths))
	for _, p := range b.Paths {
		pending[p] = true
	}
	since := b.ChangedSince
	if !since.IsZero() {
		since = since.Add(-SuspectSlack)
	}
	return r.reconcile(ctx, t, false, func(e Entry) bool {
		return pending[e.Path] || !since.IsZero() && !e.ModTime.Before(since)
	})
}

func (r *Reconciler) reconcile(ctx context.Context, t Target, dry bool, suspect func(Entry) bool) (*Report, error) {
	start := time.Now()
	rep := &Report{Target: r.Target}
	if err := r.Source.checkRoot(); err != nil {
		return rep, err
	}
	dst := map[string]Entry{}
	var temps []string
	err := t.Walk(ctx, func(e Entry) error {
		if strings.HasPrefix(path.Base(e.Path), TempPrefix) {
			temps = append(temps, e.Path)
			return nil
		}
		dst[e.Path] = e
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("walk target %s: %w", r.Target, err)
	}
	var ops []op
	for _, tmp := range temps {
		ops = append(ops, op{kind: opRemove, path: tmp, reason: "leftover temp file"})
	}
	// The source is planned as it is walked, never listed whole: a pass
	// over a big tree then holds one listing (the target's) instead of two.
	var mu sync.Mutex // guards dst, ops, dirTimes and rep
	var dirTimes []Entry
	dstEntries := len(dst)
	planOne := func(ctx context.Context, s Entry) error {
		mu.Lock()
		var d *Entry
		if e, ok := dst[s.Path]; ok {
			d = &e
			// Struck out as it is seen: what is left of dst at the end
			// is what the source lacks.
			delete(dst, s.Path)
		}
		mu.Unlock()
		o, need, err := r.plan(ctx, t, &s, d, false, suspect != nil && suspect(s))
		mu.Lock()
		defer mu.Unlock()
		if errors.Is(err, errConflict) {
			rep.Conflicts++
			return nil
		}
		if err != nil {
			if errors.Is(err, ErrDisconnected) {
				return err
			}
			rep.Errors = append(rep.Errors, &PathError{Path: s.Path, Op: "compare", Err: err})
			return nil
		}
		if need {
			ops = append(ops, o)
		}
		if s.Mode.IsDir() && (d == nil || !d.Mode.IsDir() || !sameMTime(s.ModTime, d.ModTime)) {
			if d == nil || !d.Mode.IsDir() || !r.TwoWay || s.ModTime.After(d.ModTime) {
				dirTimes = append(dirTimes, s)
			}
		}
		return nil
	}
	g, gctx := errgroup.WithContext(ctx)
	feed := make(chan Entry, 256)
	for range max(r.Concurrency, 1) {
		g.Go(func() error {
			for s := range feed {
				if err := gctx.Err(); err != nil {
					return err
				}
				if err := planOne(gctx, s); err != nil {
					return err
				}
			}
			return nil
		})
	}
	srcEntries := 0
	walkErr := r.Source.Walk(gctx, "", func(e Entry) error {
		srcEntries++
		select {
		case feed <- e:
			return nil
		case <-gctx.Done():
			return gctx.Err()
		}
	})
	close(feed)
	// A planner's failure (a lost session) cancels the walk: report it
	// rather than the cancellation it caused.
	if err := g.Wait(); err != nil {
		return rep, err
	}
	if walkErr != nil {
		return rep, fmt.Errorf("walk source %s: %w", r.Source.Dir, walkErr)
	}
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	rep.Entries = max(srcEntries, dstEntries)
	// Extraneous target entries, topmost only (RemoveAll takes the rest).
	var extra []string
	for p := range dst {
		extra = append(extra, p)
	}
	sort.Strings(extra)
	var lastRemoved string
	for _, p := range extra {
		if lastRemoved != "" && strings.HasPrefix(p, lastRemoved+"/") {
			continue
		}
		if r.Source.excluder.Excluded(p, dst[p].Mode.IsDir()) {
			continue // excluded on the target too: never ours to delete
		}
		if !r.Delete {
			continue
		}
		if r.TwoWay {
			rep.Kept++
			rep.note("only on target " + p + " (two_way: left for the peer to push)")
			lastRemoved = p
			continue
		}
		ops = append(ops, op{kind: opRemove, path: p, reason: "not in source"})
		lastRemoved = p
	}
	sort.Slice(dirTimes, func(i, j int) bool { return dirTimes[i].Path < dirTimes[j].Path })
	if dry {
		for _, o := range ops {
			rep.count(o, o.src.Size)
			if rep.wantsNote() {
				rep.note(o.String())
			}
		}
		rep.Duration = time.Since(start)
		return rep, nil
	}
	dst = nil
	err = r.execute(ctx, t, ops, dirTimes, rep, true)
	rep.Duration = time.Since(start)
	return rep, err
}

func (rep *Report) count(o op, size int64) {
	switch o.kind {
	case opUpload:
		rep.Files++
		rep.Bytes += size
	case opMkdir:
		rep.Dirs++
	case opSymlink:
		rep.Links++
	case opChmod, opChtimes:
		rep.Attrs++
	case opRemove:
		rep.Deleted++
	}
}

// Apply brings the paths of a live batch in line, after replaying its
// directory renames.
func (r *Reconciler) Apply(ctx context.Context, t Target, b Batch) (*Report, error) {
	start := time.Now()
	rep := &Report{Target: r.Target}
	paths := map[string]bool{}
	for _, p := range b.Paths {
		paths[p] = true
	}
	// Old names of renames the target refused: deleted (where the source
	// lacks them) only after their new names landed, so that the content
	// is never missing from both names at once. Two-way full passes never
	// delete, so the deletion must happen here or not at all.
	oldNames := map[string]bool{}
	for _, rn := range b.Renames {
		if r.Source.excluder.Excluded(rn.From, true) || r.Source.excluder.Excluded(rn.To, true) {
			continue // the per-path checks handle both names
		}
		err := t.Rename(ctx, rn.From, rn.To)
		if errors.Is(err, ErrDisconnected) {
			return rep, err
		}
		if err != nil {
			// The target did not have the old name (it was behind):
			// upload the new subtree instead.
			r.Logger.Debug("rename on target failed; uploading instead", "from", rn.From, "to", rn.To, "err", err)
		} else {
			rep.Renamed++
			rep.note("rename " + rn.From + " -> " + rn.To)
			r.moveLanded(rn.From, rn.To)
		}
		// Check the new subtree either way: entries may have changed
		// after the rename, before the new directory was watched.
		paths[rn.To] = true
		if err != nil {
			paths[rn.From] = true
			oldNames[rn.From] = true
			if werr := r.Source.Walk(ctx, rn.To, func(e Entry) error { paths[e.Path] = true; return nil }); werr != nil {
				rep.Errors = append(rep.Errors, &PathError{Path: rn.To, Op: "scan", Err: werr})
			}
		}
	}
	list := make([]string, 0, len(paths))
	for p := range paths {
		list = append(list, p)
	}
	sort.Strings(list)
	var mu sync.Mutex
	var ops []op
	dirs := map[string]bool{}
	err := parallel(ctx, r.Concurrency, len(list), func(i int) error {
		rel := list[i]
		src, err := r.Source.Lstat(rel)
		if err != nil {
			mu.Lock()
			rep.Errors = append(rep.Errors, &PathError{Path: rel, Op: "stat source", Err: err})
			mu.Unlock()
			return nil
		}
		var dst *Entry
		d, err := t.Stat(ctx, rel)
		switch {
		case err == nil:
			dst = &d
		case errors.Is(err, ErrDisconnected):
			return err
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		default:
			mu.Lock()
			rep.Errors = append(rep.Errors, &PathError{Path: rel, Op: "stat target", Err: err})
			mu.Unlock()
			return nil
		}
		if src == nil && r.Source.excluder.Excluded(rel, dst != nil && dst.Mode.IsDir()) {
			return nil
		}
		o, need, err := r.plan(ctx, t, src, dst, true, true)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case errors.Is(err, errConflict):
			rep.Conflicts++
		case errors.Is(err, ErrDisconnected):
			return err
		case err != nil:
			rep.Errors = append(rep.Errors, &PathError{Path: rel, Op: "compare", Err: err})
		case need:
			ops = append(ops, o)
		}
		if src != nil && src.Mode.IsDir() && dst != nil && dst.Mode.IsDir() && !sameMTime(src.ModTime, dst.ModTime) &&
			(!r.TwoWay || src.ModTime.After(dst.ModTime)) {
			dirs[rel] = true
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	var dirTimes []Entry
	for d := range dirs {
		if e, _ := r.Source.Lstat(d); e != nil && e.Mode.IsDir() {
			dirTimes = append(dirTimes, *e)
		}
	}
	var late []op
	if len(oldNames) > 0 {
		now := ops[:0]
		for _, o := range ops {
			if o.kind == opRemove && (oldNames[o.path] || coveredBy(o.path, oldNames)) {
				late = append(late, o)
			} else {
				now = append(now, o)
			}
		}
		ops = now
	}
	err = r.execute(ctx, t, ops, dirTimes, rep, false)
	if err == nil && len(late) > 0 {
		err = r.execute(ctx, t, late, nil, rep, false)
	}
	rep.Duration = time.Since(start)
	return rep, err
}

// execute runs ops: deletions, then directories (parents first), then
// files, links and attributes concurrently, then directory mtimes (deepest
// first, since writing into a directory changes its mtime).
func (r *Reconciler) execute(ctx context.Context, t Target, ops []op, dirTimes []Entry, rep *Report, full bool) error {
	var removes, mkdirs []op
	var totalBytes int64
	// rest reuses ops' array (it never gets ahead of the loop): a pass
	// over a big tree should not hold its list of operations twice.
	rest := ops[:0]
	for _, o := range ops {
		switch o.kind {
		case opRemove:
			removes = append(removes, o)
		case opMkdir:
			mkdirs = append(mkdirs, o)
		default:
			rest = append(rest, o)
			if o.kind == opUpload {
				totalBytes += o.src.Size
			}
		}
	}
	touched := map[string]bool{}
	var mu sync.Mutex
	fail := func(o op, err error) error {
		if errors.Is(err, ErrDisconnected) || ctx.Err() != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if errors.Is(err, ErrRefused) {
			r.refused(o, err)
			rep.Refused = append(rep.Refused, &PathError{Path: o.path, Op: opNames[o.kind], Err: err})
			return nil
		}
		if errors.Is(err, errSourceChanged) || errors.Is(err, fs.ErrNotExist) && o.kind == opUpload {
			// Being written, or gone meanwhile: look again after the next
			// quiet period (its events are on their way too).
			rep.Retry = append(rep.Retry, o.path)
			return nil
		}
		rep.Errors = append(rep.Errors, &PathError{Path: o.path, Op: opNames[o.kind], Err: err})
		return nil
	}
	done := func(o op, bytes int64) {
		mu.Lock()
		defer mu.Unlock()
		rep.count(o, bytes)
		if rep.wantsNote() {
			rep.note(o.String())
		}
		touched[parentOf(o.path)] = true
		if o.kind == opMkdir {
			touched[o.path] = true
		}
	}

	// Progress for large passes.
	var filesDone, bytesDone atomic.Int64
	filesTotal := len(rest)
	if full && (len(rest) > 1000 || totalBytes > 256<<20) {
		every := r.ProgressEvery
		if every == 0 {
			every = 10 * time.Second
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				case <-tick.C:
					r.Logger.Info("reconcile progress",
						"files_done", filesDone.Load(), "files_total", filesTotal,
						"bytes_done", bytesDone.Load(), "bytes_total", totalBytes)
				}
			}
		}()
		defer func() { close(stop); wg.Wait() }()
	}

	// Topmost first; RemoveAll of a directory takes its children along.
	sort.Slice(removes, func(i, j int) bool { return removes[i].path < removes[j].path })
	removed := map[string]bool{}
	for _, o := range removes {
		if coveredBy(o.path, removed) {
			continue
		}
		removed[o.path] = true
		if err := t.RemoveAll(ctx, o.path); err != nil {
			if err := fail(o, err); err != nil {
				return err
			}
			continue
		}
		done(o, 0)
	}
	// Directories one depth level at a time, each level concurrently:
	// every parent exists before its children are created, and a level
	// of a wide tree costs one round trip time instead of one per entry.
	for _, level := range byDepth(mkdirs, func(o op) string { return o.path }, false) {
		err := parallel(ctx, r.Concurrency, len(level), func(i int) error {
			o := level[i]
			if err := t.Mkdir(ctx, o.path, o.src.Mode); err != nil {
				return fail(o, err)
			}
			done(o, 0)
			return nil
		})
		if err != nil {
			return err
		}
	}
	err := parallel(ctx, r.Concurrency, len(rest), func(i int) error {
		o := rest[i]
		var err error
		var n int64
		if o.overDir && r.TwoWay && (o.kind == opUpload || o.kind == opSymlink) {
			if err := r.clearForFile(ctx, t, o.path); err != nil {
				if errors.Is(err, ErrDisconnected) || ctx.Err() != nil {
					return err
				}
				r.logTypeConflict(o.path, "a "+opNames[o.kind]+" here, a directory with content on the peer", err)
				mu.Lock()
				rep.Conflicts++
				mu.Unlock()
				return nil
			}
		}
		switch o.kind {
		case opUpload:
			n, err = r.upload(ctx, t, o.path)
			if err == nil && r.OnTransfer != nil {
				r.OnTransfer(n)
			}
			filesDone.Add(1)
			bytesDone.Add(n)
		case opSymlink:
			err = t.Symlink(ctx, o.path, o.src.LinkTarget)
		case opChmod:
			err = t.Chmod(ctx, o.path, o.src.Mode)
		case opChtimes:
			err = t.Chtimes(ctx, o.path, o.src.ModTime)
		}
		if err != nil {
			return fail(o, err)
		}
		done(o, n)
		return nil
	})
	if err != nil {
		return err
	}
	ops, removes, mkdirs, rest = nil, nil, nil, nil
	// Directory mtimes, deepest first. Directories we wrote into get the
	// source's mtime back; others only where they differed.
	want := map[string]Entry{}
	for _, d := range dirTimes {
		want[d.Path] = d
	}
	for d := range touched {
		if d == "" {
			continue
		}
		if _, ok := want[d]; ok {
			continue
		}
		if e, _ := r.Source.Lstat(d); e != nil && e.Mode.IsDir() {
			want[d] = *e
		}
	}
	list := make([]Entry, 0, len(want))
	for _, e := range want {
		list = append(list, e)
	}
	// All writes are done; a level runs concurrently (setting a
	// directory's mtime leaves its siblings' and parent's alone), and the
	// deepest level first, so a parent's mtime is set after its children
	// changed.
	for _, level := range byDepth(list, func(e Entry) string { return e.Path }, true) {
		err := parallel(ctx, r.Concurrency, len(level), func(i int) error {
			e := level[i]
			if err := t.Chtimes(ctx, e.Path, e.ModTime); err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return fail(op{kind: opChtimes, path: e.Path}, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// byDepth groups items by the depth of their path, shallowest level first
// (or deepest first when deepest is set), each level sorted by path.
func byDepth[T any](items []T, pathOf func(T) string, deepest bool) [][]T {
	levels := map[int][]T{}
	var depths []int
	for _, it := range items {
		d := strings.Count(pathOf(it), "/")
		if _, ok := levels[d]; !ok {
			depths = append(depths, d)
		}
		levels[d] = append(levels[d], it)
	}
	sort.Ints(depths)
	if deepest {
		slices.Reverse(depths)
	}
	out := make([][]T, 0, len(depths))
	for _, d := range depths {
		l := levels[d]
		sort.Slice(l, func(i, j int) bool { return pathOf(l[i]) < pathOf(l[j]) })
		out = append(out, l)
	}
	return out
}

// coveredBy reports whether an ancestor of p is in dirs.
func coveredBy(p string, dirs map[string]bool) bool {
	for d := parentOf(p); d != ""; d = parentOf(d) {
		if dirs[d] {
			return true
		}
	}
	return false
}

// upload copies one file; the reader fails instead of hitting EOF if the
// file changed while being read, so a half-written file never lands.
func (r *Reconciler) upload(ctx context.Context, t Target, rel string) (int64, error) {
	f, err := r.Source.openFile(rel)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return 0, errSourceChanged // became a symlink meanwhile
		}
		return 0, err
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if !before.Mode().IsRegular() {
		return 0, errSourceChanged
	}
	sr := &stableReader{f: f, before: before}
	if err := t.WriteFile(ctx, rel, sr, before.Mode(), before.ModTime()); err != nil {
		if sr.changed {
			return 0, errSourceChanged
		}
		return 0, err
	}
	r.rememberLanded(Entry{Path: rel, Size: before.Size(), ModTime: before.ModTime()})
	return sr.n, nil
}

type stableReader struct {
	f       *os.File
	before  fs.FileInfo
	n       int64
	changed bool
}

func (s *stableReader) Read(p []byte) (int, error) {
	n, err := s.f.Read(p)
	s.n += int64(n)
	if err == io.EOF {
		after, serr := s.f.Stat()
		if serr != nil {
			return n, serr
		}
		if s.n != s.before.Size() || after.Size() != s.before.Size() || !after.ModTime().Equal(s.before.ModTime()) {
			s.changed = true
			return n, errSourceChanged
		}
	}
	return n, err
}

// parallel runs fn(0..n-1) on up to limit goroutines; the first error
// cancels the rest.
func parallel(ctx context.Context, limit, n int, fn func(i int) error) error {
	if n == 0 {
		return nil
	}
	if limit < 1 {
		limit = 1
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(limit)
	for i := 0; i < n; i++ {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error { return fn(i) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}
