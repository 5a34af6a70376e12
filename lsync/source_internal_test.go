package lsync

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

// TestSourceNeverFollowsSymlinks covers both ways a file is opened. With
// openat2 a symlink at the path or on the way to it is refused, even when
// it points inside the tree; the os.Root fallback (old kernels) follows
// links that stay inside the tree, but never one that leaves it.
func TestSourceNeverFollowsSymlinks(t *testing.T) {
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	mustMkdir(t, filepath.Join(dir, "real"))
	if err := os.WriteFile(filepath.Join(dir, "real", "page.html"), []byte("page"), 0o644); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"leak":       filepath.Join(outside, "secret"),
		"escape":     outside,
		"alias":      "real",
		"real/again": "page.html",
	} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	for _, mode := range []string{"openat2", "os.Root"} {
		t.Run(mode, func(t *testing.T) {
			src, err := OpenSource(dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			if mode == "os.Root" && src.cur.beneath != nil {
				src.cur.beneath.unavailable.Store(true)
			}
			f, err := src.openFile("real/page.html")
			if err != nil {
				t.Fatalf("regular file: %v", err)
			}
			if mode == "openat2" && (src.cur.beneath == nil || src.cur.beneath.unavailable.Load()) {
				_ = f.Close()
				t.Skip("openat2 is not available here")
			}
			b, _ := io.ReadAll(f)
			_ = f.Close()
			if string(b) != "page" {
				t.Fatalf("read %q", b)
			}
			refused := []string{"leak", "escape/secret", "alias/page.html", "real/again"}
			if mode == "os.Root" {
				refused = refused[:2]
			}
			for _, rel := range refused {
				f, err := src.openFile(rel)
				if err == nil {
					_ = f.Close()
					t.Errorf("%s: opened through a symlink", rel)
					continue
				}
				if mode == "openat2" && !errors.Is(err, syscall.ELOOP) {
					t.Errorf("%s: %v, want ELOOP (upload reads it as a file turned symlink)", rel, err)
				}
			}
		})
	}
}

// TestSourceWalkOrderAndSymlinks checks the walk: parents before children,
// lexical order, symlinks reported as links and never descended into,
// excluded subtrees skipped.
func TestSourceWalkOrderAndSymlinks(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"b", "b/c", "a", "cache/x"} {
		mustMkdir(t, filepath.Join(dir, d))
	}
	for _, f := range []string{"b/c/z", "b/y", "a/x", "top", "cache/x/f"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("b", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	ex, err := NewExcluder([]string{"cache/"})
	if err != nil {
		t.Fatal(err)
	}
	src, err := OpenSource(dir, ex)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var got []string
	if err := src.Walk(context.Background(), "", func(e Entry) error {
		got = append(got, e.Path)
		if e.Path == "link" && e.LinkTarget != "b" {
			t.Errorf("link target %q", e.LinkTarget)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"a", "a/x", "b", "b/c", "b/c/z", "b/y", "link", "top"}
	if !slices.Equal(got, want) {
		t.Errorf("walk = %v, want %v", got, want)
	}
	got = nil
	if err := src.Walk(context.Background(), "b", func(e Entry) error { got = append(got, e.Path); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"b/c", "b/c/z", "b/y"}; !slices.Equal(got, want) {
		t.Errorf("walk of b = %v, want %v", got, want)
	}
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}
