package integration

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/integration/sshdtest"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// TestSSHTwoWayOwnerChowns runs a two-way pair as two `lockstep sync`
// daemons over real sshd (root: it may chown), through the receiver and
// over the SFTP fallback: a chown alone (content, mode and mtime
// unchanged) of a file or a directory on either node reaches the other
// and stays on the node that made it; a chown made while its node's
// daemon was down follows at the restart (the owner both last agreed on
// is in the sync state); and no conflict copy is made for an owner.
func TestSSHTwoWayOwnerChowns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	bin := lockstepBinary(t)
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			srv := sshdtest.Start(t)
			a, b := t.TempDir(), t.TempDir()
			recv := ""
			if p.receiver != lsync.ReceiverOff {
				recv = bin
			}
			cfgA := writeTwoWayConfig(t, srv, "web1", "web2", a, b, t.TempDir(), recv)
			cfgB := writeTwoWayConfig(t, srv, "web2", "web1", b, a, t.TempDir(), recv)
			for _, f := range []string{"from-a.php", "from-b.php", "uploads/x.jpg", "offline.php"} {
				write(t, a, f, "seed "+f, 0o644)
			}
			da := startSyncDaemon(t, bin, cfgA)
			startSyncDaemon(t, bin, cfgB)
			lsynctest.WaitTreesEqual(t, a, b, convergeTimeout, sftpOpts...)
			time.Sleep(time.Second) // both daemons have recorded the seed

			// www-data (33) has a name on this host; 4242 and 4243 have
			// none and go by number.
			mustOK(t, os.Lchown(filepath.Join(a, "from-a.php"), 33, 33))
			waitOwner(t, filepath.Join(b, "from-a.php"), 33, 33)
			mustOK(t, os.Lchown(filepath.Join(b, "from-b.php"), 4242, 4243))
			waitOwner(t, filepath.Join(a, "from-b.php"), 4242, 4243)
			mustOK(t, os.Lchown(filepath.Join(b, "uploads"), 33, 4243))
			waitOwner(t, filepath.Join(a, "uploads"), 33, 4243)
			mustOK(t, os.Lchown(filepath.Join(a, "uploads/x.jpg"), 4242, 33))
			waitOwner(t, filepath.Join(b, "uploads/x.jpg"), 4242, 33)

			// A chown on a while a's daemon is down follows at its start.
			da.stop()
			mustOK(t, os.Lchown(filepath.Join(a, "offline.php"), 4243, 4243))
			time.Sleep(300 * time.Millisecond)
			startSyncDaemon(t, bin, cfgA)
			waitOwner(t, filepath.Join(b, "offline.php"), 4243, 4243)

			// Settled: every node keeps the owners, and nothing else moved.
			time.Sleep(time.Second)
			for _, root := range []string{a, b} {
				for rel, own := range map[string][2]uint32{
					"from-a.php": {33, 33}, "from-b.php": {4242, 4243}, "uploads": {33, 4243},
					"uploads/x.jpg": {4242, 33}, "offline.php": {4243, 4243},
				} {
					var st syscall.Stat_t
					if err := syscall.Lstat(filepath.Join(root, rel), &st); err != nil || st.Uid != own[0] || st.Gid != own[1] {
						t.Errorf("%s: owner %d:%d (%v), want %d:%d", filepath.Join(root, rel), st.Uid, st.Gid, err, own[0], own[1])
					}
				}
				if copies, _ := filepath.Glob(filepath.Join(root, "*sync-conflict*")); len(copies) != 0 {
					t.Errorf("conflict copies for chowns: %v", copies)
				}
			}
			lsynctest.AssertTreesEqual(t, a, b, sftpOpts...)
		})
	}
}
