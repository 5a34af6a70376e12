package integration

import (
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lockstep-ha/lockstep/integration/poll"
	"github.com/lockstep-ha/lockstep/integration/sshdtest"
	"github.com/lockstep-ha/lockstep/lsync"
)

// TestDeliveryMarksOnlyForTwoWay: through the receiver on a real sshd, a
// one-way job's files land without the delivery mark (nothing on its
// peer reads it), on the first pass and live; a two-way job's files
// carry it, since the peer's merge tells deliveries from its own files
// by it.
func TestDeliveryMarksOnlyForTwoWay(t *testing.T) {
	for _, twoWay := range []bool{false, true} {
		name := map[bool]string{false: "one-way", true: "two-way"}[twoWay]
		t.Run(name, func(t *testing.T) {
			srv := sshdtest.Start(t)
			src, dst := t.TempDir(), t.TempDir()
			write(t, src, "first/a.txt", "a", 0o644)
			j := startSSHJob(t, "web1", srv, src, dst, both(withReceiver(t, lsync.ReceiverOn), func(c *lsync.JobConfig) { c.TwoWay = twoWay }))
			waitIdle(t, j, src, dst)
			write(t, src, "live/b.txt", "b", 0o644)
			poll.Until(t, convergeTimeout, "live/b.txt on the peer", func() bool {
				return unix.Lstat(filepath.Join(dst, "live/b.txt"), new(unix.Stat_t)) == nil
			})
			for _, rel := range []string{"first/a.txt", "live/b.txt"} {
				_, err := unix.Lgetxattr(filepath.Join(dst, rel), lsync.DeliveredXattr, make([]byte, 512))
				if marked := err == nil; marked != twoWay {
					t.Errorf("%s job: %s has a delivery mark: %v (%v)", name, rel, marked, err)
				}
			}
		})
	}
}
