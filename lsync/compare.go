package lsync

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lockstep-ha/lockstep/lsync/syncstate"
)

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
	opChown   // owner or group differs
)

var opNames = map[opKind]string{opRemove: "delete", opMkdir: "mkdir", opUpload: "upload", opSymlink: "symlink", opChmod: "chmod", opChtimes: "touch", opChown: "chown"}

type op struct {
	kind   opKind
	path   string
	src    Entry
	reason string
	// overDir: a file or symlink takes the place of a directory on the
	// target. In two-way mode the directory is removed only when empty.
	overDir bool
	// keepPeer: two-way, both sides changed and this node won: the
	// peer's version (dst) is moved to its conflict name first.
	keepPeer *Entry
	// merged: the three-way merge decided this removal; a directory goes
	// only if nothing below it changed on the peer since.
	merged bool
	// guard: the two-way merge decided this upload against dst as it
	// was (expect); the write must not replace anything else.
	guard  bool
	expect *Entry
	// landed receives the version an upload actually sent.
	landed *Entry
	// leaf: a removal of what the target holds as a non-directory; it
	// takes nothing else with it (the guard counts it without a listing).
	leaf bool
	// own, when set, is the owner the op gives its path instead of the
	// source's: two-way, the peer's own owner, changed there only, kept
	// through an upload that replaces its file (see withOwner).
	own *Owner
	// ownKeep is the owner the two-way state records once the op ran,
	// unless the op gave both sides the source's owner (ownSet).
	ownKeep syncstate.Owner
	// alsoChown: a chmod or touch that carries an owner changed here.
	alsoChown bool
	// ownSet is set once the op gave its path the owner.
	ownSet bool
}

func (o op) String() string { return opNames[o.kind] + " " + o.path + " (" + o.reason + ")" }

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

// dropLanded empties the landed cache. The worker calls it once it has
// been idle for a while after a full pass over a big tree: the cache then
// holds an arbitrary slice of that pass (its last landings), whose
// trailing events were handled meanwhile, and costs an idle daemon about
// 100 B per path.
func (r *Reconciler) dropLanded() {
	r.landedMu.Lock()
	defer r.landedMu.Unlock()
	r.landed, r.landedOld = nil, nil
}

// landedCacheOff makes every lookup in the landed cache miss. Tests set it
// (export_test.go) to prove that convergence never depends on a hit: the
// cache is empty after every restart and loses entries under churn.
var landedCacheOff atomic.Bool

func (r *Reconciler) lastLanded(rel string) (Entry, bool) {
	if landedCacheOff.Load() {
		return Entry{}, false
	}
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

// absenceIsNoDeletion: in two-way mode, rel missing from the source is
// not always a deletion to push (Source.notDeleted: an ancestor is a
// symlink out of the root, or rel is back). The ancestor itself, a
// directory on the peer and a symlink here, is a type conflict, kept and
// reported. Without this a peer user exchanging uploads/ with a link to
// /tmp (renameat2, in a loop) made this node delete the files under the
// other node's real uploads/, and that node then deleted them here too
// (TestHostilePeerSwapRaceTwoWay).
func (r *Reconciler) absenceIsNoDeletion(rel string) bool {
	return r.TwoWay && r.Source != nil && r.Source.notDeleted(rel)
}

// plan decides what rel needs. src or dst nil means absent on that side.
// suspect marks a path known to have changed since it was last landed (a
// live event, or a pending path carried across a disconnect): its content
// is compared when size and mtime match only at whole-second granularity.
func (r *Reconciler) plan(ctx context.Context, t Target, src, dst *Entry, live, suspect bool, tx *stateTx) (op, bool, error) {
	rel := ""
	if src != nil {
		rel = src.Path
	} else if dst != nil {
		rel = dst.Path
	}
	v := r.merge(rel, src, dst)
	if v == vEqual && r.Checksum && src != nil && dst != nil && src.Mode.IsRegular() && dst.Mode.IsRegular() {
		// Same size, mode and mtime on both sides: the same version for
		// the metadata. checksum: true also reads them, and two different
		// contents (two saves of one size within one clock tick) are
		// changes on both sides: the name tie decides, with a copy.
		same, err := r.sameContent(ctx, t, rel)
		if err != nil {
			return op{}, false, err
		}
		if !same {
			v = vLose
			if r.Node < r.Target {
				v = vWin
			}
		}
	}
	switch v {
	case vEqual:
		if src == nil {
			tx.del(rel)
			return op{}, false, nil
		}
		m, err := r.observeOwner(ctx, t, src, dst)
		if err != nil {
			return op{}, false, err
		}
		o, need := r.withOwner(src, dst, m, op{}, false)
		if !need {
			tx.putRecord(src.Path, r.recordOfOp(op{src: *src, ownKeep: o.ownKeep}))
		}
		return o, need, nil
	case vLeave:
		return op{}, false, nil
	case vLose:
		r.logConflict(*src, *dst)
		return op{}, false, errConflict
	case vPush:
		if src == nil {
			if !r.Delete || r.absenceIsNoDeletion(rel) {
				return op{}, false, nil
			}
			return op{kind: opRemove, path: rel, reason: reasonNotInSource, merged: true, leaf: dst != nil && !dst.Mode.IsDir()}, true, nil
		}
		o, need, err := r.compare(ctx, t, src, dst, suspect, true)
		if err != nil {
			return o, need, err
		}
		m, err := r.observeOwner(ctx, t, src, dst)
		if err != nil {
			return op{}, false, err
		}
		if m.v == ownOff {
			if !need && identical(src, dst) {
				tx.put(*src)
			}
			o, need, err = r.ownerOp(ctx, t, src, dst, o, need, err)
		} else {
			o, need = r.withOwner(src, dst, m, o, need)
			if !need && identical(src, dst) {
				tx.putRecord(src.Path, r.recordOfOp(op{src: *src, ownKeep: o.ownKeep}))
			}
		}
		o.guard, o.expect = true, dst
		return o, need, err
	case vWin:
		o, need, err := r.compare(ctx, t, src, dst, suspect, true)
		if need && err == nil && dst != nil && !dst.Mode.IsDir() {
			d := *dst
			o.keepPeer = &d
			o.guard = true // expect nothing: the peer's version was moved aside
		}
		if err == nil && need {
			m, err := r.observeOwner(ctx, t, src, dst)
			if err != nil {
				return op{}, false, err
			}
			o, need = r.withOwner(src, dst, m, o, need)
		}
		return o, need, err
	}
	if src == nil {
		if dst == nil {
			// Gone from both sides: a record of it would have trusted
			// passes look at it again and again.
			tx.del(rel)
			return op{}, false, nil
		}
		if !r.Delete || (r.TwoWay && !live) || r.absenceIsNoDeletion(rel) {
			return op{}, false, nil
		}
		return op{kind: opRemove, path: dst.Path, reason: reasonNotInSource, leaf: !dst.Mode.IsDir()}, true, nil
	}
	o, need, err := r.compare(ctx, t, src, dst, suspect, false)
	if err == nil && !need && identical(src, dst) {
		tx.put(*src)
	}
	return r.ownerOp(ctx, t, src, dst, o, need, err)
}

// ownerOp adds a chown where nothing else is to be done but the owner or
// group differs (what is written anyway gets its owner after landing).
// The comparison is made in the target's ids: with owner: names, the
// source's names mapped by the target (see OwnerMapper).
func (r *Reconciler) ownerOp(ctx context.Context, t Target, src, dst *Entry, o op, need bool, err error) (op, bool, error) {
	if need || err != nil || !r.keepsOwner() || src == nil || dst == nil || !src.Owned || !dst.Owned {
		return o, need, err
	}
	own := r.ownerOf(*src)
	uid, gid, err := targetIDs(ctx, t, own)
	if err != nil {
		return o, need, err
	}
	if uid == dst.UID && gid == dst.GID {
		return o, need, nil
	}
	return op{kind: opChown, path: src.Path, src: *src, reason: fmt.Sprintf("owner %s (%d:%d there) vs %d:%d", own, uid, gid, dst.UID, dst.GID)}, true, nil
}

// compare decides what src needs on a target holding dst. merged means
// the three-way merge already decided that this node's version goes:
// the classic two-way rules (newer mtime, name tie) no longer veto it.
func (r *Reconciler) compare(ctx context.Context, t Target, src, dst *Entry, suspect, merged bool) (op, bool, error) {
	twoWay := r.TwoWay && !merged
	o := op{path: src.Path, src: *src}
	switch {
	case src.Mode.IsDir():
		if dst == nil || !dst.Mode.IsDir() {
			o.kind, o.reason = opMkdir, reasonMissing
			if dst != nil {
				o.reason = "not a directory on target"
				// Unless this directory changed after the peer's symlink
				// was made (a symlink replaced by a directory here), the
				// two are a type conflict and both are kept; the peer,
				// for its part, never removes a directory with content
				// for its symlink. Timestamps are coarse (a few ms on
				// the filesystem, whole seconds over SFTP): a tie is a
				// conflict, not a win.
				if twoWay && dst.Mode&fs.ModeSymlink != 0 && (sameMTime(src.ModTime, dst.ModTime) || !src.ModTime.After(dst.ModTime)) {
					r.logTypeConflict(src.Path, "a directory here, a symlink at least as new on the peer", nil)
					return op{}, false, errConflict
				}
			}
			return o, true, nil
		}
		if modeBits(src.Mode) != modeBits(dst.Mode) {
			if twoWay && r.peerWins(*src, *dst) {
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
		o.kind, o.reason = opSymlink, reasonMissing
		if dst != nil {
			o.overDir = dst.Mode.IsDir()
			if twoWay && dst.Mode&fs.ModeSymlink != 0 && r.Target < r.Node {
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
		o.reason = reasonMissing
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
			if twoWay && r.Target < r.Node {
				return op{}, false, nil
			}
			o.kind, o.reason = opChmod, fmt.Sprintf("mode %v vs %v", modeBits(src.Mode), modeBits(dst.Mode))
			return o, true, nil
		}
		return op{}, false, nil
	}
	if twoWay && dst != nil && dst.Mode.IsRegular() && r.peerWins(*src, *dst) {
		r.logConflict(*src, *dst)
		return op{}, false, errConflict
	}
	return o, true, nil
}

// reasonMissing marks an operation that creates an entry on the target.
const reasonMissing = "missing"

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
		r.Logger.Warn("target refused the operation: it would leave the target root or go through a symlink there; the rest keeps syncing, this path is retried (from 2 s, backing off to 5 min)",
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
