package lsync_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

const waitLimit = 30 * time.Second

func ptr[T any](v T) *T { return &v }

func localJobConfig(t *testing.T, targets ...string) (lsync.JobConfig, string, []string) {
	t.Helper()
	src := t.TempDir()
	cfg := lsync.JobConfig{Name: "docroot", Source: src, VerifyInterval: ptr(time.Duration(0))}
	var dirs []string
	for _, name := range targets {
		d := t.TempDir()
		dirs = append(dirs, d)
		cfg.Targets = append(cfg.Targets, lsync.TargetConfig{Name: name, Path: d})
	}
	return cfg, src, dirs
}

func mustWrite(t *testing.T, root, rel, content string) {
	t.Helper()
	lsynctest.WriteFile(t, root, rel, content, 0o644, time.Time{})
}

func TestJobCreateModifyDeleteRename(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "t1")
	// Pre-existing content, pushed by the startup reconciliation.
	lsynctest.WriteFile(t, src, "index.html", "hello", 0o644, time.Unix(1_600_000_000, 123456789))
	lsynctest.WriteFile(t, src, "bin/run.sh", "#!/bin/sh\n", 0o755, time.Time{})
	lsynctest.WriteFile(t, src, "secret/key", "k", 0o600, time.Time{})
	if err := os.Mkdir(filepath.Join(src, "empty"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("index.html", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	// Stale target content is deleted.
	mustWrite(t, dst[0], "stale/old.txt", "old")

	lsynctest.StartJob(t, cfg, nil, lsync.JobOptions{})
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)

	// Live changes.
	mustWrite(t, src, "index.html", "hello, world")
	mustWrite(t, src, "a/b/c/deep.txt", "deep")
	if err := os.Mkdir(filepath.Join(src, "empty2"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(src, "secret/key")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(src, "bin/run.sh"), 0o700); err != nil {
		t.Fatal(err)
	}
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)

	// Directory rename: replayed as a rename on the target (the file
	// keeps its inode there), not a re-upload.
	before := inode(t, filepath.Join(dst[0], "a/b/c/deep.txt"))
	if err := os.Rename(filepath.Join(src, "a"), filepath.Join(src, "z")); err != nil {
		t.Fatal(err)
	}
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
	if after := inode(t, filepath.Join(dst[0], "z/b/c/deep.txt")); after != before {
		t.Errorf("directory rename re-uploaded the tree (inode %d -> %d)", before, after)
	}
	mustWrite(t, src, "z/b/after-rename.txt", "x")
	if err := os.RemoveAll(filepath.Join(src, "bin")); err != nil {
		t.Fatal(err)
	}
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
}

func TestJobSymlinksModesMtimesExcludes(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "t1")
	cfg.Exclude = []string{".git/", "*.swp", "cache/**"}
	outside := t.TempDir()
	mustWrite(t, outside, "secret", "must not be copied")
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(src, "abs-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(src, "dir-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../etc/passwd", filepath.Join(src, "rel-escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("missing", filepath.Join(src, "dangling")); err != nil {
		t.Fatal(err)
	}
	lsynctest.WriteFile(t, src, "old.txt", "old", 0o640, time.Unix(1_000_000_000, 0))
	lsynctest.WriteFile(t, src, "setgid-dir/f", "x", 0o600, time.Time{})
	if err := os.Chmod(filepath.Join(src, "setgid-dir"), 0o2750); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, src, ".git/HEAD", "ref")
	mustWrite(t, src, "sub/.git/config", "x")
	mustWrite(t, src, ".index.html.swp", "swap")
	mustWrite(t, src, "cache/page1", "cached")
	// Excluded content on the target is not ours to delete.
	mustWrite(t, dst[0], "cache/keep-me", "target-local cache")
	mtime := time.Unix(1_500_000_000, 0)
	if err := os.Chtimes(filepath.Join(src, "setgid-dir"), mtime, mtime); err != nil {
		t.Fatal(err)
	}

	ignore := lsynctest.Ignore(func(rel string) bool {
		return rel == ".git" || rel == "sub/.git" || filepath.Ext(rel) == ".swp" || filepath.Dir(rel) == "cache"
	})
	lsynctest.StartJob(t, cfg, nil, lsync.JobOptions{})
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit, ignore)
	// After the startup pass directory mtimes match as well.
	lsynctest.AssertTreesEqual(t, src, dst[0], ignore, lsynctest.DirModTimes())
	for _, rel := range []string{".git", "sub/.git", ".index.html.swp", "cache/page1"} {
		if _, err := os.Lstat(filepath.Join(dst[0], rel)); err == nil {
			t.Errorf("excluded %s was copied", rel)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dst[0], "cache/keep-me")); err != nil || string(b) != "target-local cache" {
		t.Errorf("excluded target file touched: %q %v", b, err)
	}
	if fi, err := os.Lstat(filepath.Join(dst[0], "abs-link")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("abs-link not copied as a symlink: %v %v", fi, err)
	}

	// Live: excluded changes are ignored, others propagate.
	mustWrite(t, src, ".git/ORIG_HEAD", "x")
	mustWrite(t, src, "cache/page2", "x")
	if err := os.Chmod(filepath.Join(src, "old.txt"), 0o604); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(src, "dangling")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("elsewhere", filepath.Join(src, "dangling")); err != nil {
		t.Fatal(err)
	}
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit, ignore)
	if _, err := os.Lstat(filepath.Join(dst[0], ".git")); err == nil {
		t.Error("excluded .git appeared on the target")
	}
}

func TestJobLargeFileAndBurst(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "t1")
	lsynctest.StartJob(t, cfg, nil, lsync.JobOptions{})
	big := make([]byte, 50<<20)
	for i := range big {
		big[i] = byte(i*7 + i>>13)
	}
	if err := os.WriteFile(filepath.Join(src, "big.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	for d := 0; d < 20; d++ {
		dir := filepath.Join(src, "burst", "d"+strconv.Itoa(d))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for f := 0; f < 100; f++ {
			if err := os.WriteFile(filepath.Join(dir, "f"+strconv.Itoa(f)+".html"), []byte(strings.Repeat("x", f)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	lsynctest.WaitTreesEqual(t, src, dst[0], 2*waitLimit)
}

func TestJobEditorStyleSave(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "t1")
	cfg.Exclude = []string{"*.swp"}
	mustWrite(t, src, "page.html", "v0")
	lsynctest.StartJob(t, cfg, nil, lsync.JobOptions{})
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
	for i := 1; i <= 20; i++ {
		// vim-like: swap file, backup rename, write new, delete backup.
		mustWrite(t, src, ".page.html.swp", "swap")
		if err := os.Rename(filepath.Join(src, "page.html"), filepath.Join(src, "page.html~")); err != nil {
			t.Fatal(err)
		}
		mustWrite(t, src, "page.html", "version "+strconv.Itoa(i))
		if err := os.Remove(filepath.Join(src, "page.html~")); err != nil {
			t.Fatal(err)
		}
		// Other editors: write a temp file, rename over.
		mustWrite(t, src, ".page.html.tmp123", "version "+strconv.Itoa(i)+" final")
		if err := os.Rename(filepath.Join(src, ".page.html.tmp123"), filepath.Join(src, "page.html")); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(src, ".page.html.swp")); err != nil {
			t.Fatal(err)
		}
	}
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestJobCreateThenDeleteSendsNothing(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "t1")
	cfg.Delay = 200 * time.Millisecond // both events surely in one batch
	cfg.MaxDelay = time.Second
	reg := prometheus.NewRegistry()
	j := lsynctest.StartJob(t, cfg, nil, lsync.JobOptions{Registerer: reg})
	// The connect pass must be over: a short-lived file it walks past is
	// rightly sent and then deleted, which is not what this test counts.
	waitFor(t, "connect pass done", func() bool { return !statusOf(j, "t1").LastVerified.IsZero() })
	for i := 0; i < 10; i++ {
		mustWrite(t, src, "short-lived"+strconv.Itoa(i), "x")
		if err := os.Remove(filepath.Join(src, "short-lived"+strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(t, src, "marker", "m")
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
	// The marker is on the target once renamed into place, which is a
	// moment before its batch is counted.
	waitFor(t, "marker counted", func() bool { return metricValue(t, reg, "lockstep_sync_files_total", "t1") >= 1 })
	waitIdle(t, j, "t1")
	if v := metricValue(t, reg, "lockstep_sync_files_total", "t1"); v != 1 {
		t.Fatalf("files_total = %v, want 1 (the marker only)", v)
	}
}

// TestJobRunsAgain: the daemon restarts a job that returned (a failure,
// a reload) by calling Run again on the same job.
func TestJobRunsAgain(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "peer")
	job, err := lsync.NewJob(cfg, lsynctest.LocalConnectors(t, cfg), lsync.JobOptions{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 3; round++ {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- job.Run(ctx) }()
		name := "round" + strconv.Itoa(round) + ".txt"
		mustWrite(t, src, name, "x")
		lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		// Changed while stopped: the next run's startup pass carries it.
		mustWrite(t, src, "while-stopped-"+name, "y")
	}
	job.Stop()
}
