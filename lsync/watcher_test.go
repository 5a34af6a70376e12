package lsync

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

type recordingSink struct {
	mu      sync.Mutex
	events  []Event
	rescans []string
}

func (s *recordingSink) event(_ context.Context, ev Event) {
	s.mu.Lock()
	s.events = append(s.events, ev)
	s.mu.Unlock()
}

func (s *recordingSink) rescan(_ context.Context, reason string) {
	s.mu.Lock()
	s.rescans = append(s.rescans, reason)
	s.mu.Unlock()
}

func (s *recordingSink) snapshot() ([]Event, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.events...), append([]string(nil), s.rescans...)
}

func TestWatchLimitErrorNamesSysctl(t *testing.T) {
	root := t.TempDir()
	for i := 0; i < 5; i++ {
		if err := os.MkdirAll(filepath.Join(root, "d"+strconv.Itoa(i), "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	w := newWatcher(root, nil, slog.New(slog.DiscardHandler), fd)
	defer w.Close()
	added := 0
	add := w.addWatch
	w.addWatch = func(p string) (int32, error) {
		if added == 3 {
			return -1, &os.SyscallError{Syscall: "inotify_add_watch", Err: syscall.ENOSPC}
		}
		added++
		return add(p)
	}
	err = w.addTree(context.Background(), "", nil)
	var wl *WatchLimitError
	if !errors.As(err, &wl) {
		t.Fatalf("want WatchLimitError, got %v", err)
	}
	msg := err.Error()
	for _, want := range []string{"fs.inotify.max_user_watches", "needs 11 watches", strconv.Itoa(readWatchLimit())} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
}

func TestWatcherOverflowRescansAndNewDirsAreScanned(t *testing.T) {
	root := t.TempDir()
	w, err := NewWatcher(root, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.inject = make(chan []rawEvent)
	sink := &recordingSink{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, sink) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	// A directory tree that appears at once (mv from elsewhere, tar x):
	// its contents predate the watch and must still be reported.
	staging := t.TempDir()
	if err := os.MkdirAll(filepath.Join(staging, "new", "deep"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(staging, "new", "deep", "f.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(staging, "new"), filepath.Join(root, "new")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs, _ := sink.snapshot()
		var seen bool
		for _, e := range evs {
			seen = seen || e.Path == "new/deep/f.txt"
		}
		if seen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("file inside a moved-in directory not reported: %v", evs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Later writes in the new subtree are watched.
	if err := os.WriteFile(filepath.Join(root, "new", "deep", "g.txt"), []byte("y"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Overflow: a rescan is requested, the watcher keeps running.
	w.inject <- []rawEvent{{wd: -1, mask: unix.IN_Q_OVERFLOW}}
	for {
		evs, rescans := sink.snapshot()
		var seen bool
		for _, e := range evs {
			seen = seen || e.Path == "new/deep/g.txt"
		}
		if seen && len(rescans) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events %v rescans %v", evs, rescans)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if w.WatchedDirs() != 3 {
		t.Errorf("watching %d dirs, want 3", w.WatchedDirs())
	}
}

// TestWatcherNamesEventsInMovedDirectories: after a directory moves, the
// events of its subtree carry the new path (fsnotify kept reporting the
// old one until the directory was watched again, and the target kept the
// old names), and a directory moved out of the tree stops reporting.
func TestWatcherNamesEventsInMovedDirectories(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	for _, d := range []string{"a/b", "gone/sub"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	w, err := NewWatcher(root, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	sink := &recordingSink{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, sink) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	mv := func(from, to string) {
		t.Helper()
		if err := os.Rename(from, to); err != nil {
			t.Fatal(err)
		}
	}
	mv(filepath.Join(root, "a"), filepath.Join(root, "c"))
	if err := os.WriteFile(filepath.Join(root, "c", "b", "new.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	mv(filepath.Join(root, "gone"), filepath.Join(outside, "gone"))
	if err := os.WriteFile(filepath.Join(outside, "gone", "sub", "outside.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "last.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs, _ := sink.snapshot()
		seen := map[string]bool{}
		for _, e := range evs {
			seen[e.Op.String()+" "+e.Path] = true
		}
		if seen["create last.txt"] {
			for _, want := range []string{"rename a", "create c", "create c/b/new.txt", "rename gone"} {
				if !seen[want] {
					t.Errorf("no %q event in %v", want, evs)
				}
			}
			for _, e := range evs {
				if strings.HasPrefix(e.Path, "a/") || strings.Contains(e.Path, "outside.txt") {
					t.Errorf("stale or outside path reported: %+v", e)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events %v", evs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
