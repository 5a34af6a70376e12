package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/lockstep-ha/lockstep/integration/sshdtest"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
	"github.com/lockstep-ha/lockstep/lsync/sftptarget"
)

// TestOnceWatchedVerificationOverSSH: `sync --once` through the receiver
// on a real sshd takes its watch of the source for its verification
// when nothing changed during the pass, and walks the source again
// otherwise (here: a hard link the watch cannot vouch for); the peer
// ends identical either way, and a restart trusts the state.
func TestOnceWatchedVerificationOverSSH(t *testing.T) {
	for _, linked := range []bool{false, true} {
		name := map[bool]string{false: "quiet source", true: "hard-linked file"}[linked]
		t.Run(name, func(t *testing.T) {
			srv := sshdtest.Start(t)
			src, dst := t.TempDir(), t.TempDir()
			for i := range 40 {
				write(t, src, fmt.Sprintf("d%d/f%02d.txt", i%4, i), "content", 0o644)
			}
			if linked {
				if err := os.Link(filepath.Join(src, "d0", "f00.txt"), filepath.Join(t.TempDir(), "other-link")); err != nil {
					t.Fatal(err)
				}
			}
			cfg := lsync.JobConfig{Name: "docroot", Source: src, StateDir: t.TempDir(), Targets: []lsync.TargetConfig{srv.TargetConfig("peer", dst)}}
			withReceiver(t, lsync.ReceiverOn)(&cfg)
			once := func() lsync.OnceResult {
				t.Helper()
				c, err := sftptarget.NewConnector(cfg.Targets[0], testLogger(t))
				if err != nil {
					t.Fatal(err)
				}
				j, err := lsync.NewJob(cfg, []lsync.Connector{c}, lsync.JobOptions{Logger: testLogger(t)})
				if err != nil {
					t.Fatal(err)
				}
				defer j.Stop()
				res := j.ReconcileOnce(t.Context())
				if len(res) != 1 || !res[0].OK() || res[0].Verify == nil {
					t.Fatalf("ReconcileOnce: %+v", res)
				}
				return res[0]
			}
			first := once()
			if first.Verify.Watched == linked {
				t.Errorf("first pass: verified by the watch %v, want %v", first.Verify.Watched, !linked)
			}
			lsynctest.AssertTreesEqual(t, src, dst, lsynctest.DirModTimes())
			if again := once(); !again.Applied.Trusted || again.Applied.Actions() != 0 {
				t.Errorf("restart: trusted %v, %d actions; want a trusted restart with nothing to do", again.Applied.Trusted, again.Applied.Actions())
			}
		})
	}
}
