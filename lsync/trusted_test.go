package lsync_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
	"github.com/lockstep-ha/lockstep/lsync/syncstate"
)

// walkCounter counts the target listings of the sessions it dials, and
// the dials.
type walkCounter struct {
	lsync.Connector
	walks atomic.Int64 // Walk calls on the whole tree ("")
	subs  atomic.Int64 // Walk calls on a subtree
	dials atomic.Int64
}

func (c *walkCounter) Connect(ctx context.Context) (lsync.Target, error) {
	c.dials.Add(1)
	t, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &countedTarget{Target: t, c: c}, nil
}

type countedTarget struct {
	lsync.Target
	c *walkCounter
}

func (t *countedTarget) Walk(ctx context.Context, sub string, fn func(lsync.Entry) error) error {
	if sub == "" {
		t.c.walks.Add(1)
	} else {
		t.c.subs.Add(1)
	}
	return t.Target.Walk(ctx, sub, fn)
}

// TestOnceTrustsTheStateAfterAFullPass: the first `sync --once` lists the
// target; later ones compare the source with the sync state only, and
// still push what changed in between (edits, new trees, deletions, a
// mode change) without listing the target as a whole. A restart that
// finds nothing changed does not dial the peer at all.
func TestOnceTrustsTheStateAfterAFullPass(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "peer")
	cfg.StateDir = t.TempDir()
	old := time.Unix(1_600_000_000, 0)
	for _, p := range []string{"a/1.txt", "a/2.txt", "b/c/3.txt", "gone/4.txt", "top.txt"} {
		lsynctest.WriteFile(t, src, p, p, 0o644, old)
	}
	once := func() (lsync.OnceResult, *walkCounter) {
		t.Helper()
		wc := &walkCounter{Connector: lsynctest.LocalConnectors(t, cfg)[0]}
		j, err := lsync.NewJob(cfg, []lsync.Connector{wc}, lsync.JobOptions{Logger: lsynctest.TestLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer j.Stop()
		res := j.ReconcileOnce(t.Context())
		if len(res) != 1 || !res[0].OK() {
			t.Fatalf("ReconcileOnce: %+v %+v", res[0], res[0].Verify)
		}
		lsynctest.AssertTreesEqual(t, src, dst[0])
		return res[0], wc
	}
	if r, wc := once(); wc.walks.Load() != 1 || r.Applied.Trusted {
		t.Fatalf("first pass: %d whole-tree listings, trusted=%v; want 1, a full pass", wc.walks.Load(), r.Applied.Trusted)
	}
	if r, wc := once(); wc.dials.Load() != 0 || !r.Applied.Trusted || r.Applied.Actions() != 0 || r.Applied.Compared != 9 {
		t.Fatalf("restart in sync: %d dials, trusted=%v, %d actions, %d compared; want 0, true, 0, 9",
			wc.dials.Load(), r.Applied.Trusted, r.Applied.Actions(), r.Applied.Compared)
	}
	// Changes while no sync ran.
	lsynctest.WriteFile(t, src, "a/1.txt", "edited", 0o644, time.Time{})
	lsynctest.WriteFile(t, src, "new/deep/5.txt", "new", 0o644, time.Time{})
	if err := os.RemoveAll(filepath.Join(src, "gone")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(src, "top.txt"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, wc := once()
	if wc.walks.Load() != 0 || wc.dials.Load() != 1 || !r.Applied.Trusted {
		t.Fatalf("restart after changes: %d whole-tree listings, %d dials, trusted=%v; want 0, 1, true",
			wc.walks.Load(), wc.dials.Load(), r.Applied.Trusted)
	}
	if r.Applied.Files != 2 || r.Applied.Deleted != 1 || r.Applied.Attrs < 1 {
		t.Errorf("restart after changes: %+v", r.Applied)
	}
}

// TestTrustedRestartLeavesDriftToTheVerification: a change made on the
// target behind lockstep's back is not what a trusted pass looks for; the
// periodic verification lists the target and repairs it, and counts it.
func TestTrustedRestartLeavesDriftToTheVerification(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "peer")
	cfg.StateDir = t.TempDir()
	lsynctest.WriteFile(t, src, "a/1.txt", "one", 0o644, time.Time{})
	j, err := lsync.NewJob(cfg, lsynctest.LocalConnectors(t, cfg), lsync.JobOptions{Logger: lsynctest.TestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if res := j.ReconcileOnce(t.Context()); !res[0].OK() {
		t.Fatalf("%+v", res[0])
	}
	j.Stop()
	lsynctest.WriteFile(t, dst[0], "a/intruder.txt", "x", 0o644, time.Time{})

	iv := 300 * time.Millisecond
	cfg.VerifyInterval = &iv
	reg := prometheus.NewRegistry()
	lsynctest.StartJob(t, cfg, nil, lsync.JobOptions{Registerer: reg})
	waitFor(t, "the verification removing the intruder", func() bool {
		_, err := os.Stat(filepath.Join(dst[0], "a/intruder.txt"))
		return os.IsNotExist(err)
	})
	waitFor(t, "the drift counted", func() bool {
		return metricValue(t, reg, "lockstep_sync_verify_repairs_total", "peer") >= 1
	})
	lsynctest.AssertTreesEqual(t, src, dst[0])
}

// TestRenameConfirmedFromTheState: a directory rename replayed on the
// target is checked against the sync state, which follows it, instead of
// listing the renamed tree on the peer; what changed inside meanwhile
// still lands, and nothing is uploaded again.
func TestRenameConfirmedFromTheState(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "peer")
	cfg.StateDir = t.TempDir()
	for i := range 200 {
		lsynctest.WriteFile(t, src, fmt.Sprintf("assets/sub%d/f%03d.css", i%4, i), "css", 0o644, time.Time{})
	}
	wc := &walkCounter{Connector: lsynctest.LocalConnectors(t, cfg)[0]}
	reg := prometheus.NewRegistry()
	j := lsynctest.StartJob(t, cfg, []lsync.Connector{wc}, lsync.JobOptions{Registerer: reg})
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
	waitIdle(t, j, "peer")
	files0 := metricValue(t, reg, "lockstep_sync_files_total", "peer")
	subs0 := wc.subs.Load()

	if err := os.Rename(filepath.Join(src, "assets"), filepath.Join(src, "assets-v2")); err != nil {
		t.Fatal(err)
	}
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
	if n := wc.subs.Load() - subs0; n != 0 {
		t.Errorf("the rename listed %d subtrees of the target, want none", n)
	}
	if n := metricValue(t, reg, "lockstep_sync_files_total", "peer") - files0; n != 0 {
		t.Errorf("the rename uploaded %v files, want none", n)
	}
	// A rename together with changes inside it: they land too.
	lsynctest.WriteFile(t, src, "assets-v2/sub1/f001.css", "changed", 0o644, time.Time{})
	if err := os.Remove(filepath.Join(src, "assets-v2/sub2/f002.css")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(src, "assets-v2"), filepath.Join(src, "assets-v3")); err != nil {
		t.Fatal(err)
	}
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
}

// TestRestartAfterACrashListsTheTarget: a run killed mid-batch can leave
// an upload's temp file (or half a rename) on the target, which only a
// listing finds. The state's completeness is trusted only after a run that
// ended cleanly; after a crash the next start lists the target once and
// removes the leftover.
func TestRestartAfterACrashListsTheTarget(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "peer")
	cfg.StateDir = t.TempDir()
	lsynctest.WriteFile(t, src, "a/1.txt", "one", 0o644, time.Time{})
	statePath := syncstate.FileName(cfg.StateDir, cfg.Name, "peer")

	// A daemon run: its state file, copied while it runs, is what a
	// kill -9 leaves behind (in use, and complete after the connect pass).
	j := lsynctest.StartJob(t, cfg, nil, lsync.JobOptions{Logger: discardLogger()})
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
	waitIdle(t, j, "peer")
	crashed, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatal(err)
	}
	j.Stop()
	if err := os.WriteFile(statePath, crashed, 0o600); err != nil {
		t.Fatal(err)
	}
	// What the killed batch left on the target.
	leftover := filepath.Join(dst[0], "a", lsync.TempPrefix+"2.txt.deadbeef")
	lsynctest.WriteFile(t, dst[0], "a/"+filepath.Base(leftover), "half an upload", 0o600, time.Time{})

	wc := &walkCounter{Connector: lsynctest.LocalConnectors(t, cfg)[0]}
	j2, err := lsync.NewJob(cfg, []lsync.Connector{wc}, lsync.JobOptions{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer j2.Stop()
	res := j2.ReconcileOnce(t.Context())
	if len(res) != 1 || !res[0].OK() {
		t.Fatalf("ReconcileOnce: %+v", res[0])
	}
	if res[0].Applied.Trusted || wc.walks.Load() != 1 {
		t.Errorf("after a crash: trusted=%v, %d whole-tree listings; want a listing", res[0].Applied.Trusted, wc.walks.Load())
	}
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Errorf("the crashed run's temp file is still on the target (%v)", err)
	}
	lsynctest.AssertTreesEqual(t, src, dst[0])

	// That run ended cleanly: the next start trusts the state again.
	j2.Stop()
	wc3 := &walkCounter{Connector: lsynctest.LocalConnectors(t, cfg)[0]}
	j3, err := lsync.NewJob(cfg, []lsync.Connector{wc3}, lsync.JobOptions{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer j3.Stop()
	if res := j3.ReconcileOnce(t.Context()); !res[0].OK() || !res[0].Applied.Trusted || wc3.walks.Load() != 0 {
		t.Errorf("after a clean end: trusted=%v, %d listings; want trusted, none", res[0].Applied.Trusted, wc3.walks.Load())
	}
}
