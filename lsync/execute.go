package lsync

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
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

// execute runs ops: deletions, then directories (parents first), then
// files, links and attributes concurrently, then directory mtimes (deepest
// first, since writing into a directory changes its mtime).
func (r *Reconciler) execute(ctx context.Context, t Target, ops []op, dirTimes []Entry, rep *Report, full bool) error {
	r.intend(ops)
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
		if errors.Is(err, errSourceChanged) || errors.Is(err, ErrChangedOnTarget) || errors.Is(err, fs.ErrNotExist) && o.kind == opUpload {
			// Being written, or gone meanwhile: look again after the next
			// quiet period (its events are on their way too).
			rep.Retry = append(rep.Retry, o.path)
			return nil
		}
		rep.Errors = append(rep.Errors, &PathError{Path: o.path, Op: opNames[o.kind], Err: err})
		return nil
	}
	debug := r.Logger.Enabled(ctx, slog.LevelDebug)
	done := func(o op, bytes int64) {
		if debug {
			r.Logger.Debug("applied", "op", o.String())
		}
		if o.kind == opRemove {
			rep.state.del(o.path)
		} else {
			rep.state.putRecord(o.src.Path, r.recordOfOp(o))
		}
		mu.Lock()
		defer mu.Unlock()
		rep.count(o, bytes)
		if rep.wantsNote() {
			rep.note(o.String())
		}
		if o.reason == reasonMissing {
			r.targetEntries.Add(1) // the guard's base grows with the tree
			if !full && !rep.inPass {
				r.recentDeletes.add(time.Now(), -1) // live work replacing what it deleted
			}
		}
		touched[parentOf(o.path)] = true
		if o.kind == opMkdir && !rep.inPass {
			// A streamed pass sets a directory it created in the
			// directory's own visit, after its entries (see streamPass):
			// setting it here too would cost a request per directory.
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
		if o.merged && r.State != nil {
			if changed, err := r.changedOnPeer(ctx, t, o.path); err != nil || changed != "" {
				if err != nil {
					if err := fail(o, err); err != nil {
						return err
					}
				} else {
					r.Logger.Warn("two-way conflict: deleted here, but something below it changed on the peer; the peer's version wins and comes back",
						"path", o.path, "changed", changed)
					mu.Lock()
					rep.Conflicts++
					mu.Unlock()
				}
				continue
			}
		}
		if err := t.RemoveAll(ctx, o.path); err != nil {
			if err := fail(o, err); err != nil {
				return err
			}
			continue
		}
		done(o, 0)
	}
	// A directory of a streamed pass whose entries are all small files
	// and directories may be done in one request (see BatchDirTimer):
	// its new subdirectories made, its files landed, then its mtime set.
	var then *Entry
	var batched []op
	thenDone := false
	var thenErr error
	bw, batches := t.(BatchWriter)
	if batches {
		single := rest[:0]
		// Room in front for the directories, which go first in the
		// request when the directory is done in one (then, below).
		batched = make([]op, len(mkdirs), len(mkdirs)+len(rest))
		for _, o := range rest {
			if batchable(o) {
				batched = append(batched, o)
			} else {
				single = append(single, o)
			}
		}
		files := batched[len(mkdirs):]
		rest = single
		if dt, ok := t.(BatchDirTimer); ok && dt.DirBatches() && rep.inPass && len(dirTimes) == 1 &&
			len(removes) == 0 && len(rest) == 0 && len(mkdirs)+len(files) > 0 && oneBatch(bw, mkdirs, files) {
			then = &dirTimes[0]
			for _, list := range [][]op{mkdirs, files} {
				for _, o := range list {
					if parentOf(o.path) != then.Path {
						then = nil
						break
					}
				}
				if then == nil {
					break
				}
			}
			if then != nil {
				copy(batched, mkdirs)
				mkdirs = nil
			}
		}
		if then == nil {
			batched = files
		}
	}
	// Directories one depth level at a time, each level concurrently:
	// every parent exists before its children are created, and a level
	// of a wide tree costs one round trip time instead of one per entry.
	for _, level := range byDepth(mkdirs, func(o op) string { return o.path }, false) {
		err := parallel(ctx, r.Concurrency, len(level), func(i int) error {
			o := level[i]
			mctx := ctx
			var own *OwnerRequest
			if r.wantsOwner(o) {
				// A target that can gives the owner with the mkdir.
				own = &OwnerRequest{Owner: r.ownerFor(o)}
				mctx = WithOwner(ctx, own)
			}
			if err := t.Mkdir(mctx, o.path, o.src.Mode); err != nil {
				return fail(o, err)
			}
			var err error
			if own != nil && (own.Done || own.Err != nil) {
				o.ownSet = own.Err == nil
				err = r.chownOutcome(o, own.Err)
			} else {
				o.ownSet, err = r.chownSet(ctx, t, o)
			}
			if err != nil {
				return fail(o, err)
			}
			done(o, 0)
			return nil
		})
		if err != nil {
			return err
		}
	}
	if batches {
		if err := r.uploadBatches(ctx, bw, batched, fail, done, &filesDone, &bytesDone, then, &thenDone, &thenErr); err != nil {
			return err
		}
		if thenDone && thenErr != nil && !errors.Is(thenErr, fs.ErrNotExist) {
			if err := fail(op{kind: opChtimes, path: then.Path}, thenErr); err != nil {
				return err
			}
		}
	}
	err := parallel(ctx, r.Concurrency, len(rest), func(i int) error {
		o := rest[i]
		var err error
		var n int64
		owned := false // the upload set the owner itself (through the open file), or tried
		if o.keepPeer != nil {
			if err := r.keepPeerVersion(ctx, t, *o.keepPeer); err != nil {
				return fail(o, err)
			}
		}
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
			landed := o.src
			o.landed = &landed
			n, owned, err = r.upload(ctx, t, &o)
			// What the state records is the version that went out, not
			// the one the comparison saw: the file may have changed in
			// between, and a base the peer never held would later look
			// like the peer's own edit.
			landed.UID, landed.GID, landed.Owned = o.src.UID, o.src.GID, o.src.Owned
			o.src = landed
			if err == nil && r.OnTransfer != nil {
				r.OnTransfer(n)
			}
			if err == nil {
				r.Progress.transferred(n)
			}
			filesDone.Add(1)
			bytesDone.Add(n)
		case opSymlink:
			err = t.Symlink(ctx, o.path, o.src.LinkTarget)
		case opChmod:
			err = t.Chmod(ctx, o.path, o.src.Mode)
		case opChtimes:
			err = t.Chtimes(ctx, o.path, o.src.ModTime)
		case opChown:
			err = r.ownerStill(ctx, t, o)
		}
		if err == nil && (o.kind == opUpload && !owned || o.kind == opSymlink || o.kind == opChown || o.alsoChown) {
			o.ownSet, err = r.chownSet(ctx, t, o)
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
	if thenDone {
		delete(want, then.Path) // set with the batch
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

// oneBatch reports whether mkdirs and files fit one batch of bw.
func oneBatch(bw BatchWriter, mkdirs, files []op) bool {
	maxFiles, maxBytes := bw.BatchLimits()
	if len(mkdirs)+len(files) > maxFiles {
		return false
	}
	var size int64
	for _, o := range files {
		size += o.src.Size
	}
	return size <= int64(maxBytes)
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
// owned reports that the target set the owner while landing the file
// (OwnerRequest): the chown by path after landing is then not needed.
// o.ownSet is set when the target gave the file its owner.
func (r *Reconciler) upload(ctx context.Context, t Target, o *op) (n int64, owned bool, err error) {
	rel := o.path
	f, err := r.Source.openFile(rel)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return 0, false, errSourceChanged // became a symlink meanwhile
		}
		return 0, false, err
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return 0, false, err
	}
	if !before.Mode().IsRegular() {
		return 0, false, errSourceChanged
	}
	var own *OwnerRequest
	if r.wantsOwner(*o) {
		own = &OwnerRequest{Owner: r.ownerFor(*o)}
		ctx = WithOwner(ctx, own)
	}
	sr := &stableReader{f: f, before: before}
	write := t.WriteFile
	if gw, ok := t.(GuardedWriter); ok && o.guard {
		write = func(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time) error {
			return gw.WriteFileIf(ctx, rel, r, mode, mtime, o.expect)
		}
	}
	if err := write(ctx, rel, sr, before.Mode(), before.ModTime()); err != nil {
		if sr.changed {
			return 0, false, errSourceChanged
		}
		return 0, false, err
	}
	landed := Entry{Path: rel, Mode: before.Mode(), Size: before.Size(), ModTime: before.ModTime()}
	r.rememberLanded(landed)
	if o.landed != nil {
		*o.landed = landed
	}
	if own != nil && (own.Done || own.Err != nil) {
		o.ownSet = own.Err == nil
		return sr.n, true, r.chownOutcome(*o, own.Err)
	}
	return sr.n, false, nil
}

type stableReader struct {
	f       *os.File
	before  fs.FileInfo
	n       int64
	changed bool
}

// Size is the file's size when it was opened: targets size their
// buffers by it (a file that grows is caught at EOF anyway).
func (s *stableReader) Size() int64 { return s.before.Size() }

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

// chown gives o's path the source's owner and group. Targets that cannot
// (a wrapper, SFTP on a symlink) and peer users that may not are skipped:
// the latter said once, loudly, then ownership is off for this target.
// t is the target, seen through whichever interface the caller holds.
func (r *Reconciler) chown(ctx context.Context, t any, o op) error {
	_, err := r.chownSet(ctx, t, o)
	return err
}

// chownSet is chown, also reporting whether the path got the owner: the
// two-way state records an owner only once both sides have it.
func (r *Reconciler) chownSet(ctx context.Context, t any, o op) (bool, error) {
	if !r.wantsOwner(o) {
		return false, nil
	}
	c, ok := t.(Chowner)
	if !ok {
		return false, nil
	}
	err := c.Lchown(ctx, o.path, r.ownerFor(o))
	return err == nil, r.chownOutcome(o, err)
}

// ownerStill checks, right before a two-way chown alone, that the peer's
// entry still has the owner the merge saw: a chown made there since is
// the peer's change, compared again rather than overwritten (the window
// left is one round trip).
func (r *Reconciler) ownerStill(ctx context.Context, t Target, o op) error {
	if !r.TwoWay || !o.guard || o.expect == nil {
		return nil
	}
	e, err := t.Stat(ctx, o.path)
	if errors.Is(err, fs.ErrNotExist) {
		return ErrChangedOnTarget
	}
	if err != nil {
		return err
	}
	if e.Owned && (e.UID != o.expect.UID || e.GID != o.expect.GID) || e.Mode.Type() != o.expect.Mode.Type() {
		return ErrChangedOnTarget
	}
	return nil
}

// wantsOwner reports whether o's path is to get the source's owner.
func (r *Reconciler) wantsOwner(o op) bool {
	return r.keepsOwner() && o.src.Owned
}

// keepsOwner reports whether ownership is kept on this target.
func (r *Reconciler) keepsOwner() bool {
	return (r.Owner == OwnerNames || r.Owner == OwnerNumeric) && !r.chownOff.Load()
}

// chownOutcome is what a chown's error means for the operation: a peer
// user that may not chown turns ownership off for the target (said once).
func (r *Reconciler) chownOutcome(o op, err error) error {
	switch {
	case err == nil, errors.Is(err, errors.ErrUnsupported):
		return nil
	case errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EPERM):
		if r.chownOff.CompareAndSwap(false, true) {
			r.Logger.Warn("the peer user may not change ownership; files keep the SSH user's owner (connect as root to keep them, or set owner: false)",
				"path", o.path, "owner", r.ownerFor(o).String(), "uid", o.src.UID, "gid", o.src.GID, "err", err)
		}
		return nil
	}
	return err
}
