package lsync_test

import (
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/localtarget"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// secondsConnector emulates an SFTP v3 peer on top of a flaky local
// target: mtimes are stored and reported in whole seconds only.
type secondsConnector struct {
	*flakyConnector
	opens atomic.Int32 // target files read back (content comparisons)
}

func (c *secondsConnector) Connect(ctx context.Context) (lsync.Target, error) {
	t, err := c.flakyConnector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &secondsTarget{Target: t, c: c}, nil
}

type secondsTarget struct {
	lsync.Target
	c *secondsConnector
}

func truncSecond(e lsync.Entry) lsync.Entry {
	e.ModTime = e.ModTime.Truncate(time.Second)
	return e
}

func (t *secondsTarget) Walk(ctx context.Context, sub string, fn func(lsync.Entry) error) error {
	return t.Target.Walk(ctx, sub, func(e lsync.Entry) error { return fn(truncSecond(e)) })
}

func (t *secondsTarget) Stat(ctx context.Context, rel string) (lsync.Entry, error) {
	e, err := t.Target.Stat(ctx, rel)
	return truncSecond(e), err
}

func (t *secondsTarget) WriteFile(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time) error {
	return t.Target.WriteFile(ctx, rel, r, mode, mtime.Truncate(time.Second))
}

func (t *secondsTarget) Chtimes(ctx context.Context, rel string, mtime time.Time) error {
	if err := (&flakyTarget{c: t.c.flakyConnector}).check(); err != nil {
		return err
	}
	return t.Target.Chtimes(ctx, rel, mtime.Truncate(time.Second))
}

func (t *secondsTarget) Open(ctx context.Context, rel string) (io.ReadCloser, error) {
	if err := (&flakyTarget{c: t.c.flakyConnector}).check(); err != nil {
		return nil, err
	}
	t.c.opens.Add(1)
	return t.Target.Open(ctx, rel)
}

func newSeconds(t *testing.T, tc lsync.TargetConfig) *secondsConnector {
	return &secondsConnector{flakyConnector: newFlaky(t, tc)}
}

func waitContent(t *testing.T, path, want string) {
	t.Helper()
	waitFor(t, "content "+want+" in "+path, func() bool {
		b, err := os.ReadFile(path)
		return err == nil && string(b) == want
	})
}

// The benchmark's scenario 6: a file synced with a whole-second mtime is
// rewritten, same size, within the same second while the peer is down.
// The catch-up pass after the reconnect compares size and whole-second
// mtime, which match; the path's pending event must still deliver it.
func TestSameSecondRewriteWhileTargetDownIsNotLost(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "peer")
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	lsynctest.WriteFile(t, src, "page.html", "version-1", 0o644, base)
	lsynctest.WriteFile(t, src, "other.html", "untouched", 0o644, base)
	peer := newSeconds(t, cfg.Targets[0])
	j := lsynctest.StartJob(t, cfg, []lsync.Connector{peer}, lsync.JobOptions{
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 100 * time.Millisecond,
	})
	waitContent(t, filepath.Join(dst[0], "page.html"), "version-1")
	waitFor(t, "initial sync recorded", func() bool { return !statusOf(j, "peer").LastSync.IsZero() })

	peer.down.Store(true)
	lsynctest.WriteFile(t, src, "page.html", "version-2", 0o644, base.Add(400*time.Millisecond))
	waitFor(t, "peer seen down with the change pending", func() bool {
		st := statusOf(j, "peer")
		return !st.Connected && st.PendingFiles >= 1
	})
	opensBefore := peer.opens.Load()
	peer.down.Store(false)
	waitContent(t, filepath.Join(dst[0], "page.html"), "version-2")
	waitFor(t, "peer connected and in sync", func() bool {
		st := statusOf(j, "peer")
		return st.Connected && st.PendingFiles == 0 && !st.Rescanning
	})
	// Only the pending path was read back, not the untouched file.
	if n := peer.opens.Load() - opensBefore; n != 1 {
		t.Errorf("catch-up read back %d target files, want 1 (the pending one)", n)
	}
	lsynctest.AssertTreesEqual(t, src, dst[0], lsynctest.SecondModTimes())
}

// The same rewrite while connected is delivered by its live event, and a
// trailing event for a version that just landed costs no read-back.
func TestSameSecondRewriteWhileConnected(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "peer")
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	lsynctest.WriteFile(t, src, "page.html", "version-1", 0o644, base)
	peer := newSeconds(t, cfg.Targets[0])
	j := lsynctest.StartJob(t, cfg, []lsync.Connector{peer}, lsync.JobOptions{})
	waitContent(t, filepath.Join(dst[0], "page.html"), "version-1")

	lsynctest.WriteFile(t, src, "page.html", "version-2", 0o644, base.Add(400*time.Millisecond))
	waitContent(t, filepath.Join(dst[0], "page.html"), "version-2")
	waitFor(t, "queue drained", func() bool {
		st := statusOf(j, "peer")
		return st.PendingFiles == 0 && !st.Rescanning
	})

	// A metadata-only event (chmod back and forth) for the version that
	// landed: no content comparison is needed.
	opens := peer.opens.Load()
	p := filepath.Join(src, "page.html")
	if err := os.Chmod(p, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	lsynctest.WriteFile(t, src, "marker", "m", 0o644, time.Time{})
	waitContent(t, filepath.Join(dst[0], "marker"), "m")
	if n := peer.opens.Load() - opens; n != 0 {
		t.Errorf("trailing event for a landed version read back %d files, want 0", n)
	}
	lsynctest.AssertTreesEqual(t, src, dst[0], lsynctest.SecondModTimes())
}

// The reconciler's own contract: a plain full pass (verification) cannot
// see the same-second rewrite; CatchUp sees it for pending paths and for
// files modified since a dropped queue's first event, and leaves older
// files to the size+mtime comparison.
func TestCatchUpContentChecksSuspectFiles(t *testing.T) {
	src, dstDir := t.TempDir(), t.TempDir()
	base := time.Now().Truncate(time.Second)
	old := base.Add(-time.Hour)
	lsynctest.WriteFile(t, src, "pending.txt", "new-p", 0o644, base.Add(300*time.Millisecond))
	lsynctest.WriteFile(t, src, "recent.txt", "new-r", 0o644, base.Add(300*time.Millisecond))
	lsynctest.WriteFile(t, src, "old.txt", "new-o", 0o644, old.Add(300*time.Millisecond))
	for _, f := range []struct {
		name string
		at   time.Time
	}{{"pending.txt", base}, {"recent.txt", base}, {"old.txt", old}} {
		lsynctest.WriteFile(t, dstDir, f.name, "old-"+f.name[:1], 0o644, f.at)
	}
	ex, err := lsync.NewExcluder(nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := lsync.OpenSource(src, ex)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	conn, err := localtarget.NewConnector(lsync.TargetConfig{Name: "peer", Path: dstDir})
	if err != nil {
		t.Fatal(err)
	}
	sc := &secondsConnector{flakyConnector: &flakyConnector{inner: conn, failWrite: map[string]error{}}}
	tgt, err := sc.Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	r := &lsync.Reconciler{Source: s, Target: "peer", Delete: true, Concurrency: 2, Logger: discardLogger()}
	ctx := context.Background()

	rep, err := r.Reconcile(ctx, tgt, false)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Files != 0 {
		t.Fatalf("plain pass uploaded %d files; expected it to be blind to same-second rewrites: %v", rep.Files, rep.Changes)
	}

	rep, err = r.CatchUp(ctx, tgt, lsync.Batch{Rescan: true, Paths: []string{"pending.txt"}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Files != 1 {
		t.Fatalf("catch-up with a pending path uploaded %d files, want 1: %v", rep.Files, rep.Changes)
	}
	rep, err = r.CatchUp(ctx, tgt, lsync.Batch{Rescan: true, ChangedSince: base.Add(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Files != 1 {
		t.Fatalf("catch-up after an overflow uploaded %d files, want 1 (recent.txt): %v", rep.Files, rep.Changes)
	}
	for name, want := range map[string]string{"pending.txt": "new-p", "recent.txt": "new-r", "old.txt": "old-o"} {
		b, err := os.ReadFile(filepath.Join(dstDir, name))
		if err != nil || string(b) != want {
			t.Errorf("%s on target = %q, %v; want %q", name, b, err, want)
		}
	}
}
