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

// TestSSHSyncKeepsOwnership: files, directories and symlinks owned by the
// web server's user on the source arrive with that owner and group on
// the peer (the SSH user is root), through the receiver and over plain
// SFTP (a symlink's own owner only through the receiver: SFTP cannot
// change it); a chown alone on the source follows; owner: false leaves
// the SSH user's owner.
func TestSSHSyncKeepsOwnership(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	const uid, gid = 33, 33 // www-data on Debian
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			srv := sshdtest.Start(t)
			src, dst := t.TempDir(), t.TempDir()
			write(t, src, "uploads/a.jpg", "a", 0o644)
			write(t, src, "index.php", "i", 0o644)
			mustOK(t, os.Symlink("a.jpg", filepath.Join(src, "uploads", "latest.jpg")))
			for _, rel := range []string{"uploads", "uploads/a.jpg"} {
				mustOK(t, os.Lchown(filepath.Join(src, rel), uid, gid))
			}
			mustOK(t, os.Lchown(filepath.Join(src, "uploads/latest.jpg"), uid, gid))
			startSSHJob(t, "web1", srv, src, dst, withReceiver(t, p.receiver))
			lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)

			waitOwner(t, filepath.Join(dst, "uploads"), uid, gid)
			waitOwner(t, filepath.Join(dst, "uploads/a.jpg"), uid, gid)
			waitOwner(t, filepath.Join(dst, "index.php"), 0, 0)
			if p.receiver != lsync.ReceiverOff {
				waitOwner(t, filepath.Join(dst, "uploads/latest.jpg"), uid, gid)
			}
			// A chown alone on the source.
			mustOK(t, os.Lchown(filepath.Join(src, "index.php"), uid, 0))
			waitOwner(t, filepath.Join(dst, "index.php"), uid, 0)
		})
	}
	t.Run("owner: false", func(t *testing.T) {
		srv := sshdtest.Start(t)
		src, dst := t.TempDir(), t.TempDir()
		write(t, src, "a.txt", "a", 0o644)
		mustOK(t, os.Lchown(filepath.Join(src, "a.txt"), uid, gid))
		startSSHJob(t, "web1", srv, src, dst, func(c *lsync.JobConfig) { c.Owner = "false" })
		lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)
		waitOwner(t, filepath.Join(dst, "a.txt"), 0, 0)
	})
}

func waitOwner(t *testing.T, p string, uid, gid uint32) {
	t.Helper()
	var st syscall.Stat_t
	deadline := time.Now().Add(convergeTimeout)
	for {
		err := syscall.Lstat(p, &st)
		if err == nil && st.Uid == uid && st.Gid == gid {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: owner %d:%d (%v), want %d:%d", p, st.Uid, st.Gid, err, uid, gid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
