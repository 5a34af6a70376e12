package lsync_test

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lockstep-ha/lockstep/integration/poll"
	"github.com/lockstep-ha/lockstep/internal/churn"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// convergeWithin and churnRounds read the soak settings (see package churn).
func convergeWithin(t testing.TB) time.Duration {
	d, err := churn.ConvergeWithin(2 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func churnRounds(t testing.TB, def int) int {
	n, err := churn.Rounds(def)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestChurnConverges is the model test of the core promise: a live tree
// under a burst of thousands of random changes (files and whole
// directories moved across the tree, trees deleted, symlinks, chmods) is
// identical on the target within convergeWithin of the last change, with
// the periodic verification off so that only the live path can get it
// there.
//
// It runs with a sync state (every daemon's config has one: renames are
// then confirmed from the state, restarts trusted) and without (`sync
// --once` with no state_dir, and the comparison path the state replaces).
func TestChurnConverges(t *testing.T) {
	rounds := churnRounds(t, 3)
	for _, withState := range []bool{true, false} {
		n := rounds
		if withState {
			n = churnRounds(t, 2)
		}
		for seed := uint64(1); seed <= uint64(n); seed++ {
			name := "seed=" + strconv.FormatUint(seed, 10)
			if withState {
				name = "state/" + name
			}
			t.Run(name, func(t *testing.T) { churnConverges(t, seed, withState) })
		}
	}
}

// TestChurnConvergesWithoutLandedCache: the landed cache is only an
// optimisation (it is empty after every restart and rolls over under
// churn): with every lookup missing, churn still converges. The target
// keeps whole-second mtimes, as SFTP v3 does: only then are the cache's
// readers asked (a local target keeps nanoseconds, and the plain churn
// test never looks a version up), and every changed file of the same
// size and second, every file of a renamed subtree, is read back instead.
func TestChurnConvergesWithoutLandedCache(t *testing.T) {
	lsync.DisableLandedCache(t)
	for seed := uint64(1); seed <= uint64(churnRounds(t, 1)); seed++ {
		t.Run("seconds/state/seed="+strconv.FormatUint(seed, 10), func(t *testing.T) { churnConvergesOn(t, seed, true, true) })
	}
}

func churnConverges(t *testing.T, seed uint64, withState bool) {
	churnConvergesOn(t, seed, withState, false)
}

// churnConvergesOn is churnConverges; with seconds, on a target that keeps
// whole-second mtimes only.
func churnConvergesOn(t *testing.T, seed uint64, withState, seconds bool) {
	cfg, src, dst := localJobConfig(t, "peer")
	if withState {
		cfg.StateDir = t.TempDir()
	}
	var conns []lsync.Connector
	var opts []lsynctest.Option
	if seconds {
		conns = []lsync.Connector{newSeconds(t, cfg.Targets[0])}
		opts = append(opts, lsynctest.SecondModTimes())
	}
	tree, err := churn.New(src, seed)
	if err != nil {
		t.Fatal(err)
	}
	// Something to move around from the first operation on.
	if _, err := tree.Run(churn.Options{Ops: 300}); err != nil {
		t.Fatal(err)
	}
	lsynctest.StartJob(t, cfg, conns, lsync.JobOptions{Logger: churnLogger(t)})
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit, opts...)
	for burst := 0; burst < 3; burst++ {
		// Small pauses every few operations spread a burst over
		// several batches, so that moves straddle batch edges.
		st, err := tree.Run(churn.Options{Ops: 1500, Pause: time.Millisecond, PauseEvery: 25})
		if err != nil {
			t.Fatal(err)
		}
		took, diffs := lsynctest.Converge(src, dst[0], convergeWithin(t), opts...)
		if len(diffs) > 0 {
			t.Fatalf("burst %d (%v): %d paths still differ %s after the last change:\n%s",
				burst, st, len(diffs), convergeWithin(t), lsynctest.Summarize(diffs))
		}
		t.Logf("burst %d (%v): identical %s after the last change", burst, st, took.Round(time.Millisecond))
	}
}

func churnLogger(t *testing.T) *slog.Logger {
	if os.Getenv("LSYNC_DEBUG") != "" {
		return lsynctest.TestLogger(t)
	}
	return discardLogger()
}

// TestVerificationDriftIsLoud: the periodic verification is a backstop.
// When it has to repair something no event had queued, the repair is
// counted as drift and the target's last verification time is shown; a
// verification that finds nothing counts nothing.
func TestVerificationDriftIsLoud(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "peer")
	cfg.VerifyInterval = ptr(300 * time.Millisecond)
	mustWrite(t, src, "a/kept.txt", "source")
	reg := prometheus.NewRegistry()
	job := lsynctest.StartJob(t, cfg, nil, lsync.JobOptions{Registerer: reg})
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
	poll.Until(t, waitLimit, "a verification", func() bool {
		return metricValue(t, reg, "lockstep_sync_last_verified_timestamp_seconds", "peer") > 0
	})
	if got := metricValue(t, reg, "lockstep_sync_verify_repairs_total", "peer"); got != 0 {
		t.Fatalf("verify repairs = %v on a target in sync, want 0", got)
	}
	// Behind lockstep's back: a file only on the target, one changed there.
	mustWrite(t, dst[0], "stray.txt", "not from the source")
	mustWrite(t, dst[0], "a/kept.txt", "changed on the target!")
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
	poll.Until(t, waitLimit, "drift counted", func() bool {
		return metricValue(t, reg, "lockstep_sync_verify_repairs_total", "peer") == 2
	})
	st := job.Status()
	if len(st) != 1 || st[0].LastVerified.IsZero() {
		t.Fatalf("status %+v: want LastVerified set", st)
	}
}

// TestLiveMassDeletionGuard: a live `rm -rf` of a big directory is held
// when it takes more than max_delete of the target's entries, and goes
// through when it takes less — each entry counted once, although the
// batch lists the directory and everything that was in it. A slow
// deletion spread over many batches (each below the limit) is held too:
// what matters is the storm, not the batch.
func TestLiveMassDeletionGuard(t *testing.T) {
	for _, tc := range []struct {
		name       string
		kept, gone int
		slow       bool
		held       bool
	}{
		{"within max_delete", 1800, 1200, false, false},
		{"past max_delete", 300, 1200, false, true},
		{"past max_delete over many batches", 300, 1200, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, src, dst := localJobConfig(t, "peer")
			for i := range tc.kept {
				mustWrite(t, src, fmt.Sprintf("keep/d%d/f%d", i%30, i), "k")
			}
			for i := range tc.gone {
				mustWrite(t, src, fmt.Sprintf("big/d%02d/f%d", i%40, i), "g")
			}
			job := lsynctest.StartJob(t, cfg, nil, lsync.JobOptions{Logger: discardLogger()})
			lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
			if tc.slow {
				// Eight steps of 155 entries, each its own batch.
				dirs, err := os.ReadDir(filepath.Join(src, "big"))
				if err != nil {
					t.Fatal(err)
				}
				for i, d := range dirs {
					if err := os.RemoveAll(filepath.Join(src, "big", d.Name())); err != nil {
						t.Fatal(err)
					}
					if i%5 == 4 {
						time.Sleep(cfg.MaxDelay + lsync.DefaultMaxDelay)
					}
				}
			}
			if err := os.RemoveAll(filepath.Join(src, "big")); err != nil {
				t.Fatal(err)
			}
			if !tc.held {
				lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
				return
			}
			poll.Until(t, waitLimit, "the deletion held", func() bool { return statusOf(job, "peer").Held != "" })
			time.Sleep(300 * time.Millisecond)
			// Whatever went before the hold stays under the live floor
			// (1,000 entries); the rest of the 1,241 is still there.
			left := 0
			if err := filepath.WalkDir(filepath.Join(dst[0], "big"), func(string, os.DirEntry, error) error {
				left++
				return nil
			}); err != nil {
				t.Fatalf("deleted although held: %v", err)
			}
			if left < tc.gone+40+1-1000 {
				t.Fatalf("%d entries left under big/ on the target after the hold, want at least %d", left, tc.gone+41-1000)
			}
		})
	}
}
