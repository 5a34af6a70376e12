// Package churn makes a live tree go through a burst of random changes of
// the kind a `git checkout`, a `composer install` or a CMS cache rebuild
// makes: creates, appends, overwrites, chmods, nested mkdirs, renames of
// files and of whole directories across the tree, deletions of files and
// of whole trees, and symlinks. The same seed gives the same sequence of
// operations, so that a failing round can be replayed.
//
// It is shared by the lsync model tests (against local and SSH targets)
// and by the benchmark harness (against lsyncd), and therefore imports no
// test package.
package churn

import (
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Options bounds one round.
type Options struct {
	Ops int // operations to attempt (default 2000)
	// MaxDepth bounds directory nesting (default 4).
	MaxDepth int
	// Pause, when set, sleeps between operations, so that a round spreads
	// over batches instead of landing in one.
	Pause time.Duration
	// PauseEvery sleeps Pause after every PauseEvery operations (default 1).
	PauseEvery int
}

// Stats counts what a round did, by operation.
type Stats map[string]int

func (s Stats) String() string {
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, s[k]))
	}
	return strings.Join(parts, " ")
}

// Tree is a model of the files and directories under Root that churn made
// or found, so that operations pick existing paths without listing the
// tree each time.
type Tree struct {
	Root  string
	rng   *rand.Rand
	dirs  []string        // relative; "" is the root
	files map[string]bool // files and symlinks
	seq   int
}

// New models the tree at root (which must exist) for seed.
func New(root string, seed uint64) (*Tree, error) {
	t := &Tree{Root: root, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), files: map[string]bool{}}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			rel = ""
		}
		if d.IsDir() {
			t.dirs = append(t.dirs, rel)
		} else {
			t.files[rel] = true
		}
		return nil
	})
	return t, err
}

// Files lists the files and symlinks the model says exist, sorted.
func (t *Tree) Files() []string {
	out := make([]string, 0, len(t.files))
	for f := range t.files {
		out = append(out, f)
	}
	sort.Strings(out)
	return out
}

func (t *Tree) abs(rel string) string { return filepath.Join(t.Root, filepath.FromSlash(rel)) }

func (t *Tree) name(prefix string) string {
	t.seq++
	return fmt.Sprintf("%s%04d", prefix, t.seq)
}

func (t *Tree) pickDir() string { return t.dirs[t.rng.IntN(len(t.dirs))] }

// pickFile returns a random file, or "" when there is none. The map is
// sorted first so that a seed always picks the same file.
func (t *Tree) pickFile() string {
	if len(t.files) == 0 {
		return ""
	}
	keys := make([]string, 0, len(t.files))
	for k := range t.files {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys[t.rng.IntN(len(keys))]
}

func depth(rel string) int {
	if rel == "" {
		return 0
	}
	return strings.Count(rel, "/") + 1
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func (t *Tree) content() []byte {
	n := t.rng.IntN(4096)
	if t.rng.IntN(20) == 0 {
		n = 64<<10 + t.rng.IntN(64<<10)
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + t.rng.IntN(26))
	}
	return b
}

// Run applies opts.Ops random operations and returns what it did.
// Operations the file system refuses (a rename into its own subtree, a
// directory that is not empty) are skipped, not errors; any other error
// stops the round.
func (t *Tree) Run(opts Options) (Stats, error) {
	if opts.Ops == 0 {
		opts.Ops = 2000
	}
	if opts.MaxDepth == 0 {
		opts.MaxDepth = 4
	}
	if opts.PauseEvery == 0 {
		opts.PauseEvery = 1
	}
	st := Stats{}
	for i := 0; i < opts.Ops; i++ {
		kind, err := t.step(opts)
		if err != nil {
			return st, fmt.Errorf("churn op %d (%s): %w", i, kind, err)
		}
		st[kind]++
		if opts.Pause > 0 && i%opts.PauseEvery == 0 {
			time.Sleep(opts.Pause)
		}
	}
	return st, nil
}

func (t *Tree) step(opts Options) (string, error) {
	r := t.rng.IntN(100)
	switch {
	case r < 22:
		return "create", t.create()
	case r < 32:
		return "append", t.modify(true)
	case r < 40:
		return "overwrite", t.modify(false)
	case r < 46:
		return "chmod", t.chmod()
	case r < 56:
		return "mkdir", t.mkdir(opts.MaxDepth)
	case r < 68:
		return "rename-file", t.renameFile()
	case r < 76:
		return "rename-dir", t.renameDir(opts.MaxDepth)
	case r < 86:
		return "delete-file", t.deleteFile()
	case r < 90:
		return "delete-tree", t.deleteTree()
	default:
		return "symlink", t.symlink()
	}
}

func (t *Tree) create() error {
	rel := join(t.pickDir(), t.name("f")+".txt")
	if err := os.WriteFile(t.abs(rel), t.content(), 0o644); err != nil {
		return err
	}
	t.files[rel] = true
	return nil
}

func (t *Tree) modify(appendTo bool) error {
	rel := t.pickFile()
	if rel == "" {
		return t.create()
	}
	if fi, err := os.Lstat(t.abs(rel)); err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	flag := os.O_WRONLY | os.O_TRUNC
	if appendTo {
		flag = os.O_WRONLY | os.O_APPEND
	}
	f, err := os.OpenFile(t.abs(rel), flag, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(t.content()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (t *Tree) chmod() error {
	modes := []fs.FileMode{0o600, 0o640, 0o644, 0o664, 0o755}
	if t.rng.IntN(3) == 0 && len(t.dirs) > 1 {
		d := t.dirs[1+t.rng.IntN(len(t.dirs)-1)]
		return os.Chmod(t.abs(d), []fs.FileMode{0o755, 0o750, 0o775}[t.rng.IntN(3)])
	}
	rel := t.pickFile()
	if rel == "" {
		return nil
	}
	if fi, err := os.Lstat(t.abs(rel)); err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	return os.Chmod(t.abs(rel), modes[t.rng.IntN(len(modes))])
}

func (t *Tree) mkdir(maxDepth int) error {
	parent := t.pickDir()
	if depth(parent) >= maxDepth {
		parent = ""
	}
	rel := join(parent, t.name("d"))
	levels := 1 + t.rng.IntN(3)
	for i := 0; i < levels && depth(rel) <= maxDepth; i++ {
		if err := os.Mkdir(t.abs(rel), 0o755); err != nil {
			return err
		}
		t.dirs = append(t.dirs, rel)
		// A new directory is filled at once, as an unpacker does: these
		// files race with the watch being added.
		for k := t.rng.IntN(4); k > 0; k-- {
			f := join(rel, t.name("f")+".txt")
			if err := os.WriteFile(t.abs(f), t.content(), 0o644); err != nil {
				return err
			}
			t.files[f] = true
		}
		rel = join(rel, t.name("d"))
	}
	return nil
}

func (t *Tree) renameFile() error {
	from := t.pickFile()
	if from == "" {
		return nil
	}
	to := join(t.pickDir(), t.name("r")+path.Ext(from))
	if t.rng.IntN(5) == 0 {
		// Replace an existing file, as an atomic save does.
		if other := t.pickFile(); other != "" && other != from {
			to = other
		}
	}
	if err := os.Rename(t.abs(from), t.abs(to)); err != nil {
		return err
	}
	delete(t.files, from)
	t.files[to] = true
	return nil
}

func (t *Tree) renameDir(maxDepth int) error {
	if len(t.dirs) < 2 {
		return nil
	}
	from := t.dirs[1+t.rng.IntN(len(t.dirs)-1)]
	parent := t.pickDir()
	if parent == from || strings.HasPrefix(parent, from+"/") {
		return nil // into its own subtree
	}
	to := join(parent, t.name("m"))
	if depth(to)+t.subtreeDepth(from) > maxDepth+2 {
		return nil
	}
	if err := os.Rename(t.abs(from), t.abs(to)); err != nil {
		return err
	}
	t.moveModel(from, to)
	return nil
}

func (t *Tree) subtreeDepth(rel string) int {
	deepest := 0
	for _, d := range t.dirs {
		if strings.HasPrefix(d, rel+"/") {
			deepest = max(deepest, depth(d)-depth(rel))
		}
	}
	return deepest
}

func moved(p, from, to string) (string, bool) {
	if p == from {
		return to, true
	}
	if strings.HasPrefix(p, from+"/") {
		return to + p[len(from):], true
	}
	return p, false
}

func (t *Tree) moveModel(from, to string) {
	for i, d := range t.dirs {
		t.dirs[i], _ = moved(d, from, to)
	}
	for f := range t.files {
		if nf, ok := moved(f, from, to); ok {
			delete(t.files, f)
			t.files[nf] = true
		}
	}
}

func (t *Tree) deleteFile() error {
	rel := t.pickFile()
	if rel == "" {
		return nil
	}
	if err := os.Remove(t.abs(rel)); err != nil {
		return err
	}
	delete(t.files, rel)
	return nil
}

func (t *Tree) deleteTree() error {
	if len(t.dirs) < 2 {
		return nil
	}
	rel := t.dirs[1+t.rng.IntN(len(t.dirs)-1)]
	if err := os.RemoveAll(t.abs(rel)); err != nil {
		return err
	}
	keep := t.dirs[:0]
	for _, d := range t.dirs {
		if _, in := moved(d, rel, ""); !in {
			keep = append(keep, d)
		}
	}
	t.dirs = keep
	for f := range t.files {
		if _, in := moved(f, rel, ""); in {
			delete(t.files, f)
		}
	}
	return nil
}

func (t *Tree) symlink() error {
	rel := join(t.pickDir(), t.name("l"))
	target := t.pickFile()
	if target == "" || t.rng.IntN(4) == 0 {
		target = "../dangling-" + t.name("x")
	} else {
		target = path.Base(target)
	}
	if err := os.Symlink(target, t.abs(rel)); err != nil {
		return err
	}
	t.files[rel] = true
	return nil
}

// Rounds is the number of seeds a churn model test runs: def in `make
// test`, LOCKSTEP_SOAK_ROUNDS under `make soak`.
func Rounds(def int) (int, error) {
	v := os.Getenv("LOCKSTEP_SOAK_ROUNDS")
	if v == "" {
		return def, nil
	}
	var n int
	if _, err := fmt.Sscanf(v, "%d", &n); err != nil || n < 1 {
		return 0, fmt.Errorf("LOCKSTEP_SOAK_ROUNDS=%q: want a positive number", v)
	}
	return n, nil
}

// ConvergeWithin is how soon after the last change of a burst the target
// must be identical: def (five times def under the race detector, which
// `make test` uses and which slows everything down several times, while
// other packages' tests share the two cores), or
// LOCKSTEP_CONVERGE_WITHIN, so that a soak on a loaded machine can widen
// it without editing the tests.
func ConvergeWithin(def time.Duration) (time.Duration, error) {
	v := os.Getenv("LOCKSTEP_CONVERGE_WITHIN")
	if v == "" {
		if RaceEnabled {
			return 5 * def, nil
		}
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("LOCKSTEP_CONVERGE_WITHIN: %w", err)
	}
	return d, nil
}
