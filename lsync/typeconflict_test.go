package lsync_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

func twoWayJobs(t *testing.T, a, b string) (regA, regB *prometheus.Registry) {
	t.Helper()
	job := func(src, peer, dst string) lsync.JobConfig {
		return lsync.JobConfig{
			Name: "docroot", Source: src, TwoWay: true, VerifyInterval: ptr(200 * time.Millisecond),
			Targets: []lsync.TargetConfig{{Name: peer, Path: dst}},
		}
	}
	regA, regB = prometheus.NewRegistry(), prometheus.NewRegistry()
	lsynctest.StartJob(t, job(a, "b", b), nil, lsync.JobOptions{Node: "a", Registerer: regA})
	lsynctest.StartJob(t, job(b, "a", a), nil, lsync.JobOptions{Node: "b", Registerer: regB})
	return regA, regB
}

// TestTwoWaySymlinkNeverReplacesDirectoryWithContent: a symlink planted on
// one node where the other has a real directory with files is a type
// conflict. Neither node loses anything, through several full passes.
func TestTwoWaySymlinkNeverReplacesDirectoryWithContent(t *testing.T) {
	a, b, outside := t.TempDir(), t.TempDir(), t.TempDir()
	old := time.Unix(1_600_000_000, 0)
	lsynctest.WriteFile(t, outside, "victim.txt", "outside both roots", 0o644, old)
	lsynctest.WriteFile(t, b, "uploads/photo.jpg", "b's upload", 0o644, old)
	lsynctest.WriteFile(t, b, "uploads/2024/doc.pdf", "b's doc", 0o600, old)
	lsynctest.WriteFile(t, a, "index.html", "shared", 0o644, old)
	if err := os.Symlink(outside, filepath.Join(a, "uploads")); err != nil {
		t.Fatal(err)
	}
	beforeB := lsynctest.Snapshot(t, filepath.Join(b, "uploads"))
	beforeOut := lsynctest.Snapshot(t, outside)
	twoWayJobs(t, a, b)

	// Everything else converges.
	deadline := time.Now().Add(waitLimit)
	for {
		if got, err := os.ReadFile(filepath.Join(b, "index.html")); err == nil && string(got) == "shared" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("index.html never reached b")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Several verification passes on both sides.
	time.Sleep(1500 * time.Millisecond)
	lsynctest.AssertSnapshotUnchanged(t, filepath.Join(b, "uploads"), beforeB)
	lsynctest.AssertSnapshotUnchanged(t, outside, beforeOut)
	if l, err := os.Readlink(filepath.Join(a, "uploads")); err != nil || l != outside {
		t.Errorf("a's symlink: %q %v", l, err)
	}
}

// TestTwoWayDirectoryReplacedBySymlinkPropagates: the legitimate change,
// emptying a directory and putting a symlink in its place on one node,
// still reaches the other node.
func TestTwoWayDirectoryReplacedBySymlinkPropagates(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	old := time.Unix(1_600_000_000, 0)
	lsynctest.WriteFile(t, a, "assets/app.js", "js", 0o644, old)
	lsynctest.WriteFile(t, a, "assets/app.css", "css", 0o644, old)
	lsynctest.WriteFile(t, a, "v2/app.js", "js2", 0o644, old)
	job := func(src, peer, dst string) lsync.JobConfig {
		return lsync.JobConfig{
			Name: "docroot", Source: src, TwoWay: true, VerifyInterval: ptr(200 * time.Millisecond),
			Targets: []lsync.TargetConfig{{Name: peer, Path: dst}}, StateDir: t.TempDir(),
		}
	}
	ja := lsynctest.StartJob(t, job(a, "b", b), nil, lsync.JobOptions{Node: "a", Registerer: prometheus.NewRegistry()})
	jb := lsynctest.StartJob(t, job(b, "a", a), nil, lsync.JobOptions{Node: "b", Registerer: prometheus.NewRegistry()})
	lsynctest.WaitTreesEqual(t, a, b, waitLimit)
	// With a sync state, as every configured job has, and once both
	// connect passes are over, so that both sides have a merge base.
	// Before that, a pass finds the directory the peer's pass just made
	// as this node's own and can put it back after the peer removed it,
	// over the peer's new symlink (see lsync/doc.go, "Convergence": a
	// pair's first seconds). This test is about the change itself.
	waitFor(t, "connect passes done", func() bool {
		return !statusOf(ja, "b").LastVerified.IsZero() && !statusOf(jb, "a").LastVerified.IsZero()
	})

	// A symlink made while a pass is putting the directory back fails
	// (EEXIST): the admin runs the two commands again.
	for try := 0; ; try++ {
		if err := os.RemoveAll(filepath.Join(a, "assets")); err != nil {
			t.Fatal(err)
		}
		err := os.Symlink("v2", filepath.Join(a, "assets"))
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) || try == 20 {
			t.Fatal(err)
		}
	}
	lsynctest.WaitTreesEqual(t, a, b, waitLimit)
	if l, err := os.Readlink(filepath.Join(b, "assets")); err != nil || l != "v2" {
		t.Errorf("b/assets: %q %v", l, err)
	}
}
