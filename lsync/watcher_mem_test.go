package lsync

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// TestWatcherMemoryPerDirectory bounds what the watcher keeps per watched
// directory (issue 15: an idle daemon's private memory): 10,000
// directories two levels deep, as the scale benchmark's tree has them.
func TestWatcherMemoryPerDirectory(t *testing.T) {
	if testing.Short() {
		t.Skip("creates 10,000 directories")
	}
	root := t.TempDir()
	const top, per = 100, 99
	for i := range top {
		for j := range per {
			if err := os.MkdirAll(filepath.Join(root, fmt.Sprintf("d%03d", i), fmt.Sprintf("s%04d", i*per+j)), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	dirs := 1 + top + top*per
	if max := readWatchLimit(); max >= 0 && max < dirs+1000 {
		t.Skipf("fs.inotify.max_user_watches = %d, need %d", max, dirs)
	}
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	t0 := time.Now()
	w, err := NewWatcher(root, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	defer w.Close()
	after := heap()
	if w.WatchedDirs() != dirs {
		t.Fatalf("watching %d directories, want %d", w.WatchedDirs(), dirs)
	}
	per1 := float64(after-before) / float64(dirs)
	t.Logf("%d directories watched in %s: %.0f KiB retained, %.0f B per directory", dirs, took.Round(time.Millisecond), float64(after-before)/1024, per1)
	runtime.KeepAlive(w)
	if per1 > 110 {
		t.Errorf("the watcher keeps %.0f B per directory, want at most 110", per1)
	}
}
