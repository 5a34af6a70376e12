package lsynctest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
)

// Snapshot records everything about a tree that a stray write could
// change: every name (the root included), its type, mode, owner, size,
// mtime (nanoseconds) and content (SHA-256) or symlink target. Symlinks
// are never followed.
func Snapshot(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v uid=%d gid=%d size=%d mtime=%d", fi.Mode(), st.Uid, st.Gid, fi.Size(), fi.ModTime().UnixNano())
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + l
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h := sha256.Sum256(b)
			desc += " sha256=" + hex.EncodeToString(h[:])
		}
		rel, _ := filepath.Rel(root, p)
		out[filepath.ToSlash(rel)] = desc
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", root, err)
	}
	return out
}

// AssertSnapshotUnchanged fails the test when root differs in any way
// from before (a Snapshot taken earlier).
func AssertSnapshotUnchanged(t testing.TB, root string, before map[string]string) {
	t.Helper()
	after := Snapshot(t, root)
	var diffs []string
	for k, v := range before {
		if a, ok := after[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: removed (was %s)", k, v))
		} else if a != v {
			diffs = append(diffs, fmt.Sprintf("%s: %s -> %s", k, v, a))
		}
	}
	for k, v := range after {
		if _, ok := before[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: appeared (%s)", k, v))
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		t.Errorf("%s changed (it is outside the target root and must never be touched):\n  %s", root, strings.Join(diffs, "\n  "))
	}
}
