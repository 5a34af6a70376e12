package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/lockstep-ha/lockstep/integration/sshdtest"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
	"github.com/lockstep-ha/lockstep/lsync/sftptarget"
)

// Upper bounds only: CI has two cores and runs with -race.
const convergeTimeout = 60 * time.Second

// SFTP v3 carries whole seconds.
var sftpOpts = []lsynctest.Option{lsynctest.SecondModTimes()}

// testLogger sends slog output to t.Log, and drops it once the test is
// over (a late line must not panic the test binary).
func testLogger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.close) // registered first: runs after every other cleanup
	level := slog.LevelInfo
	if os.Getenv("LOCKSTEP_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) close() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

type sshJob struct {
	job *lsync.Job
	reg *prometheus.Registry
	cfg lsync.JobConfig
}

// startSSHJob runs a job pushing src to dst through srv until the end of
// the test.
func startSSHJob(t *testing.T, node string, srv *sshdtest.Server, src, dst string, mutate func(*lsync.JobConfig)) *sshJob {
	t.Helper()
	return startSSHJobWith(t, node, srv, src, dst, mutate, nil)
}

// startSSHJobWith is startSSHJob with a say in the job's options.
func startSSHJobWith(t *testing.T, node string, srv *sshdtest.Server, src, dst string, mutate func(*lsync.JobConfig), options func(*lsync.JobOptions)) *sshJob {
	t.Helper()
	logger := testLogger(t).With("node", node)
	off := time.Duration(0)
	cfg := lsync.JobConfig{
		Name:           "docroot",
		Source:         src,
		VerifyInterval: &off,
		Targets:        []lsync.TargetConfig{srv.TargetConfig("peer", dst)},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	var conns []lsync.Connector
	for _, tc := range cfg.Targets {
		c, err := sftptarget.NewConnector(tc, logger)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	reg := prometheus.NewRegistry()
	opts := lsync.JobOptions{
		Node: node, Logger: logger, Registerer: reg,
		ReconnectMin: 50 * time.Millisecond, ReconnectMax: 500 * time.Millisecond,
	}
	if options != nil {
		options(&opts)
	}
	job, err := lsync.NewJob(cfg, conns, opts)
	if err != nil {
		t.Fatal(err)
	}
	lsynctest.Start(t, job)
	return &sshJob{job: job, reg: reg, cfg: cfg}
}

// filesWritten sums lockstep_sync_files_total.
func (j *sshJob) filesWritten(t *testing.T) float64 {
	t.Helper()
	mfs, err := j.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != "lockstep_sync_files_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += counterValue(m)
		}
	}
	return sum
}

func counterValue(m *dto.Metric) float64 {
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return 0
}

func write(t *testing.T, root, rel, content string, mode fs.FileMode) {
	t.Helper()
	lsynctest.WriteFile(t, root, rel, content, mode, time.Time{})
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func mustNotExist(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s should not exist (err=%v)", p, err)
	}
}

func TestSSHSyncStartupReconcileExcludesAndLiveChanges(t *testing.T) {
	srv := sshdtest.Start(t)
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "docroot")
	old := time.Date(2019, 5, 6, 7, 8, 9, 0, time.UTC)

	// Initial tree, present before the daemon starts.
	lsynctest.WriteFile(t, src, "index.html", "<h1>hi</h1>", 0o644, old)
	lsynctest.WriteFile(t, src, "cgi/run.sh", "#!/bin/sh\necho ok\n", 0o755, old)
	lsynctest.WriteFile(t, src, "private/secret.txt", "s3cret", 0o600, old)
	lsynctest.WriteFile(t, src, ".git/config", "[core]", 0o644, old)
	lsynctest.WriteFile(t, src, "cache/a/b.bin", "cached", 0o644, old)
	lsynctest.WriteFile(t, src, ".index.html.swp", "vim swap", 0o644, old)
	if err := os.MkdirAll(filepath.Join(src, "empty/nested"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("index.html", filepath.Join(src, "home.html")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../etc/passwd", filepath.Join(src, "dangling")); err != nil {
		t.Fatal(err)
	}
	// Stale state on the target: an extraneous file and a crashed transfer.
	lsynctest.WriteFile(t, dst, "stale.php", "old", 0o644, old)
	lsynctest.WriteFile(t, dst, "cgi/"+lsync.TempPrefix+"run.sh.dead", "partial", 0o600, old)

	excluded := func(rel string) bool {
		return rel == ".git" || strings.HasPrefix(rel, ".git/") || strings.HasSuffix(rel, ".swp") ||
			strings.HasPrefix(rel, "cache/")
	}
	opts := append([]lsynctest.Option{lsynctest.Ignore(excluded), lsynctest.DirModTimes()}, sftpOpts...)
	// A write inside an excluded directory changes that directory's mtime
	// on the source only; directory mtimes are not compared after that.
	optsNoDirTimes := append([]lsynctest.Option{lsynctest.Ignore(excluded)}, sftpOpts...)
	startSSHJob(t, "web1", srv, src, dst, func(c *lsync.JobConfig) {
		c.Exclude = []string{".git/", "*.swp", "cache/**"}
	})
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, opts...)
	for _, p := range []string{".git", ".index.html.swp", "cache/a", "stale.php", "cgi/" + lsync.TempPrefix + "run.sh.dead"} {
		mustNotExist(t, filepath.Join(dst, p))
	}
	if l, err := os.Readlink(filepath.Join(dst, "dangling")); err != nil || l != "../../etc/passwd" {
		t.Errorf("symlink not preserved as a symlink: %q %v", l, err)
	}

	steps := []struct {
		name string
		do   func()
	}{
		{"create", func() {
			write(t, src, "new/deep/page.html", "fresh", 0o644)
			write(t, src, "new.css", "body{}", 0o640)
		}},
		{"modify", func() { write(t, src, "index.html", "<h1>v2</h1>", 0o644) }},
		{"chmod", func() {
			if err := os.Chmod(filepath.Join(src, "cgi/run.sh"), 0o700); err != nil {
				t.Fatal(err)
			}
		}},
		{"touch", func() {
			mt := time.Date(2018, 1, 1, 0, 0, 0, 0, time.UTC)
			if err := os.Chtimes(filepath.Join(src, "new.css"), mt, mt); err != nil {
				t.Fatal(err)
			}
		}},
		{"delete file", func() {
			if err := os.Remove(filepath.Join(src, "private/secret.txt")); err != nil {
				t.Fatal(err)
			}
		}},
		{"rename file", func() {
			if err := os.Rename(filepath.Join(src, "new.css"), filepath.Join(src, "style.css")); err != nil {
				t.Fatal(err)
			}
		}},
		{"rename dir", func() {
			if err := os.Rename(filepath.Join(src, "new"), filepath.Join(src, "renamed")); err != nil {
				t.Fatal(err)
			}
		}},
		{"delete dir", func() {
			if err := os.RemoveAll(filepath.Join(src, "empty")); err != nil {
				t.Fatal(err)
			}
		}},
		{"mkdir empty", func() {
			if err := os.MkdirAll(filepath.Join(src, "uploads/2024"), 0o775); err != nil {
				t.Fatal(err)
			}
		}},
		{"symlink retarget", func() {
			tmp := filepath.Join(src, "home.tmp")
			if err := os.Symlink("style.css", tmp); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, filepath.Join(src, "home.html")); err != nil {
				t.Fatal(err)
			}
		}},
		{"file replaced by dir", func() {
			if err := os.Remove(filepath.Join(src, "index.html")); err != nil {
				t.Fatal(err)
			}
			write(t, src, "index.html/inner", "now a dir", 0o644)
		}},
	}
	for _, st := range steps {
		st.do()
		lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, opts...)
		t.Logf("step %q converged", st.name)
	}
	write(t, src, "cache/new", "x", 0o644)
	write(t, src, ".git/HEAD", "ref", 0o644)
	write(t, src, "marker", "after the excluded writes", 0o644)
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, optsNoDirTimes...)
	for _, p := range []string{"cache/new", "cache/a", ".git"} {
		mustNotExist(t, filepath.Join(dst, p))
	}
}

func TestSSHSyncEditorSaveLargeFileAndBurst(t *testing.T) {
	srv := sshdtest.Start(t)
	src, dst := t.TempDir(), t.TempDir()
	write(t, src, "index.html", "v1", 0o644)
	startSSHJob(t, "web1", srv, src, dst, func(c *lsync.JobConfig) {
		c.Exclude = []string{"*.swp", "*~"}
		// The burst is removed again at the end: 2,000 of the tree's
		// 2,034 entries, which the mass-deletion guard would hold by
		// default (TestSSHSyncEmptyOrMissingSourceDeletesNothing and the
		// guard's own tests cover that).
		c.MaxDelete = "off"
	})
	opts := append([]lsynctest.Option{lsynctest.Ignore(func(rel string) bool {
		return strings.HasSuffix(rel, ".swp") || strings.HasSuffix(rel, "~")
	})}, sftpOpts...)
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, opts...)

	// Editor-style save: write a temp file beside, then rename over.
	for i := 0; i < 5; i++ {
		tmp := filepath.Join(src, fmt.Sprintf(".index.html.%d.tmp", i))
		if err := os.WriteFile(tmp, []byte(fmt.Sprintf("version %d", i+2)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(src, "index.html")); err != nil {
			t.Fatal(err)
		}
	}
	// vim-style: swap file, backup by rename, new file, backup removed.
	write(t, src, ".page.html.swp", "swap", 0o600)
	write(t, src, "page.html", "p1", 0o644)
	if err := os.Rename(filepath.Join(src, "page.html"), filepath.Join(src, "page.html~")); err != nil {
		t.Fatal(err)
	}
	write(t, src, "page.html", "p2", 0o644)
	if err := os.Remove(filepath.Join(src, "page.html~")); err != nil {
		t.Fatal(err)
	}
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, opts...)
	if b, _ := os.ReadFile(filepath.Join(dst, "index.html")); string(b) != "version 6" {
		t.Errorf("index.html on target: %q", b)
	}

	// A large file.
	big := randomBytes(t, 48<<20)
	if err := os.WriteFile(filepath.Join(src, "video.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, opts...)

	// A burst of thousands of files, as from tar x or git checkout.
	const files = 2000
	for i := 0; i < files; i++ {
		p := filepath.Join(src, "burst", fmt.Sprintf("d%02d", i%30), fmt.Sprintf("f%04d.php", i))
		if i%30 == i {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(p, []byte(fmt.Sprintf("<?php echo %d;", i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, opts...)
	t.Logf("burst of %d files converged %s after the last write", files, time.Since(start))

	// Deleting the burst propagates too.
	if err := os.RemoveAll(filepath.Join(src, "burst")); err != nil {
		t.Fatal(err)
	}
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, opts...)
}

func TestSSHSyncPeerDownThenUp(t *testing.T) {
	srv := sshdtest.Start(t)
	src, dst := t.TempDir(), t.TempDir()
	write(t, src, "a", "1", 0o644)
	j := startSSHJob(t, "web1", srv, src, dst, nil)
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	write(t, src, "a", "2", 0o644)
	write(t, src, "while-down/b", "b", 0o644)
	if err := os.Remove(filepath.Join(dst, "a")); err != nil { // drift on the target too
		t.Fatal(err)
	}
	waitStatus(t, j, func(s lsync.TargetStatus) bool { return !s.Connected && s.LastError != "" })
	time.Sleep(300 * time.Millisecond)
	if _, err := os.Stat(filepath.Join(dst, "while-down")); err == nil {
		t.Fatal("a change reached the target while its sshd was down")
	}
	if st := j.job.Status()[0]; st.Connected || st.PendingFiles == 0 {
		t.Errorf("status while down: %+v", st)
	}

	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)
	waitStatus(t, j, func(s lsync.TargetStatus) bool { return s.Connected && s.PendingFiles == 0 })

	// A hung peer (no RST, no answers) is detected too; the job catches up
	// once it thaws.
	srv.Freeze()
	write(t, src, "during-freeze", "x", 0o644)
	time.Sleep(200 * time.Millisecond)
	srv.Thaw()
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)
}

func waitStatus(t *testing.T, j *sshJob, ok func(lsync.TargetStatus) bool) {
	t.Helper()
	deadline := time.Now().Add(convergeTimeout)
	for {
		st := j.job.Status()
		if len(st) == 1 && ok(st[0]) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("target status never reached the expected state: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSSHSyncUnknownHostKeyRefused(t *testing.T) {
	srv := sshdtest.Start(t)
	src, dst := t.TempDir(), t.TempDir()
	write(t, src, "a", "1", 0o644)
	kh := filepath.Join(t.TempDir(), "known_hosts")
	if err := sshdtest.WriteKnownHosts(kh, "127.0.0.1:1", srv.HostKey()); err != nil { // some other host
		t.Fatal(err)
	}
	j := startSSHJob(t, "web1", srv, src, dst, func(c *lsync.JobConfig) {
		c.Targets[0].KnownHosts = kh
	})
	waitStatus(t, j, func(s lsync.TargetStatus) bool { return strings.Contains(s.LastError, "not in "+kh) })
	if entries, _ := os.ReadDir(dst); len(entries) != 0 {
		t.Errorf("files reached a target whose host key is unknown: %v", entries)
	}
	res := j.job.ReconcileOnce(context.Background())
	if len(res) != 1 || res[0].OK() || !errors.Is(res[0].Err, sftptarget.ErrHostKey) {
		t.Errorf("ReconcileOnce against an unknown host: %+v", res)
	}

	// Once the admin adds the key, the same running job connects.
	if err := sshdtest.WriteKnownHosts(kh, srv.Addr(), srv.HostKey()); err != nil {
		t.Fatal(err)
	}
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)
}

func TestSSHSyncTwoWayConverges(t *testing.T) {
	srv := sshdtest.Start(t)
	a, b := t.TempDir(), t.TempDir()
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	newer := old.Add(time.Hour)
	lsynctest.WriteFile(t, a, "only-a.txt", "a", 0o644, old)
	lsynctest.WriteFile(t, b, "only-b.txt", "b", 0o644, old)
	lsynctest.WriteFile(t, a, "both.txt", "a wins (newer)", 0o644, newer)
	lsynctest.WriteFile(t, b, "both.txt", "b loses", 0o644, old)
	twoWay := func(c *lsync.JobConfig) { c.TwoWay = true }
	ja := startSSHJob(t, "web1", srv, a, b, twoWay)
	jb := startSSHJob(t, "web2", srv, b, a, twoWay)
	lsynctest.WaitTreesEqual(t, a, b, convergeTimeout, sftpOpts...)
	if got, _ := os.ReadFile(filepath.Join(b, "both.txt")); string(got) != "a wins (newer)" {
		t.Errorf("conflict: newest mtime should win, got %q", got)
	}

	// Edits on both sides, including nested dirs, deletes and a rename.
	write(t, a, "from-a/x.html", "xa", 0o644)
	write(t, b, "from-b/y.html", "yb", 0o600)
	if err := os.Remove(filepath.Join(b, "only-a.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(a, "only-b.txt"), filepath.Join(a, "renamed-b.txt")); err != nil {
		t.Fatal(err)
	}
	lsynctest.WaitTreesEqual(t, a, b, convergeTimeout, sftpOpts...)
	for _, root := range []string{a, b} {
		mustNotExist(t, filepath.Join(root, "only-a.txt"))
		mustNotExist(t, filepath.Join(root, "only-b.txt"))
	}

	// No ping-pong: once converged, traffic stops.
	time.Sleep(500 * time.Millisecond)
	before := ja.filesWritten(t) + jb.filesWritten(t)
	time.Sleep(1500 * time.Millisecond)
	after := ja.filesWritten(t) + jb.filesWritten(t)
	if after != before {
		t.Errorf("files keep bouncing between the nodes: %v -> %v writes in 1.5s of quiet", before, after)
	}
	lsynctest.AssertTreesEqual(t, a, b, sftpOpts...)
}

// TestSSHSyncDoesNotFollowTargetSymlinks: a directory on the target that
// was replaced by a symlink pointing outside is never written through.
func TestSSHSyncDoesNotFollowTargetSymlinks(t *testing.T) {
	srv := sshdtest.Start(t)
	src, dst, outside := t.TempDir(), t.TempDir(), t.TempDir()
	write(t, src, "uploads/a.txt", "a", 0o644)
	if err := os.Symlink(outside, filepath.Join(dst, "uploads")); err != nil {
		t.Fatal(err)
	}
	startSSHJob(t, "web1", srv, src, dst, nil)
	// The reconciliation replaces the symlink by a real directory.
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("written outside the target root: %v", entries)
	}
	if fi, err := os.Lstat(filepath.Join(dst, "uploads")); err != nil || !fi.IsDir() {
		t.Errorf("uploads on target: %v %v", fi, err)
	}
	if !bytes.Equal(mustRead(t, filepath.Join(dst, "uploads/a.txt")), []byte("a")) {
		t.Error("content differs")
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
