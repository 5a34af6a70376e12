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
	"time"
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
)

var opNames = map[opKind]string{opRemove: "delete", opMkdir: "mkdir", opUpload: "upload", opSymlink: "symlink", opChmod: "chmod", opChtimes: "touch"}

type op struct {
	kind   opKind
	path   string
	src    Entry
	reason string
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
		return op{kind: opRemove, path: dst.Path, reason: reasonNotInSource}, true, nil
	}
	o := op{path: src.Path, src: *src}
	switch {
	case src.Mode.IsDir():
		if dst == nil || !dst.Mode.IsDir() {
			o.kind, o.reason = opMkdir, reasonMissing
			if dst != nil {
				o.reason = "not a directory on target"
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
		o.kind, o.reason = opSymlink, reasonMissing
		if dst != nil {
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
		o.reason = reasonMissing
	case !dst.Mode.IsRegular():
		o.reason = "not a file on target"
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

// reasonMissing marks an operation that creates an entry on the target.
const reasonMissing = "missing"

var errConflict = errors.New("conflict lost to peer")

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
