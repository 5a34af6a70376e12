package integration

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/integration/sshdtest"
	"github.com/lockstep-ha/lockstep/internal/churn"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
	"github.com/lockstep-ha/lockstep/lsync/sftptarget"
)

// TestSSHChurnSpeed is lsync's TestChurnSpeed over real OpenSSH and the
// receiver, as a daemon runs and as the bench's scenario 10 measures:
// seconds from a burst's last change to an identical peer, with and
// without a sync state, and each batch that ended after the last change.
// A measurement, run by hand:
//
//	LOCKSTEP_CHURN_SPEED=1 LOCKSTEP_CHURN_SPEED_DIR=/dev/shm go test -run TestSSHChurnSpeed -v ./integration/
//
// (the knobs are those of TestChurnSpeed).
func TestSSHChurnSpeed(t *testing.T) {
	if os.Getenv("LOCKSTEP_CHURN_SPEED") == "" {
		t.Skip("a measurement: LOCKSTEP_CHURN_SPEED=1 runs it")
	}
	ops := 3000
	if v := os.Getenv("LOCKSTEP_CHURN_SPEED_OPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatal(err)
		}
		ops = n
	}
	modes := []bool{true, false}
	switch os.Getenv("LOCKSTEP_CHURN_SPEED_STATE") {
	case "on":
		modes = []bool{true}
	case "off":
		modes = []bool{false}
	}
	bursts, err := churn.Rounds(5)
	if err != nil {
		t.Fatal(err)
	}
	srv := sshdtest.Start(t)
	for _, withState := range modes {
		t.Run(fmt.Sprintf("state=%v", withState), func(t *testing.T) {
			src, dst := lsynctest.SpeedDir(t), lsynctest.SpeedDir(t)
			off := time.Duration(0)
			cfg := lsync.JobConfig{Name: "docroot", Source: src, VerifyInterval: &off,
				Targets: []lsync.TargetConfig{srv.TargetConfig("peer", dst)}}
			withReceiver(t, lsync.ReceiverOn)(&cfg)
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
			logger := slog.New(rec)
			c, err := sftptarget.NewConnector(cfg.Targets[0], logger)
			if err != nil {
				t.Fatal(err)
			}
			job, err := lsync.NewJob(cfg, []lsync.Connector{c}, lsync.JobOptions{Node: "a", Logger: logger})
			if err != nil {
				t.Fatal(err)
			}
			lsynctest.Start(t, job)
			lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)
			var all []string
			for b := 0; b < bursts; b++ {
				rec.Reset()
				start := time.Now()
				st, err := tree.Run(churn.Options{Ops: ops, Pause: time.Millisecond, PauseEvery: 25})
				if err != nil {
					t.Fatal(err)
				}
				end := time.Now()
				took, diffs := lsynctest.Converge(src, dst, 30*time.Second, sftpOpts...)
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
