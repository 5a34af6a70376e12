package lsync

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"maps"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lockstep-ha/lockstep/lsync/syncstate"
)

// StateStore is the merge base of two-way sync: what both sides last held
// for a path (see package syncstate).
type StateStore interface {
	Get(path string) (syncstate.Record, bool)
	Update(puts map[string]syncstate.Record, dels []string) error
	// Write is Update after the renames, in one transaction.
	Write(renames []syncstate.Rename, puts map[string]syncstate.Record, dels []string) error
	Move(from, to string) error
	Intend(recs map[string]syncstate.Record) error
	Intended(path string) (syncstate.Record, bool)
	IntendMove(from, to string) error
	ForgetIntents() error
}

// recordOf is what the state keeps of an entry.
func recordOf(e Entry) syncstate.Record {
	return syncstate.Record{Mode: uint32(e.Mode.Type() | modeBits(e.Mode)), Size: e.Size, MTimeNs: e.ModTime.UnixNano(), Link: e.LinkTarget}
}

// matches reports whether e is the version recorded in base. Mtimes
// compare at whole seconds when either side has no more (SFTP v3).
func matches(e Entry, base syncstate.Record) bool {
	mode := fs.FileMode(base.Mode)
	if e.Mode.Type() != mode.Type() || modeBits(e.Mode) != modeBits(mode) {
		return false
	}
	switch {
	case e.Mode.IsDir():
		return true
	case e.Mode&fs.ModeSymlink != 0:
		return e.LinkTarget == base.Link
	}
	return e.Size == base.Size && sameMTime(e.ModTime, time.Unix(0, base.MTimeNs))
}

// identical reports whether both sides hold the same version of a path
// (both absent included).
func identical(a, b *Entry) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return matches(*b, recordOf(*a))
}

// stateTx collects what a pass or batch learnt, to be written in one
// transaction at its end: the state may lag behind the trees after a
// crash (the next comparison finds them identical and records it), never
// run ahead of them. A batch's sub-passes (the subtrees it compares
// whole) share its stateTx, so that a batch costs one write to disk, not
// one per subtree.
type stateTx struct {
	mu sync.Mutex
	// renames are directory renames replayed on the target whose
	// records follow them (one-way, trusted state: see
	// followRenameInState). Written before puts and dels, which were
	// learnt after them.
	renames []syncstate.Rename
	puts    map[string]syncstate.Record
	dels    []string
	// flush, when set, writes a full transaction early (see
	// flushIfFullLocked).
	flush func(renames []syncstate.Rename, puts map[string]syncstate.Record, dels []string) error
	// failed is set once a write of this stateTx failed: what it held
	// is not in the state.
	failed bool
}

// rename records that the records under from follow a rename the target
// made.
func (s *stateTx) rename(from, to string) {
	s.mu.Lock()
	s.renames = append(s.renames, syncstate.Rename{From: from, To: to})
	s.mu.Unlock()
}

func (s *stateTx) put(e Entry) { s.putRecord(e.Path, recordOf(e)) }

// putRecord is put with the record made by the caller (two-way: with the
// owner both sides agree on).
func (s *stateTx) putRecord(p string, rec syncstate.Record) {
	if s == nil {
		return
	}
	s.mu.Lock()
	if s.puts == nil {
		n := 0
		if s.flush != nil {
			n = stateFlushEvery // a pass's chunk fills it: no growing
		}
		s.puts = make(map[string]syncstate.Record, n)
	}
	s.puts[p] = rec
	s.flushIfFullLocked()
	s.mu.Unlock()
}

func (s *stateTx) del(p string) {
	if s == nil {
		return
	}
	s.mu.Lock()
	delete(s.puts, p)
	for k := range s.puts {
		if strings.HasPrefix(k, p+"/") {
			delete(s.puts, k)
		}
	}
	s.dels = append(s.dels, p)
	s.flushIfFullLocked()
	s.mu.Unlock()
}

// commit writes what rep learnt to the state. It reports false when a
// write of rep's stateTx failed, now or earlier: the state then lacks
// some of it (renames included).
func (r *Reconciler) commit(rep *Report) bool {
	if r.State == nil || rep.state == nil {
		return true
	}
	tx := rep.state
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if err := r.State.Write(tx.renames, tx.puts, tx.dels); err != nil {
		// Not fatal: a state that lags only costs a comparison.
		r.Logger.Warn("sync state not updated; the next pass compares what it would have skipped", "err", err)
		tx.failed = true
	}
	tx.renames, tx.puts, tx.dels = nil, nil, nil
	return !tx.failed
}

// intend records, before ops run, the versions they will land on a
// two-way peer (see syncstate's intents). Failing to record them only
// costs the crash-recovery hint.
func (r *Reconciler) intend(ops []op) {
	if !r.TwoWay || r.State == nil {
		return
	}
	recs := map[string]syncstate.Record{}
	for _, o := range ops {
		if o.kind != opRemove {
			recs[o.path] = recordOf(o.src)
		}
	}
	if err := r.State.Intend(recs); err != nil {
		r.Logger.Warn("sync state: intents not recorded; a crash in this batch leaves its paths without a merge base", "err", err)
	}
}

// verdict is what the two-way merge makes of a path.
type verdict uint8

const (
	undecided verdict = iota // no merge base: the classic rules apply
	vEqual                   // both sides hold the same version: record it
	vPush                    // changed here only: push (a deletion included)
	vLeave                   // changed on the peer only: the peer pushes
	vWin                     // changed on both sides, this node's version wins
	vLose                    // changed on both sides, the peer's version wins
)

// merge decides a two-way path as a three-way merge against what both
// sides last held (the state), never by comparing the two nodes' clocks
// alone: changed on one side → that side wins, deletions included;
// changed on both → an edit beats a deletion, and between two edits the
// winner is the newer mtime, a tie going to the node name that sorts
// first — and the loser's version survives as a conflict copy. A path's
// owner is merged apart (observeOwner): a chown changes nothing this
// compares.
func (r *Reconciler) merge(rel string, src, dst *Entry) verdict {
	if !r.TwoWay || r.State == nil {
		return undecided
	}
	if identical(src, dst) {
		return vEqual
	}
	base, known := r.baseOf(rel, dst)
	changed := func(e *Entry) bool {
		if !known {
			return e != nil // new since nothing was known
		}
		return e == nil || !matches(*e, base)
	}
	here, there := changed(src), changed(dst)
	switch {
	case known && torn(src, base) && r.Source != nil && r.Source.landedAs(rel, base.Size, base.MTimeNs):
		// This side lost the data of a landed file (see torn): not an
		// edit to push. The peer's job finds it torn and puts its
		// version back.
		r.Logger.Warn("two-way: file is shorter or longer than the version that landed here but has its exact mtime (lost in a crash of this host before it reached the disk?); not pushed, the peer's version is to come back",
			"path", rel, "size", src.Size, "landed_size", base.Size)
		return vLeave
	case known && torn(dst, base) && src != nil && (r.Source == nil || !r.Source.landedAs(rel, base.Size, base.MTimeNs)):
		r.Logger.Warn("two-way: the peer's file is shorter or longer than the version that landed there but has its exact mtime (lost in a crash of the peer?); putting this node's version back",
			"path", rel, "peer_size", dst.Size, "landed_size", base.Size, "here", src != nil)
		return vPush
	}
	if !known && here && src != nil && r.delivered(rel, *src) {
		// The peer's delivery, untouched here: not a new version of
		// ours. If the peer has moved on since, its job brings that here.
		here = false
	}
	if !known && r.Logger.Enabled(context.Background(), slog.LevelDebug) {
		r.Logger.Debug("two-way merge without a base", "path", rel, "here", src != nil, "peer", dst != nil, "push", here && !there)
	}
	switch {
	case here && !there:
		return vPush
	case !here:
		return vLeave
	case src == nil:
		return vLeave // deleted here, edited there: the edit wins
	case dst == nil:
		return vPush // edited here, deleted there: the edit wins
	case src.Mode.IsDir() && dst.Mode.IsDir():
		// Two directories that differ in mode only: no data at stake.
		if r.newerOrFirst(*src, *dst) {
			return vPush
		}
		return vLeave
	case r.newerOrFirst(*src, *dst):
		return vWin
	}
	return vLose
}

// torn reports that e is a regular file holding the base's exact mtime,
// to the nanosecond, with another size: the shape a landed file takes
// when its host loses power before the file's data reached the disk (the
// rename and the mtime are journalled, the data may not be: an empty
// file). Pushed as an edit, it would replace the good copy on the other
// node. An editor's write moves the mtime, but the kernel's file clock
// ticks coarsely (milliseconds), so two writes on the node where the
// version was made can share one: merge therefore takes the shape for a
// torn landing only on the node the version was landed on (its delivery
// mark, here, names the base version; on the peer, this node's copy is
// the base version and was not landed here, so it started here). A
// whole-second mtime (SFTP v3, coarse filesystems) is never taken for a
// torn file.
func torn(e *Entry, base syncstate.Record) bool {
	return e != nil && e.Mode.IsRegular() && fs.FileMode(base.Mode).IsRegular() &&
		base.MTimeNs%int64(time.Second) != 0 && e.ModTime.UnixNano() == base.MTimeNs && e.Size != base.Size
}

// delivered reports that src, at rel, is a version the peer delivered
// here and that nothing here changed since: the watcher's tag, or the
// receiver's mark on the file.
func (r *Reconciler) delivered(rel string, src Entry) bool {
	if r.Delivered != nil && r.Delivered(rel) {
		return true
	}
	return r.Source != nil && r.Source.markedDelivered(rel, src)
}

// baseOf is what both sides last held at rel, dst being the peer's
// entry. A batch cut short (a crash between a write landing and its
// record) left its intent: a peer holding that very version received it,
// and that is what both last held.
func (r *Reconciler) baseOf(rel string, dst *Entry) (syncstate.Record, bool) {
	base, known := r.State.Get(rel)
	if !known && dst != nil {
		if intent, ok := r.State.Intended(rel); ok && matches(*dst, intent) {
			return intent, true
		}
	}
	return base, known
}

// newerOrFirst is the deterministic winner rule both nodes apply alike.
func (r *Reconciler) newerOrFirst(src, dst Entry) bool {
	if !sameMTime(src.ModTime, dst.ModTime) {
		return src.ModTime.After(dst.ModTime)
	}
	return r.Node < r.Target
}

// ConflictName is where the losing version of rel is kept: Syncthing's
// NAME.sync-conflict-YYYYMMDD-HHMMSS-NODE.EXT, in the same directory, the
// time being the losing version's mtime (UTC), so that both nodes name it
// alike.
func ConflictName(rel, node string, mtime time.Time) string {
	dir, base := path.Split(rel)
	ext := path.Ext(base)
	if ext == base || strings.HasPrefix(base, ".") && strings.Count(base, ".") == 1 {
		ext = "" // ".htaccess" has no extension
	}
	stem := strings.TrimSuffix(base, ext)
	return dir + stem + ".sync-conflict-" + mtime.UTC().Format("20060102-150405") + "-" + node + ext
}

// keepPeerVersion moves the peer's losing version of rel aside on the
// peer, under its conflict name, before this node's version replaces it;
// the copy then comes back here like any new file of the peer's.
func (r *Reconciler) keepPeerVersion(ctx context.Context, t Target, dst Entry) error {
	name := ConflictName(dst.Path, r.Target, dst.ModTime)
	// Two conflicts within one second must not share a name: the second
	// copy would replace the first.
	for i := 2; ; i++ {
		_, err := t.Stat(ctx, name)
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			return err
		}
		dir, base := path.Split(ConflictName(dst.Path, r.Target, dst.ModTime))
		ext := path.Ext(base)
		name = dir + strings.TrimSuffix(base, ext) + "-" + strconv.Itoa(i) + ext
	}
	if err := t.Rename(ctx, dst.Path, name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	r.Logger.Warn("two-way conflict: both nodes changed the path; this node's version wins, the peer's is kept as a conflict copy on both nodes",
		"path", dst.Path, "copy", name, "peer_mtime", dst.ModTime, "rule", "newer mtime wins, a tie goes to the node name sorting first; an edit beats a deletion")
	return nil
}

// changedOnPeer looks below a directory about to be deleted on the peer
// for anything that is not what both sides last held: a file the peer
// added or edited since. It returns the first such path.
func (r *Reconciler) changedOnPeer(ctx context.Context, t Target, dir string) (string, error) {
	var changed string
	err := t.Walk(ctx, dir, func(e Entry) error {
		if strings.HasPrefix(path.Base(e.Path), TempPrefix) {
			return nil
		}
		if base, ok := r.baseOf(e.Path, &e); !ok || !matches(e, base) {
			changed = e.Path
			return errEnough
		}
		return nil
	})
	if errors.Is(err, errEnough) {
		err = nil
	}
	return changed, err
}

// renameReplay is what to do on a two-way peer with a rename seen here.
type renameReplay uint8

const (
	replayRename renameReplay = iota // rename there too
	replayDone                       // the peer holds it under the new name already
	replayNot                        // compare both names path by path
)

// replayableRename decides how a rename seen in this tree goes to a
// two-way peer. Replayed only when the peer's old name holds what moved
// here and its new name is free: otherwise the rename may be the peer's
// own (its conflict copy, its replay of its user's rename, seen here) and
// the names reused since, and renaming would move or replace the peer's
// data without a merge. Already done when the peer's new name holds what
// moved here: the merge base then moves with the names, as it does after
// a replay.
func (r *Reconciler) replayableRename(ctx context.Context, t Target, rn Rename) (renameReplay, error) {
	if !r.TwoWay {
		return replayRename, nil
	}
	moved, err := r.Source.Lstat(rn.To)
	if err != nil || moved == nil {
		return replayNot, nil // moved on again: the paths tell
	}
	// sameAs tells whether the peer's name holds what moved here (and
	// whether it holds anything). A directory name says nothing of what
	// it holds: only the same entries (names, types, file sizes and
	// mtimes) one level down make it the directory that moved here.
	sameAs := func(name string) (exists, same bool, err error) {
		e, err := t.Stat(ctx, name)
		switch {
		case errors.Is(err, ErrDisconnected):
			return false, false, err
		case err != nil:
			return false, false, nil
		case e.Mode.Type() != moved.Mode.Type():
			return true, false, nil
		case !moved.Mode.IsDir():
			return true, identical(moved, &e), nil
		}
		here, ok, err := r.listing(ctx, r.Source.Walk, rn.To)
		if err != nil || !ok {
			return true, false, nil
		}
		there, ok, err := r.listing(ctx, t.Walk, name)
		if err != nil || !ok {
			return true, false, err
		}
		return true, maps.EqualFunc(here, there, func(a, b Entry) bool { return identical(&a, &b) }), nil
	}
	taken, done, err := sameAs(rn.To)
	switch {
	case err != nil:
		return replayNot, err
	case done:
		return replayDone, nil
	case taken:
		return replayNot, nil
	}
	if _, ok, err := sameAs(rn.From); ok {
		return replayRename, nil
	} else if err != nil {
		return replayNot, err
	}
	return replayNot, nil
}

// listing returns the entries directly below dir by name, leaving out
// excluded names and temp files; ok is false past a few thousand (a
// directory that big is not compared, the rename not replayed).
func (r *Reconciler) listing(ctx context.Context, walk func(context.Context, string, func(Entry) error) error, dir string) (map[string]Entry, bool, error) {
	const limit = 4096
	out := map[string]Entry{}
	err := walk(ctx, dir, func(e Entry) error {
		if len(out) == limit {
			return errTooMany
		}
		name := path.Base(e.Path)
		if !strings.HasPrefix(name, TempPrefix) && !r.Source.excluder.Excluded(e.Path, e.Mode.IsDir()) {
			out[name] = e
		}
		if e.Mode.IsDir() {
			return fs.SkipDir
		}
		return nil
	})
	if errors.Is(err, errTooMany) {
		return nil, false, nil
	}
	return out, err == nil, err
}

var errTooMany = errors.New("too many entries")
