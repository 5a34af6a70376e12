package syncstate

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func TestStoreRoundTripAndSubtreeDelete(t *testing.T) {
	p := FileName(t.TempDir(), "docroot", "web2")
	s, err := Open(p, "docroot -> web2")
	if err != nil {
		t.Fatal(err)
	}
	if !s.Fresh {
		t.Error("a new store is not Fresh")
	}
	recs := map[string]Record{
		"a":     {Mode: uint32(os.ModeDir | 0o755)},
		"a/b":   {Mode: 0o644, Size: 3, MTimeNs: 1_700_000_000_123_456_789},
		"a/b/c": {Mode: 0o644},
		"ab":    {Mode: uint32(os.ModeSymlink | 0o777), Link: "a/b"},
	}
	if err := s.Update(recs, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(nil, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{"a": false, "a/b": false, "a/b/c": false, "ab": true} {
		if _, ok := s.Get(path); ok != want {
			t.Errorf("Get(%q) present = %v, want %v", path, ok, want)
		}
	}
	if r, _ := s.Get("ab"); r != recs["ab"] {
		t.Errorf("ab = %+v, want %+v", r, recs["ab"])
	}
	s.Close()
	// Reopened: known, not fresh; the file is private.
	s, err = Open(p, "docroot -> web2")
	if err != nil || s.Fresh {
		t.Fatalf("reopen: %v fresh=%v", err, s != nil && s.Fresh)
	}
	if n, _ := s.Stats(); n != 1 {
		t.Errorf("entries = %d, want 1", n)
	}
	s.Close()
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestForeignOrCorruptStateIsSetAside(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.db")
	s, err := Open(p, "job a -> b")
	if err != nil {
		t.Fatal(err)
	}
	s.Update(map[string]Record{"x": {Mode: 0o644}}, nil)
	s.Close()
	// Another job's file at this name: not trusted.
	s, err = Open(p, "job c -> d")
	if !errors.Is(err, ErrSetAside) || s == nil || !s.Fresh {
		t.Fatalf("foreign state: %v", err)
	}
	if _, ok := s.Get("x"); ok {
		t.Error("a foreign record was kept")
	}
	s.Close()
	if err := os.WriteFile(p, []byte("not a bolt file, a torn write"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = Open(p, "job c -> d")
	if !errors.Is(err, ErrSetAside) || s == nil || !s.Fresh {
		t.Fatalf("corrupt state: %v", err)
	}
	s.Close()
	aside, _ := filepath.Glob(p + ".unusable-*")
	if len(aside) == 0 {
		t.Error("the unusable file was not kept aside for inspection")
	}
}

func TestStoreMoveKeepsTheSubtreeAndDropsTheReplaced(t *testing.T) {
	s, err := Open(FileName(t.TempDir(), "docroot", "web2"), "docroot -> web2")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	file := Record{Mode: 0o644, Size: 1}
	if err := s.Update(map[string]Record{
		"d": {Mode: uint32(os.ModeDir | 0o755)}, "d/f": file, "d/e/g": file,
		"dx/f": file, // shares the name's prefix, not the directory
		"n":    {Mode: uint32(os.ModeDir | 0o755)}, "n/old": file,
	}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Move("d", "n"); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{
		"d": false, "d/f": false, "d/e/g": false, "dx/f": true,
		"n": true, "n/f": true, "n/e/g": true, "n/old": false,
	} {
		if _, ok := s.Get(path); ok != want {
			t.Errorf("after Move: Get(%q) present = %v, want %v", path, ok, want)
		}
	}
}

func TestStoreIntentsOutliveACrashUntilRecorded(t *testing.T) {
	p := FileName(t.TempDir(), "docroot", "web2")
	s, err := Open(p, "docroot -> web2")
	if err != nil {
		t.Fatal(err)
	}
	v := Record{Mode: 0o644, Size: 3, MTimeNs: 7}
	if err := s.Intend(map[string]Record{"a/x": v, "a/y": v, "b": v}); err != nil {
		t.Fatal(err)
	}
	s.Close() // a crash before the batch's record
	if s, err = Open(p, "docroot -> web2"); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, ok := s.Intended("a/x"); !ok || got != v {
		t.Fatalf("intent after reopen = %+v %v, want %+v", got, ok, v)
	}
	// Recording a path (or deleting its directory) settles its intent;
	// the others stay until a complete pass forgets them.
	if err := s.Update(map[string]Record{"b": v}, []string{"a/y"}); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{"a/x": true, "a/y": false, "b": false} {
		if _, ok := s.Intended(path); ok != want {
			t.Errorf("Intended(%q) = %v, want %v", path, ok, want)
		}
	}
	if err := s.ForgetIntents(); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Intended("a/x"); ok {
		t.Error("intent left after ForgetIntents")
	}
}

func TestStoreIntendMoveCarriesTheBaseToTheNewNames(t *testing.T) {
	s, err := Open(FileName(t.TempDir(), "docroot", "web2"), "docroot -> web2")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f := Record{Mode: 0o644, Size: 5, MTimeNs: 9}
	if err := s.Update(map[string]Record{"d": {Mode: uint32(os.ModeDir | 0o755)}, "d/f": f, "dx": f}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.IntendMove("d", "m"); err != nil {
		t.Fatal(err)
	}
	if got, ok := s.Intended("m/f"); !ok || got != f {
		t.Errorf("Intended(m/f) = %+v %v, want %+v", got, ok, f)
	}
	if _, ok := s.Intended("m"); !ok {
		t.Error("no intent for the directory itself")
	}
	if _, ok := s.Intended("mx"); ok {
		t.Error("a sibling sharing the prefix was carried along")
	}
}

func TestChildrenListsOneLevel(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "s.db"), "id")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	recs := map[string]Record{}
	// "a-b" sorts between "a" and "a/x" bytewise: the skip over a's
	// subtree must not skip it, nor list "a/x" as a child of the root.
	for _, p := range []string{"a", "a/x", "a/x/deep", "a/y", "a-b", "a-b/z", "b", "c/orphan"} {
		recs[p] = Record{Mode: 0o644, Size: int64(len(p))}
	}
	if err := s.Update(recs, nil); err != nil {
		t.Fatal(err)
	}
	list := func(dir string) []string {
		var out []string
		if err := s.Children(dir, func(name string, r Record) error {
			if r.Size != int64(len(strings.TrimPrefix(dir+"/"+name, "/"))) {
				t.Errorf("%s/%s: record %+v", dir, name, r)
			}
			out = append(out, name)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	for dir, want := range map[string][]string{
		"": {"a", "a-b", "b"}, "a": {"x", "y"}, "a/x": {"deep"}, "a-b": {"z"}, "c": {"orphan"}, "b": nil, "zz": nil,
	} {
		if got := list(dir); !slices.Equal(got, want) {
			t.Errorf("Children(%q) = %q, want %q", dir, got, want)
		}
	}
}

func TestMoveFollowsARename(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "s.db"), "id")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	recs := map[string]Record{}
	for _, p := range []string{"a", "a/x", "a/y/z", "ab", "b", "b/old"} {
		recs[p] = Record{Mode: 0o644, Size: int64(len(p))}
	}
	if err := s.Update(recs, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Move("a", "b"); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"b": 1, "b/x": 3, "b/y/z": 5, "ab": 2}
	for _, p := range []string{"a", "a/x", "a/y/z", "ab", "b", "b/old", "b/x", "b/y/z"} {
		r, ok := s.Get(p)
		if size, exp := want[p]; ok != exp || ok && r.Size != size {
			t.Errorf("%s: %+v %v, want present=%v size %d", p, r, ok, exp, size)
		}
	}
}

// TestWriteAppliesRenamesThenDeletionsThenPuts: a batch's one
// transaction replays its renames in order before what it learnt below
// the new names, so that a put under a new name survives the rename and
// a record the rename carried can be removed.
func TestWriteAppliesRenamesThenDeletionsThenPuts(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "s.db"), "id")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	recs := map[string]Record{}
	for _, p := range []string{"a", "a/x", "a/gone", "c", "c/y"} {
		recs[p] = Record{Mode: 0o644, Size: int64(len(p))}
	}
	if err := s.Update(recs, nil); err != nil {
		t.Fatal(err)
	}
	// a → b, then b → d (a chain), c/y → b/y; then b... is d now.
	err = s.Write([]Rename{{From: "a", To: "b"}, {From: "b", To: "d"}, {From: "c/y", To: "d/y"}},
		map[string]Record{"d/new": {Mode: 0o644, Size: 99}}, []string{"d/gone"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"d": 1, "d/x": 3, "d/y": 3, "d/new": 99, "c": 1}
	for _, p := range []string{"a", "a/x", "b", "b/x", "c", "c/y", "d", "d/x", "d/y", "d/gone", "d/new", "a/gone"} {
		r, ok := s.Get(p)
		if size, exp := want[p]; ok != exp || ok && r.Size != size {
			t.Errorf("%s: %+v %v, want present=%v size %d", p, r, ok, exp, size)
		}
	}
}

// TestStatsKeepsTheCountWithoutWalkingTheFile checks the number of paths
// Stats reports against a model through random puts (new and existing
// paths), subtree deletions (present and absent) and renames (over
// existing paths and not), that a store written since it was created
// never walks its records to count them, that a reopened store takes the
// count it recorded, and that a count another writer left stale is not.
func TestStatsKeepsTheCountWithoutWalkingTheFile(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		p := filepath.Join(t.TempDir(), "state.db")
		s, err := Open(p, "job")
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(seed, 0))
		model := map[string]bool{}
		name := func() string {
			parts := []string{"a", "b", "c"}[:1+rng.IntN(3)]
			for i := range parts {
				parts[i] = string(rune('a' + rng.IntN(3)))
			}
			return strings.Join(parts, "/")
		}
		under := func(p string) []string {
			var out []string
			for k := range model {
				if k == p || strings.HasPrefix(k, p+"/") {
					out = append(out, k)
				}
			}
			return out
		}
		for range 300 {
			switch rng.IntN(3) {
			case 0:
				puts := map[string]Record{}
				for range 1 + rng.IntN(5) {
					puts[name()] = Record{Mode: 0o644, Size: rng.Int64N(100)}
				}
				if err := s.Update(puts, nil); err != nil {
					t.Fatal(err)
				}
				for k := range puts {
					model[k] = true
				}
			case 1:
				d := name()
				if err := s.Update(nil, []string{d}); err != nil {
					t.Fatal(err)
				}
				for _, k := range under(d) {
					delete(model, k)
				}
			case 2:
				from, to := name(), name()
				if from == to || strings.HasPrefix(to, from+"/") || strings.HasPrefix(from, to+"/") {
					continue // not a rename a filesystem makes
				}
				if err := s.Move(from, to); err != nil {
					t.Fatal(err)
				}
				moved := under(from)
				for _, k := range under(to) {
					delete(model, k)
				}
				for _, k := range moved {
					delete(model, k)
					model[to+strings.TrimPrefix(k, from)] = true
				}
			}
			if n, _ := s.Stats(); n != len(model) {
				t.Fatalf("seed %d: Stats = %d paths, model has %d", seed, n, len(model))
			}
		}
		if s.entries < 0 {
			t.Errorf("seed %d: a store written since it was created had to count its records", seed)
		}
		s.Close()
		s, err = Open(p, "job")
		if err != nil {
			t.Fatal(err)
		}
		if s.entries != int64(len(model)) {
			t.Errorf("seed %d: reopened, the recorded count is %d, model has %d", seed, s.entries, len(model))
		}
		s.Close()

		// A lockstep that predates the recorded count writes a path: the
		// count it left is stale, and is counted again.
		db, err := bolt.Open(p, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketEntries).Put([]byte("written/by/an/older/lockstep"), encode(Record{Mode: 0o644}))
		}); err != nil {
			t.Fatal(err)
		}
		db.Close()
		s, err = Open(p, "job")
		if err != nil {
			t.Fatal(err)
		}
		if s.entries >= 0 {
			t.Errorf("seed %d: a count left stale by another writer was trusted (%d)", seed, s.entries)
		}
		if n, _ := s.Stats(); n != len(model)+1 {
			t.Errorf("seed %d: after an older writer, Stats = %d paths, want %d", seed, n, len(model)+1)
		}
		if err := s.SetInUse(false); err != nil {
			t.Fatal(err)
		}
		s.Close()
		if s, err = Open(p, "job"); err != nil {
			t.Fatal(err)
		}
		if s.entries != int64(len(model)+1) {
			t.Errorf("seed %d: the count made after an older writer was not recorded: %d, want %d", seed, s.entries, len(model)+1)
		}
		s.Close()
	}
}

// TestReadingTheStateKeepsLittleOfItMapped walks a state of 120k paths as
// a trusted restart does (Stats, then Children of the root, which skips
// every subtree with a seek, then of every directory) and
// checks that this process never holds more than a slice of the file
// mapped: bbolt reads through a shared mapping, and without releasing
// its pages a walk holds the whole file in RSS.
func TestReadingTheStateKeepsLittleOfItMapped(t *testing.T) {
	p := filepath.Join(t.TempDir(), "state.db")
	const dirs, files = 600, 200
	fillState(t, p, dirs, files, "dir-%04d", "/a-rather-long-file-name-%04d.html")
	s, err := Open(p, "job")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Stats(); n != dirs*(files+1) {
		t.Fatalf("Stats = %d paths, want %d", n, dirs*(files+1))
	}
	peak := mappedKiB(t, p)
	// The root's listing skips every subtree with a seek.
	var top int
	if err := s.Children("", func(string, Record) error {
		if top++; top%50 == 0 {
			peak = max(peak, mappedKiB(t, p))
		}
		return nil
	}); err != nil || top != dirs {
		t.Fatalf("the root lists %d paths (%v), want %d", top, err, dirs)
	}
	peak = max(peak, mappedKiB(t, p))
	var seen int
	for d := range dirs {
		err := s.Children(fmt.Sprintf("dir-%04d", d), func(string, Record) error {
			if seen++; seen%1000 == 0 {
				peak = max(peak, mappedKiB(t, p))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if seen != dirs*files {
		t.Fatalf("Children listed %d paths, want %d", seen, dirs*files)
	}
	peak = max(peak, mappedKiB(t, p))
	t.Logf("state file %d KiB, at most %d KiB of it mapped while read", fi.Size()>>10, peak)
	if limit := int64(releaseAbove>>10 + 2048); peak > limit {
		t.Errorf("reading the state kept %d KiB of its %d KiB mapped (want at most %d)", peak, fi.Size()>>10, limit)
	}
}

// mappedKiB is this process's resident KiB of the mappings of file.
func mappedKiB(t *testing.T, file string) int64 {
	t.Helper()
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Skip("no /proc/self/smaps:", err)
	}
	var total int64
	in := false
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		switch {
		case len(fields) >= 5 && strings.Contains(fields[0], "-"): // a mapping's first line
			in = len(fields) >= 6 && fields[5] == file
		case in && len(fields) == 3 && fields[0] == "Rss:":
			var kb int64
			fmt.Sscan(fields[1], &kb)
			total += kb
		}
	}
	return total
}

// fillState records, in a new state at p, dirs directories named by
// dirName and in each files files named by fileName (after the
// directory's name), a transaction per directory.
func fillState(tb testing.TB, p string, dirs, files int, dirName, fileName string) {
	tb.Helper()
	s, err := Open(p, "job")
	if err != nil {
		tb.Fatal(err)
	}
	defer s.Close()
	for d := range dirs {
		dir := fmt.Sprintf(dirName, d)
		puts := map[string]Record{dir: {Mode: uint32(os.ModeDir | 0o755)}}
		for f := range files {
			puts[dir+fmt.Sprintf(fileName, f)] = Record{Mode: 0o644, Size: 256, MTimeNs: 1}
		}
		if err := s.Update(puts, nil); err != nil {
			tb.Fatal(err)
		}
	}
}
