//go:build unix

package lsync

import (
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// TestTrustedDiffMergesByName: the trusted comparison merges a
// directory's sorted entries with its sorted records. Names that sort
// around a directory's own name ("a-b" and "a.b" before "a/…", "a0"
// after) and records past the last entry are where a merge goes wrong.
func TestTrustedDiffMergesByName(t *testing.T) {
	dir := t.TempDir()
	old := time.Unix(1_600_000_000, 0)
	write := func(p, data string) {
		t.Helper()
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(full, old, old); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"a/x.txt", "a/y.txt", "a-b.txt", "a.b.txt", "a0.txt", "b.txt", "c/z.txt", "zz.txt"} {
		write(p, p)
	}
	r := trustingReconciler(t, dir)
	var diffs atomic.Int64 // calls of onDiff: a restart dials on the first
	onDiff := func() { diffs.Add(1) }
	if d, err := r.trustedDiff(t.Context(), onDiff); err != nil || !d.empty() || d.entries != 10 || diffs.Load() != 0 {
		t.Fatalf("in sync: %v, paths %q, scan %q, %d entries; want nothing of 10", err, d.paths, d.scan, d.entries)
	}

	write("a0.txt", "edited, longer")                            // changed, after "a/" in key order
	write("a-c.txt", "new")                                      // new, between two records
	write("a-new/y.txt", "y")                                    // a new directory: compared whole
	write("zzz.txt", "new")                                      // new, past the last record
	for _, p := range []string{"a.b.txt", "a/x.txt", "zz.txt"} { // gone from the source
		if err := os.Remove(filepath.Join(dir, p)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(filepath.Join(dir, "b.txt")); err != nil { // a file that became a directory
		t.Fatal(err)
	}
	write("b.txt/inner", "i")
	if err := os.RemoveAll(filepath.Join(dir, "c")); err != nil { // a directory that became a file
		t.Fatal(err)
	}
	write("c", "file now")
	if err := os.Chmod(filepath.Join(dir, "a"), 0o700); err != nil { // a mode change: its contents still compared
		t.Fatal(err)
	}
	d, err := r.trustedDiff(t.Context(), onDiff)
	if err != nil {
		t.Fatal(err)
	}
	wantPaths := []string{"a", "a-c.txt", "a.b.txt", "a/x.txt", "a0.txt", "c", "zz.txt", "zzz.txt"}
	wantScan := []string{"a-new", "b.txt"}
	if !slices.Equal(d.paths, wantPaths) || !slices.Equal(d.scan, wantScan) {
		t.Errorf("paths %q, scan %q;\nwant paths %q, scan %q", d.paths, d.scan, wantPaths, wantScan)
	}
	if diffs.Load() == 0 {
		t.Error("differences found, but onDiff was not called")
	}
}
