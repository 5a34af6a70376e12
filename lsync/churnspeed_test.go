package lsync_test

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/internal/churn"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// TestChurnSpeed measures, by hand, where the time goes between the last
// change of a churn burst and an identical target (a local target: the
// bench's scenario 10 without ssh): seconds to identical per burst, with
// and without a sync state, and each batch that ended after the last
// change (when, how long it took, what it did). Run with
//
//	LOCKSTEP_CHURN_SPEED=1 go test -run TestChurnSpeed -v ./lsync/
//
// LOCKSTEP_CHURN_SPEED_OPS (3000 operations a burst), LOCKSTEP_SOAK_ROUNDS
// (5 bursts), LOCKSTEP_CHURN_SPEED_STATE ("on", "off"; both by default)
// and LOCKSTEP_CHURN_SPEED_DIR (trees and state there, e.g. /dev/shm as
// in the bench) tune it. integration.TestSSHChurnSpeed is the same over
// sshd and the receiver.
func TestChurnSpeed(t *testing.T) {
	ops, modes := churnSpeedSettings(t)
	bursts := churnRounds(t, 5)
	for _, withState := range modes {
		t.Run(fmt.Sprintf("state=%v", withState), func(t *testing.T) {
			src, dst := lsynctest.SpeedDir(t), lsynctest.SpeedDir(t)
			cfg := lsync.JobConfig{Name: "docroot", Source: src, VerifyInterval: ptr(time.Duration(0)),
				Targets: []lsync.TargetConfig{{Name: "peer", Path: dst}}}
			if withState {
				cfg.StateDir = lsynctest.SpeedDir(t)
			}
			tree, err := churn.New(src, 1)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tree.Run(churn.Options{Ops: 300}); err != nil {
				t.Fatal(err)
			}
			rec := &lsynctest.BatchRecorder{}
			lsynctest.StartJob(t, cfg, nil, lsync.JobOptions{Logger: slog.New(rec)})
			lsynctest.WaitTreesEqual(t, src, dst, waitLimit)
			var all []string
			for b := 0; b < bursts; b++ {
				rec.Reset()
				start := time.Now()
				st, err := tree.Run(churn.Options{Ops: ops, Pause: time.Millisecond, PauseEvery: 25})
				if err != nil {
					t.Fatal(err)
				}
				end := time.Now()
				took, diffs := lsynctest.Converge(src, dst, 30*time.Second)
				if len(diffs) > 0 {
					t.Fatalf("burst %d: %d paths differ:\n%s", b, len(diffs), lsynctest.Summarize(diffs))
				}
				all = append(all, fmt.Sprintf("%.2f", took.Seconds()))
				t.Logf("burst %d (%v): identical %.3fs after the last change; %s", b, st, took.Seconds(), rec.Summary(start, end))
			}
			t.Logf("state=%v: seconds to identical per burst: %s", withState, strings.Join(all, " / "))
		})
	}
}

func churnSpeedSettings(t *testing.T) (ops int, modes []bool) {
	if os.Getenv("LOCKSTEP_CHURN_SPEED") == "" {
		t.Skip("a measurement: LOCKSTEP_CHURN_SPEED=1 runs it")
	}
	ops = 3000
	if v := os.Getenv("LOCKSTEP_CHURN_SPEED_OPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatal(err)
		}
		ops = n
	}
	switch os.Getenv("LOCKSTEP_CHURN_SPEED_STATE") {
	case "on":
		return ops, []bool{true}
	case "off":
		return ops, []bool{false}
	}
	return ops, []bool{true, false}
}
