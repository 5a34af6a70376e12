package lsync_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lockstep-ha/lockstep/integration/poll"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/localtarget"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// flakyConnector wraps a local target; while down, dialling fails and
// every operation of an open session reports a lost connection, like an
// SSH session to a crashed peer. failWrite makes WriteFile of one path
// fail with a per-path error.
type flakyConnector struct {
	inner     lsync.Connector
	down      atomic.Bool
	connects  atomic.Int32
	mu        sync.Mutex
	failWrite map[string]error
	// unlistable makes Walk report these target directories as
	// unreadable (permission), as a root-owned 0700 directory is to a
	// non-root sync user.
	unlistable map[string]bool
}

func (c *flakyConnector) Name() string { return c.inner.Name() }

func (c *flakyConnector) Connect(ctx context.Context) (lsync.Target, error) {
	if c.down.Load() {
		return nil, fmt.Errorf("dial: %w", lsync.ErrDisconnected)
	}
	t, err := c.inner.Connect(ctx)
	if err != nil {
		return nil, err
	}
	c.connects.Add(1)
	return &flakyTarget{Target: t, c: c}, nil
}

type flakyTarget struct {
	lsync.Target
	c *flakyConnector
}

func (t *flakyTarget) check() error {
	if t.c.down.Load() {
		return fmt.Errorf("session: %w", lsync.ErrDisconnected)
	}
	return nil
}

func (t *flakyTarget) Walk(ctx context.Context, sub string, fn func(lsync.Entry) error) error {
	if err := t.check(); err != nil {
		return err
	}
	t.c.mu.Lock()
	unlistable := maps.Clone(t.c.unlistable)
	t.c.mu.Unlock()
	if unlistable[sub] {
		return &fs.PathError{Op: "open", Path: sub, Err: syscall.EACCES}
	}
	return t.Target.Walk(ctx, sub, func(e lsync.Entry) error {
		if e.Mode.IsDir() && unlistable[e.Path] {
			e.ListErr = &fs.PathError{Op: "open", Path: e.Path, Err: syscall.EACCES}
			if err := fn(e); err != nil && !errors.Is(err, fs.SkipDir) {
				return err
			}
			return fs.SkipDir
		}
		return fn(e)
	})
}

func (t *flakyTarget) Stat(ctx context.Context, rel string) (lsync.Entry, error) {
	if err := t.check(); err != nil {
		return lsync.Entry{}, err
	}
	return t.Target.Stat(ctx, rel)
}

func (t *flakyTarget) WriteFile(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time) error {
	if err := t.check(); err != nil {
		return err
	}
	t.c.mu.Lock()
	ferr := t.c.failWrite[rel]
	t.c.mu.Unlock()
	if ferr != nil {
		return &fs.PathError{Op: "write", Path: rel, Err: ferr}
	}
	return t.Target.WriteFile(ctx, rel, r, mode, mtime)
}

func (t *flakyTarget) Mkdir(ctx context.Context, rel string, mode fs.FileMode) error {
	if err := t.check(); err != nil {
		return err
	}
	return t.Target.Mkdir(ctx, rel, mode)
}

func (t *flakyTarget) RemoveAll(ctx context.Context, rel string) error {
	if err := t.check(); err != nil {
		return err
	}
	return t.Target.RemoveAll(ctx, rel)
}

// WriteFileIf keeps the inner target's guard (two-way uploads are
// guarded; a wrapper that hid it would test a weaker target).
func (t *flakyTarget) WriteFileIf(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time, expect *lsync.Entry) error {
	if err := t.check(); err != nil {
		return err
	}
	g, ok := t.Target.(lsync.GuardedWriter)
	if !ok {
		return fmt.Errorf("inner target %T has no guarded write", t.Target)
	}
	return g.WriteFileIf(ctx, rel, r, mode, mtime, expect)
}

func (t *flakyTarget) Lchown(ctx context.Context, rel string, own lsync.Owner) error {
	if err := t.check(); err != nil {
		return err
	}
	if c, ok := t.Target.(lsync.Chowner); ok {
		return c.Lchown(ctx, rel, own)
	}
	return nil
}

func (t *flakyTarget) Symlink(ctx context.Context, rel, linkTarget string) error {
	if err := t.check(); err != nil {
		return err
	}
	return t.Target.Symlink(ctx, rel, linkTarget)
}

func (t *flakyTarget) Chtimes(ctx context.Context, rel string, mtime time.Time) error {
	if err := t.check(); err != nil {
		return err
	}
	return t.Target.Chtimes(ctx, rel, mtime)
}

func (t *flakyTarget) Chmod(ctx context.Context, rel string, mode fs.FileMode) error {
	if err := t.check(); err != nil {
		return err
	}
	return t.Target.Chmod(ctx, rel, mode)
}

func (t *flakyTarget) Rename(ctx context.Context, from, to string) error {
	if err := t.check(); err != nil {
		return err
	}
	return t.Target.Rename(ctx, from, to)
}

func (t *flakyTarget) Open(ctx context.Context, rel string) (io.ReadCloser, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	return t.Target.Open(ctx, rel)
}

func newFlaky(t *testing.T, tc lsync.TargetConfig) *flakyConnector {
	c, err := localtarget.NewConnector(tc)
	if err != nil {
		t.Fatal(err)
	}
	return &flakyConnector{inner: c, failWrite: map[string]error{}}
}

func statusOf(j *lsync.Job, target string) lsync.TargetStatus {
	for _, s := range j.Status() {
		if s.Target == target {
			return s
		}
	}
	return lsync.TargetStatus{}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, waitLimit, what, cond)
}

// waitIdle waits until the target's worker has nothing queued or running:
// equal trees alone do not say that the counters of the work that made
// them equal have been added yet.
func waitIdle(t *testing.T, j *lsync.Job, target string) {
	t.Helper()
	waitFor(t, target+" idle", func() bool {
		st := statusOf(j, target)
		return st.Connected && st.PendingFiles == 0 && !st.Rescanning && st.Progress == nil && !st.LastSync.IsZero()
	})
}

func TestJobTargetDownDoesNotBlockOthers(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "up", "flaky")
	mustWrite(t, src, "a.txt", "a")
	up := newFlaky(t, cfg.Targets[0])
	flaky := newFlaky(t, cfg.Targets[1])
	reg := prometheus.NewRegistry()
	j := lsynctest.StartJob(t, cfg, []lsync.Connector{up, flaky}, lsync.JobOptions{
		Registerer: reg, ReconnectMin: 20 * time.Millisecond, ReconnectMax: 100 * time.Millisecond,
	})
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
	lsynctest.WaitTreesEqual(t, src, dst[1], waitLimit)

	flaky.down.Store(true)
	mustWrite(t, src, "b.txt", "b")
	mustWrite(t, src, "dir/c.txt", "c")
	if err := os.Remove(filepath.Join(src, "a.txt")); err != nil {
		t.Fatal(err)
	}
	// The healthy target keeps up while the other one is down.
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
	waitFor(t, "flaky target reported disconnected with pending changes", func() bool {
		st := statusOf(j, "flaky")
		return !st.Connected && st.LastError != "" && (st.PendingFiles >= 3 || st.Rescanning) && st.Lag > 0
	})
	if st := statusOf(j, "up"); !st.Connected || st.LastSync.IsZero() {
		t.Errorf("healthy target status: %+v", st)
	}
	if d, _ := lsynctest.DiffTrees(src, dst[1]); len(d) == 0 {
		t.Fatal("target that is down received changes")
	}
	if v := metricValue(t, reg, "lockstep_sync_connected", "flaky"); v != 0 {
		t.Errorf("lockstep_sync_connected{target=flaky} = %v, want 0", v)
	}

	// Changes made while it is down are caught up by reconciliation.
	mustWrite(t, src, "dir/d.txt", "d")
	flaky.down.Store(false)
	lsynctest.WaitTreesEqual(t, src, dst[1], waitLimit)
	waitFor(t, "flaky target connected", func() bool { return statusOf(j, "flaky").Connected })
	if flaky.connects.Load() < 2 {
		t.Errorf("expected a reconnection, got %d connects", flaky.connects.Load())
	}
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
}

// metricValue returns the value of metric name{target=target}.
func metricValue(t *testing.T, reg *prometheus.Registry, name, target string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "target" && l.GetValue() == target {
					if m.GetGauge() != nil {
						return m.GetGauge().GetValue()
					}
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("metric %s{target=%q} not found", name, target)
	return 0
}

func TestJobPathErrorIsRetriedNotCounted(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "t1")
	c := newFlaky(t, cfg.Targets[0])
	c.failWrite["full.txt"] = syscall.ENOSPC
	reg := prometheus.NewRegistry()
	j := lsynctest.StartJob(t, cfg, []lsync.Connector{c}, lsync.JobOptions{Registerer: reg})
	mustWrite(t, src, "ok.txt", "fine")
	mustWrite(t, src, "full.txt", "no space")
	waitFor(t, "error reported with the path", func() bool {
		st := statusOf(j, "t1")
		return strings.Contains(st.LastError, "full.txt") && strings.Contains(st.LastError, "no space left") && st.PendingFiles > 0
	})
	if _, err := os.Stat(filepath.Join(dst[0], "ok.txt")); err != nil {
		t.Fatalf("unaffected path not synced: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dst[0], "full.txt")); err == nil {
		t.Fatal("failed file exists on target")
	}
	if v := metricValue(t, reg, "lockstep_sync_errors_total", "t1"); v < 1 {
		t.Errorf("errors_total = %v, want >= 1", v)
	}
	files := metricValue(t, reg, "lockstep_sync_files_total", "t1")
	// The disk frees up: the retry lands the file.
	c.mu.Lock()
	delete(c.failWrite, "full.txt")
	c.mu.Unlock()
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
	waitFor(t, "error cleared", func() bool {
		st := statusOf(j, "t1")
		return st.LastError == "" && st.PendingFiles == 0 && !st.LastSync.IsZero()
	})
	if v := metricValue(t, reg, "lockstep_sync_files_total", "t1"); v != files+1 {
		t.Errorf("files_total went from %v to %v; want exactly one more (the retried file)", files, v)
	}
}

// TestJobPathBacksOffAlone: a path the peer keeps refusing backs off on
// its own. Another path's passing failure is retried at once, not after
// the first path's grown backoff (one path with a wrong permission on the
// peer slowed down every retry of the job: under churn, files waited 30 s).
func TestJobPathBacksOffAlone(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "t1")
	c := newFlaky(t, cfg.Targets[0])
	c.failWrite["stuck.txt"] = syscall.EACCES
	reg := prometheus.NewRegistry()
	j := lsynctest.StartJob(t, cfg, []lsync.Connector{c}, lsync.JobOptions{Registerer: reg})
	mustWrite(t, src, "stuck.txt", "the peer refuses this one")
	// Five failures in a row: stuck.txt's next retry is 8 s away.
	waitFor(t, "five failures of stuck.txt", func() bool {
		return metricValue(t, reg, "lockstep_sync_errors_total", "t1") >= 5
	})
	c.mu.Lock()
	c.failWrite["blip.txt"] = syscall.ENOSPC
	c.mu.Unlock()
	mustWrite(t, src, "blip.txt", "fails once")
	waitFor(t, "blip.txt failed", func() bool {
		return strings.Contains(statusOf(j, "t1").LastError, "blip.txt")
	})
	c.mu.Lock()
	delete(c.failWrite, "blip.txt")
	c.mu.Unlock()
	cleared := time.Now()
	poll.Until(t, 10*time.Second, "blip.txt retried", func() bool {
		_, err := os.Stat(filepath.Join(dst[0], "blip.txt"))
		return err == nil
	})
	// Its first retry is due 0.5 s after the failure; stuck.txt's is 8 s.
	if took := time.Since(cleared); took > 3*time.Second {
		t.Errorf("blip.txt landed %v after its failure cleared: it waited for stuck.txt's backoff", took)
	}
	if st := statusOf(j, "t1"); st.PendingFiles != 1 || !strings.Contains(st.LastError, "stuck.txt") && !strings.Contains(st.LastError, "blip.txt") {
		t.Errorf("status %+v: want stuck.txt still pending", st)
	}
}

// changingTarget appends to the source file while the copy is half done.
type changingTarget struct {
	lsync.Target
	srcPath string
	once    sync.Once
}

func (t *changingTarget) WriteFile(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time) error {
	return t.Target.WriteFile(ctx, rel, readerFunc(func(p []byte) (int, error) {
		n, err := r.Read(p[:min(len(p), 1024)])
		t.once.Do(func() {
			f, ferr := os.OpenFile(t.srcPath, os.O_APPEND|os.O_WRONLY, 0)
			if ferr == nil {
				f.WriteString(strings.Repeat("more", 1000))
				f.Close()
			}
		})
		return n, err
	}), mode, mtime)
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func TestFileChangedDuringCopyDoesNotLand(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	mustWrite(t, src, "growing.log", strings.Repeat("x", 64<<10))
	s, err := lsync.OpenSource(src, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lt, err := localtarget.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer lt.Close()
	ct := &changingTarget{Target: lt, srcPath: filepath.Join(src, "growing.log")}
	r := &lsync.Reconciler{Source: s, Target: "t", Delete: true, Concurrency: 2, Logger: lsynctest.TestLogger(t)}
	rep, err := r.Reconcile(context.Background(), ct, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Retry) != 1 || rep.Retry[0] != "growing.log" || rep.Files != 0 {
		t.Fatalf("want the file queued for retry and not counted, got %+v", rep)
	}
	if entries, _ := os.ReadDir(dst); len(entries) != 0 {
		t.Fatalf("half-written file or temp left on target: %v", entries)
	}
	// Once quiet, the next pass lands the complete file.
	rep, err = r.Reconcile(context.Background(), lt, false)
	if err != nil || rep.Files != 1 {
		t.Fatalf("second pass: %+v %v", rep, err)
	}
	lsynctest.AssertTreesEqual(t, src, dst)
}

func TestReconcileCleansTempFilesAndChecksum(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	mtime := time.Unix(1_700_000_000, 0)
	lsynctest.WriteFile(t, src, "same-size.txt", "AAAA", 0o644, mtime)
	lsynctest.WriteFile(t, dst, "same-size.txt", "BBBB", 0o644, mtime) // same size+mtime, other content
	mustWrite(t, dst, "sub/"+lsync.TempPrefix+"index.html-abc", "partial")
	mustWrite(t, src, "sub/index.html", "full")
	s, err := lsync.OpenSource(src, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lt, err := localtarget.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer lt.Close()
	ctx := context.Background()
	r := &lsync.Reconciler{Source: s, Target: "t", Delete: true, Concurrency: 4, Logger: lsynctest.TestLogger(t)}
	if _, err := r.Reconcile(ctx, lt, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dst, "sub", lsync.TempPrefix+"index.html-abc")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("leftover temp file not cleaned: %v", err)
	}
	// size+mtime cannot see the difference ...
	if d, _ := lsynctest.DiffTrees(src, dst); len(d) != 1 || !strings.Contains(d[0], "content differs") {
		t.Fatalf("want only the content difference, got %v", d)
	}
	// ... checksum mode does, and a dry run reports it.
	r.Checksum = true
	rep, err := r.Reconcile(ctx, lt, true)
	if err != nil || rep.Matches() || rep.Files != 1 {
		t.Fatalf("dry checksum pass: %+v %v", rep, err)
	}
	if _, err := r.Reconcile(ctx, lt, false); err != nil {
		t.Fatal(err)
	}
	lsynctest.AssertTreesEqual(t, src, dst, lsynctest.DirModTimes())
	rep, err = r.Reconcile(ctx, lt, true)
	if err != nil || !rep.Matches() {
		t.Fatalf("after repair: %+v %v", rep, err)
	}
}

func TestVerificationRepairsDrift(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "t1")
	cfg.VerifyInterval = ptr(150 * time.Millisecond)
	mustWrite(t, src, "a/index.html", "original")
	lsynctest.StartJob(t, cfg, nil, lsync.JobOptions{})
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
	// Changes behind the daemon's back, on the target.
	mustWrite(t, dst[0], "a/index.html", "tampered!")
	mustWrite(t, dst[0], "intruder.php", "<?php")
	if err := os.Chmod(filepath.Join(dst[0], "a"), 0o777); err != nil {
		t.Fatal(err)
	}
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
}

// TestReconcileFollowsReplacedSourceRoot: the source root is a name. A
// docroot moved away and replaced by an empty directory (an unmounted
// volume, a deploy half done) deletes nothing on the target; replaced by
// a new release, the target follows it, deleting only what the new
// release lacks.
func TestReconcileFollowsReplacedSourceRoot(t *testing.T) {
	parent, dst := t.TempDir(), t.TempDir()
	src := filepath.Join(parent, "docroot")
	for _, root := range []string{src, dst} {
		mustWrite(t, root, "index.html", "v1")
		mustWrite(t, root, "old-only.html", "v1")
		for i := range 20 {
			mustWrite(t, root, "assets/"+strconv.Itoa(i)+".css", "v1")
		}
	}
	s, err := lsync.OpenSource(src, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lt, err := localtarget.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer lt.Close()
	r := &lsync.Reconciler{Source: s, Target: "t", Delete: true, Concurrency: 2, MaxDelete: lsync.MaxDelete{Percent: 50}, Logger: lsynctest.TestLogger(t)}

	// Moved away, nothing in its place yet: the job holds.
	if err := os.Rename(src, src+".old"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Reconcile(context.Background(), lt, false); !errors.Is(err, lsync.ErrSourceMissing) {
		t.Fatalf("missing root: want ErrSourceMissing, got %v", err)
	}
	// An empty directory in its place: nothing is deleted.
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	rep, err := r.Reconcile(context.Background(), lt, false)
	if err != nil || rep.Held != 23 || rep.Deleted != 0 || rep.InSync() {
		t.Fatalf("empty root: report %+v, %v; want 23 deletions held", rep, err)
	}
	if _, err := os.Stat(filepath.Join(dst, "index.html")); err != nil {
		t.Fatalf("target content was deleted: %v", err)
	}
	// The new release: the target follows it.
	if err := os.Remove(src); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, src+".new", "index.html", "v2")
	for i := range 20 {
		mustWrite(t, src+".new", "assets/"+strconv.Itoa(i)+".css", "v1")
	}
	if err := os.Rename(src+".new", src); err != nil {
		t.Fatal(err)
	}
	rep, err = r.Reconcile(context.Background(), lt, false)
	if err != nil || !rep.InSync() || rep.Deleted != 1 {
		t.Fatalf("new release: report %+v, %v; want old-only.html deleted", rep, err)
	}
	lsynctest.AssertTreesEqual(t, src, dst, lsynctest.NoModTimes())
}

// TestUnreadableTargetDirectoryIsAPathError: a directory on the target
// that cannot be listed is reported and left alone (nothing below it is
// deleted or assumed missing); the rest keeps syncing, and once it can be
// listed again its subtree is compared whole.
func TestUnreadableTargetDirectoryIsAPathError(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "peer")
	mustWrite(t, src, "a/x.txt", "x")
	mustWrite(t, src, "private/y.txt", "y")
	mustWrite(t, dst[0], "private/only-on-target.txt", "z")
	c := newFlaky(t, cfg.Targets[0])
	c.unlistable = map[string]bool{"private": true}
	job := lsynctest.StartJob(t, cfg, []lsync.Connector{c}, lsync.JobOptions{})
	poll.Until(t, waitLimit, "a/x.txt synced and private reported", func() bool {
		st := job.Status()
		_, err := os.Stat(filepath.Join(dst[0], "a", "x.txt"))
		return err == nil && strings.Contains(st[0].LastError, "private")
	})
	mustWrite(t, src, "a/live.txt", "still syncing")
	poll.Until(t, waitLimit, "live change synced", func() bool {
		_, err := os.Stat(filepath.Join(dst[0], "a", "live.txt"))
		return err == nil
	})
	if _, err := os.Stat(filepath.Join(dst[0], "private", "only-on-target.txt")); err != nil {
		t.Fatalf("deleted below an unreadable directory: %v", err)
	}
	c.mu.Lock()
	c.unlistable = nil
	c.mu.Unlock()
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
}
