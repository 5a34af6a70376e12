package integration

import (
	"strconv"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/integration/sshdtest"
	"github.com/lockstep-ha/lockstep/internal/churn"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// TestSSHChurnConverges is the churn model test over real OpenSSH: a
// live tree under bursts of thousands of random changes, files and whole
// directories moved across the tree, becomes identical on the peer after
// the last change, every burst, with the periodic verification off. The
// bound here is for correctness under -race on a shared CI machine; how
// fast it converges is measured against lsyncd by `make bench` (churn).
func TestSSHChurnConverges(t *testing.T) {
	rounds, err := churn.Rounds(2)
	if err != nil {
		t.Fatal(err)
	}
	within, err := churn.ConvergeWithin(30 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	srv := sshdtest.Start(t)
	for seed := uint64(101); seed < 101+uint64(rounds); seed++ {
		t.Run("seed="+strconv.FormatUint(seed, 10), func(t *testing.T) {
			src, dst := t.TempDir(), t.TempDir()
			tree, err := churn.New(src, seed)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tree.Run(churn.Options{Ops: 300}); err != nil {
				t.Fatal(err)
			}
			// As a daemon runs: with a sync state, through the receiver;
			// every other seed over the SFTP fallback.
			mode := lsync.ReceiverOn
			if seed%2 == 0 {
				mode = lsync.ReceiverOff
			}
			t.Logf("receiver: %s, with a sync state", mode)
			stateDir := t.TempDir()
			startSSHJob(t, "a", srv, src, dst, both(withReceiver(t, mode), func(c *lsync.JobConfig) { c.StateDir = stateDir }))
			lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)
			for burst := 0; burst < 3; burst++ {
				st, err := tree.Run(churn.Options{Ops: 1500, Pause: time.Millisecond, PauseEvery: 25})
				if err != nil {
					t.Fatal(err)
				}
				took, diffs := lsynctest.Converge(src, dst, within, sftpOpts...)
				if len(diffs) > 0 {
					t.Fatalf("burst %d (%v): %d paths still differ %s after the last change:\n%s",
						burst, st, len(diffs), within, lsynctest.Summarize(diffs))
				}
				t.Logf("burst %d (%v): identical %s after the last change", burst, st, took.Round(time.Millisecond))
			}
		})
	}
}
