package lsync

import (
	"slices"
	"strings"
)

// dirNode is one directory of the watch tree: a directory under the root
// that is watched (wd ≥ 0), or one that only holds watched directories
// below it (wd < 0: its own watch is gone, e.g. IN_IGNORED came first).
//
// The tree replaces two path-keyed maps (path → watch and wd → path): a
// node stores its own name only and paths are computed on demand, so a
// directory costs about half as much (issue 15: an idle daemon's private
// memory), and a rename of a directory is one re-link, whatever lies below
// it.
type dirNode struct {
	parent *dirNode
	name   string      // name in parent; "" for the root
	kids   *[]*dirNode // subdirectories, sorted by name; nil if none
	ino    uint64
	wd     int32
}

// watchTree maps watch descriptors to directories and relative paths to
// watches. The zero value is not usable: see newWatchTree.
type watchTree struct {
	top  *dirNode // the root (""), never nil
	byWd map[int32]*dirNode
}

func newWatchTree() watchTree {
	return watchTree{top: &dirNode{wd: -1}, byWd: map[int32]*dirNode{}}
}

// watched returns rel's watch, if rel is watched.
func (t *watchTree) watched(rel string) (watch, bool) {
	n := t.lookup(rel)
	if n == nil || n.wd < 0 {
		return watch{}, false
	}
	return watch{wd: n.wd, ino: n.ino}, true
}

// dirOf returns the path of the directory watched by wd.
func (t *watchTree) dirOf(wd int32) (string, bool) {
	n, ok := t.byWd[wd]
	if !ok {
		return "", false
	}
	return n.path(), true
}

// count is the number of watched directories.
func (t *watchTree) count() int { return len(t.byWd) }

// path computes n's path relative to the root, in one allocation.
func (n *dirNode) path() string {
	if n.parent == nil {
		return ""
	}
	size := -1
	for p := n; p.parent != nil; p = p.parent {
		size += len(p.name) + 1
	}
	b := make([]byte, size)
	i := size
	for p := n; p.parent != nil; p = p.parent {
		i -= len(p.name)
		copy(b[i:], p.name)
		if i > 0 {
			i--
			b[i] = '/'
		}
	}
	return string(b)
}

// is reports whether n's path is rel, without building the path.
func (n *dirNode) is(rel string) bool {
	for p := n; p.parent != nil; p = p.parent {
		if !strings.HasSuffix(rel, p.name) {
			return false
		}
		rel = rel[:len(rel)-len(p.name)]
		if p.parent.parent == nil {
			break
		}
		if !strings.HasSuffix(rel, "/") {
			return false
		}
		rel = rel[:len(rel)-1]
	}
	return rel == ""
}

func (n *dirNode) kid(name string) (int, bool) {
	if n.kids == nil {
		return 0, false
	}
	return slices.BinarySearchFunc(*n.kids, name, func(k *dirNode, name string) int { return strings.Compare(k.name, name) })
}

func (n *dirNode) child(name string) *dirNode {
	if i, ok := n.kid(name); ok {
		return (*n.kids)[i]
	}
	return nil
}

// lookup returns the node at rel, nil if there is none.
func (t *watchTree) lookup(rel string) *dirNode {
	n := t.top
	for rel != "" && n != nil {
		name, rest, _ := strings.Cut(rel, "/")
		n, rel = n.child(name), rest
	}
	return n
}

// ensure returns the node at rel, adding unwatched nodes on the way.
func (t *watchTree) ensure(rel string) *dirNode {
	n := t.top
	for rel != "" {
		name, rest, _ := strings.Cut(rel, "/")
		c := n.child(name)
		if c == nil {
			c = &dirNode{name: strings.Clone(name), wd: -1}
			t.attach(n, c)
		}
		n, rel = c, rest
	}
	return n
}

// attach makes c a child of n, under c's name (no child of that name may
// exist).
func (t *watchTree) attach(n, c *dirNode) {
	c.parent = n
	if n.kids == nil {
		n.kids = &[]*dirNode{c}
		return
	}
	i, _ := n.kid(c.name)
	*n.kids = slices.Insert(*n.kids, i, c)
}

// detach unlinks n from its parent, then the parents that are left
// holding nothing. The root stays.
func (t *watchTree) detach(n *dirNode) {
	for n.parent != nil {
		p := n.parent
		if i, ok := p.kid(n.name); ok && (*p.kids)[i] == n {
			*p.kids = slices.Delete(*p.kids, i, i+1)
			if len(*p.kids) == 0 {
				p.kids = nil
			}
		}
		n.parent = nil
		if p.wd >= 0 || p.kids != nil {
			return
		}
		n = p
	}
}

// set records that rel is watched by wd. inotify returns the same wd
// for a directory it already watches under another name (one that moved
// without the move being paired): that name and those below it are
// renamed, so that later events of that subtree carry current paths.
func (t *watchTree) set(rel string, wd int32, ino uint64, rmWatch func(int32)) {
	if old, ok := t.byWd[wd]; ok && !old.is(rel) {
		if from := old.path(); old.parent != nil && rel != "" && !under(rel, from) {
			t.rename(from, rel, rmWatch)
		} else {
			// The root under another name, another name as the root, or
			// a directory below itself: not a rename the tree can
			// express (nor the kernel do); forget the old name.
			t.forget(old)
		}
	}
	n := t.ensure(rel)
	if n.wd >= 0 && n.wd != wd {
		delete(t.byWd, n.wd)
	}
	n.wd, n.ino = wd, ino
	t.byWd[wd] = n
}

// forget drops n's watch from the map (the kernel dropped it already),
// keeping the directories below it.
func (t *watchTree) forget(n *dirNode) {
	if n.wd >= 0 && t.byWd[n.wd] == n {
		delete(t.byWd, n.wd)
	}
	n.wd = -1
	if n.kids == nil {
		t.detach(n)
	}
}

// rename moves the directory from, and those below it, to to; whatever
// was at to is dropped (the rename replaced it).
func (t *watchTree) rename(from, to string, rmWatch func(int32)) {
	var src *dirNode
	if from != "" && to != "" && !under(to, from) {
		if src = t.lookup(from); src != nil {
			t.detach(src)
		}
	}
	t.drop(to, rmWatch)
	if src == nil {
		return
	}
	parent, name := t.top, to
	if i := strings.LastIndexByte(to, '/'); i >= 0 {
		parent, name = t.ensure(to[:i]), to[i+1:]
	}
	src.name = strings.Clone(name)
	t.attach(parent, src)
}

// drop forgets rel and the directories below it and removes their
// watches.
func (t *watchTree) drop(rel string, rmWatch func(int32)) {
	if n := t.lookup(rel); n != nil {
		t.dropNode(n, rmWatch)
	}
}

func (t *watchTree) dropNode(n *dirNode, rmWatch func(int32)) {
	var walk func(n *dirNode)
	walk = func(n *dirNode) {
		if n.wd >= 0 {
			if t.byWd[n.wd] == n {
				delete(t.byWd, n.wd)
			}
			rmWatch(n.wd)
			n.wd = -1
		}
		if n.kids != nil {
			for _, c := range *n.kids {
				walk(c)
			}
		}
	}
	walk(n)
	if n == t.top {
		t.top.kids = nil
		return
	}
	t.detach(n)
}

// reset forgets every watch, removing each with rmWatch.
func (t *watchTree) reset(rmWatch func(int32)) {
	for wd := range t.byWd {
		rmWatch(wd)
	}
	clear(t.byWd)
	t.top = &dirNode{wd: -1}
}
