package lsync_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// TestTwoWayConvergesWithoutPingPong runs the two mirror jobs of a
// two-node setup and counts transfers: every change crosses once.
func TestTwoWayConvergesWithoutPingPong(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	old, newer := time.Unix(1_600_000_000, 0), time.Unix(1_600_000_100, 0)
	// Startup conflicts: newest mtime wins; a tie goes to node "a".
	lsynctest.WriteFile(t, a, "conflict-newer.txt", "from a (older)", 0o644, old)
	lsynctest.WriteFile(t, b, "conflict-newer.txt", "from b (newer)", 0o644, newer)
	lsynctest.WriteFile(t, a, "conflict-tie.txt", "from a", 0o644, old)
	lsynctest.WriteFile(t, b, "conflict-tie.txt", "from bb", 0o644, old) // same mtime, other size
	lsynctest.WriteFile(t, a, "only-a.txt", "a", 0o644, old)
	lsynctest.WriteFile(t, b, "only-b/x.txt", "b", 0o644, old)

	job := func(node, src, peer, dst string) lsync.JobConfig {
		return lsync.JobConfig{
			Name: "docroot", Source: src, TwoWay: true, VerifyInterval: ptr(time.Duration(0)),
			Targets: []lsync.TargetConfig{{Name: peer, Path: dst}},
		}
	}
	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	lsynctest.StartJob(t, job("a", a, "b", b), nil, lsync.JobOptions{Node: "a", Registerer: regA})
	lsynctest.StartJob(t, job("b", b, "a", a), nil, lsync.JobOptions{Node: "b", Registerer: regB})
	lsynctest.WaitTreesEqual(t, a, b, waitLimit)
	for rel, want := range map[string]string{"conflict-newer.txt": "from b (newer)", "conflict-tie.txt": "from a"} {
		if got, _ := os.ReadFile(filepath.Join(a, rel)); string(got) != want {
			t.Errorf("%s = %q, want %q", rel, got, want)
		}
	}
	settle := func() (float64, float64) {
		// Wait until the transfer counters stop moving.
		var fa, fb float64 = -1, -1
		for i := 0; i < 100; i++ {
			time.Sleep(150 * time.Millisecond)
			na, nb := metricValue(t, regA, "lockstep_sync_files_total", "b"), metricValue(t, regB, "lockstep_sync_files_total", "a")
			if na == fa && nb == fb {
				return na, nb
			}
			fa, fb = na, nb
		}
		t.Fatal("transfers never settle: ping-pong")
		return 0, 0
	}
	fa0, fb0 := settle()

	// Live edits on both sides.
	const n = 20
	for i := 0; i < n; i++ {
		mustWrite(t, a, "from-a/f"+string(rune('a'+i)), "A")
		mustWrite(t, b, "from-b/f"+string(rune('a'+i)), "B")
	}
	lsynctest.WaitTreesEqual(t, a, b, waitLimit)
	fa1, fb1 := settle()
	// Each side wrote n files. Under load a file can legitimately travel
	// twice (caught between its create and its write), but a file bounced
	// back would add to the other direction without bound: settle() has
	// already shown the counts stop, and 2n bounds any split writes.
	if d := fa1 - fa0; d < n || d > 2*n {
		t.Fatalf("want %d..%d transfers a->b, got %v (b->a %v)", n, 2*n, d, fb1-fb0)
	}
	if d := fb1 - fb0; d < n || d > 2*n {
		t.Fatalf("want %d..%d transfers b->a, got %v (a->b %v)", n, 2*n, d, fa1-fa0)
	}
	lsynctest.AssertTreesEqual(t, a, b)

	// Modify and delete on one side propagate, and stop.
	mustWrite(t, b, "from-a/fa", "edited on b")
	if err := os.RemoveAll(filepath.Join(a, "from-b")); err != nil {
		t.Fatal(err)
	}
	lsynctest.WaitTreesEqual(t, a, b, waitLimit)
	fa2, fb2 := settle()
	if fa2 != fa1 || fb2-fb1 != 1 {
		t.Fatalf("want one transfer b->a and none a->b, got a->b %v, b->a %v", fa2-fa1, fb2-fb1)
	}
	lsynctest.AssertTreesEqual(t, a, b)
}
