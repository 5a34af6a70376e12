package lsync_test

import (
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// TestLocalTargetMarksOnlyForTwoWay: a local directory target, like the
// receiver, lands a one-way job's files without the delivery mark and a
// two-way job's with it.
func TestLocalTargetMarksOnlyForTwoWay(t *testing.T) {
	for _, twoWay := range []bool{false, true} {
		t.Run(map[bool]string{false: "one-way", true: "two-way"}[twoWay], func(t *testing.T) {
			cfg, src, dst := localJobConfig(t, "peer")
			cfg.TwoWay = twoWay
			cfg.StateDir = t.TempDir()
			mustWrite(t, src, "d/a.txt", "a")
			j, err := lsync.NewJob(cfg, lsynctest.LocalConnectors(t, cfg), lsync.JobOptions{Node: "web1", Logger: lsynctest.TestLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer j.Stop()
			if res := j.ReconcileOnce(t.Context()); len(res) != 1 || !res[0].OK() {
				t.Fatalf("ReconcileOnce: %+v", res)
			}
			_, err = unix.Lgetxattr(filepath.Join(dst[0], "d/a.txt"), lsync.DeliveredXattr, make([]byte, 512))
			if marked := err == nil; marked != twoWay {
				t.Errorf("delivery mark present: %v (%v), want %v", marked, err, twoWay)
			}
		})
	}
}
