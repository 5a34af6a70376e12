package lsync

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// mapWatches is the watcher's former bookkeeping (two path-keyed maps),
// kept as the model the watch tree must agree with.
type mapWatches struct {
	byPath map[string]watch
	byWd   map[int32]string
	rm     func(int32)
}

func (m *mapWatches) set(rel string, wd int32, ino uint64) {
	if old, ok := m.byWd[wd]; ok && old != rel {
		m.rename(old, rel)
	}
	if prev, ok := m.byPath[rel]; ok && prev.wd != wd {
		delete(m.byWd, prev.wd)
	}
	m.byPath[rel] = watch{wd: wd, ino: ino}
	m.byWd[wd] = rel
}

func (m *mapWatches) rename(from, to string) {
	type moved struct {
		rel string
		wt  watch
	}
	var ms []moved
	for p, wt := range m.byPath {
		if under(p, from) {
			ms = append(ms, moved{to + p[len(from):], wt})
			delete(m.byPath, p)
		}
	}
	m.drop(to)
	for _, x := range ms {
		m.byPath[x.rel] = x.wt
		m.byWd[x.wt.wd] = x.rel
	}
}

func (m *mapWatches) drop(rel string) {
	for p, wt := range m.byPath {
		if under(p, rel) {
			delete(m.byPath, p)
			delete(m.byWd, wt.wd)
			m.rm(wt.wd)
		}
	}
}

func (m *mapWatches) ignored(wd int32) {
	if rel, ok := m.byWd[wd]; ok {
		if wt := m.byPath[rel]; wt.wd == wd {
			delete(m.byPath, rel)
		}
		delete(m.byWd, wd)
	}
}

func treeState(t *watchTree) map[string]watch {
	out := map[string]watch{}
	for wd, n := range t.byWd {
		if n.wd != wd {
			panic(fmt.Sprintf("node %q has wd %d, mapped from %d", n.path(), n.wd, wd))
		}
		if !n.is(n.path()) {
			panic("is() disagrees with path() for " + n.path())
		}
		if got := t.lookup(n.path()); got != n {
			panic("lookup(" + n.path() + ") finds another node")
		}
		out[n.path()] = watch{wd: n.wd, ino: n.ino}
	}
	return out
}

// TestWatchTreeAgreesWithPathMaps runs random watch bookkeeping (watches
// added top-down as the walk adds them, renames, drops, IN_IGNORED, a wd
// coming back under another name) on the tree and on the former maps and
// compares the watched paths and the watches removed after every step.
func TestWatchTreeAgreesWithPathMaps(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 15))
		var rmTree, rmMap []int32
		tree := newWatchTree()
		model := &mapWatches{byPath: map[string]watch{}, byWd: map[int32]string{}, rm: func(wd int32) { rmMap = append(rmMap, wd) }}
		rmT := func(wd int32) { rmTree = append(rmTree, wd) }
		next := int32(1)
		names := []string{"a", "b", "ab", "c"}
		randPath := func() string {
			var parts []string
			for range rng.IntN(4) {
				parts = append(parts, names[rng.IntN(len(names))])
			}
			return strings.Join(parts, "/")
		}
		watchedParent := func(rel string) bool {
			if rel == "" {
				return true
			}
			_, ok := model.byPath[parentOf(rel)]
			return ok
		}
		for step := range 3000 {
			var did string
			switch op := rng.IntN(10); {
			case op < 4: // a new watch, its parent watched
				rel := randPath()
				if !watchedParent(rel) {
					continue
				}
				if _, ok := model.byPath[rel]; ok && rng.IntN(2) == 0 {
					continue
				}
				wd, ino := next, uint64(rng.IntN(1000))
				next++
				tree.set(rel, wd, ino, rmT)
				model.set(rel, wd, ino)
				did = fmt.Sprintf("set %q %d", rel, wd)
			case op < 5: // a known wd found under another name (an unpaired move)
				if len(model.byWd) == 0 {
					continue
				}
				wds := slices.Sorted(maps.Keys(model.byWd))
				wd := wds[rng.IntN(len(wds))]
				old, rel := model.byWd[wd], randPath()
				if old == "" || rel == "" || under(rel, old) || !watchedParent(rel) {
					continue
				}
				ino := model.byPath[old].ino
				tree.set(rel, wd, ino, rmT)
				model.set(rel, wd, ino)
				did = fmt.Sprintf("set %q %d (was %q)", rel, wd, old)
			case op < 7: // a paired rename
				if len(model.byPath) == 0 {
					continue
				}
				paths := slices.Sorted(maps.Keys(model.byPath))
				from, to := paths[rng.IntN(len(paths))], randPath()
				if from == "" || to == "" || under(to, from) || !watchedParent(to) {
					continue
				}
				tree.rename(from, to, rmT)
				model.rename(from, to)
				did = fmt.Sprintf("rename %q %q", from, to)
			case op < 9:
				rel := randPath()
				tree.drop(rel, rmT)
				model.drop(rel)
				did = fmt.Sprintf("drop %q", rel)
			default: // IN_IGNORED
				if len(model.byWd) == 0 {
					continue
				}
				wds := slices.Sorted(maps.Keys(model.byWd))
				wd := wds[rng.IntN(len(wds))]
				if n, ok := tree.byWd[wd]; ok {
					tree.forget(n)
				}
				model.ignored(wd)
				did = fmt.Sprintf("ignored %d", wd)
			}
			if got := treeState(&tree); !maps.Equal(got, model.byPath) {
				t.Fatalf("seed %d step %d (%s): tree %v, maps %v", seed, step, did, got, model.byPath)
			}
			slices.Sort(rmTree)
			slices.Sort(rmMap)
			if !slices.Equal(rmTree, rmMap) {
				t.Fatalf("seed %d step %d (%s): tree removed watches %v, maps %v", seed, step, did, rmTree, rmMap)
			}
			rmTree, rmMap = rmTree[:0], rmMap[:0]
		}
	}
}

func TestDirNodePath(t *testing.T) {
	tree := newWatchTree()
	for _, rel := range []string{"", "a", "a/b", "a/bc", "ab/c/d"} {
		n := tree.ensure(rel)
		if got := n.path(); got != rel {
			t.Errorf("path of %q = %q", rel, got)
		}
		for _, other := range []string{"", "a", "b", "a/b", "ab/c", "xa/b", "a/b/c", "ab/c/d", "b/c/d", "a/bc"} {
			if got := n.is(other); got != (other == rel) {
				t.Errorf("node %q is(%q) = %v", rel, other, got)
			}
		}
	}
}
