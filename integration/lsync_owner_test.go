package integration

import (
	"io"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
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

// sourceNames names the source's ids as another host would: the test
// peer is this host, whose user database would otherwise agree with the
// source's on every id.
type sourceNames map[uint32]string

func (n sourceNames) UserName(uid uint32) (string, bool)  { s, ok := n[uid]; return s, ok }
func (n sourceNames) GroupName(gid uint32) (string, bool) { s, ok := n[gid]; return s, ok }

// TestSSHSyncMapsOwnerNames: with owner: names (the default) a file whose
// owner is called www-data on the source lands owned by the peer's
// www-data, whatever its id there; an owner whose name the peer does not
// know keeps its number. The peer is this host, so the source's side
// names its ids as another host would (JobOptions.OwnerNames): the
// receiver on the peer is the real `lockstep receive` with this host's
// /etc/passwd and /etc/group, unchanged. Over SFTP names are not mapped:
// the numbers go, and the log says so.
func TestSSHSyncMapsOwnerNames(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	wd, err := user.Lookup("www-data")
	if err != nil {
		t.Skip("no www-data user on this host")
	}
	wdUID, _ := strconv.Atoi(wd.Uid)
	wdGID, _ := strconv.Atoi(wd.Gid)
	// 4242:4243 is www-data on the source; 4244:4245 a user the peer does
	// not know; neither id has a name on this host.
	names := sourceNames{4242: "www-data", 4243: "www-data", 4244: "deploy-lockstep-test", 4245: "deploy-lockstep-test"}
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			srv := sshdtest.Start(t)
			src, dst := t.TempDir(), t.TempDir()
			write(t, src, "uploads/a.jpg", "a", 0o644)
			write(t, src, "deploy.sh", "d", 0o755)
			mustOK(t, os.Symlink("a.jpg", filepath.Join(src, "uploads", "latest.jpg")))
			for _, rel := range []string{"uploads", "uploads/a.jpg", "uploads/latest.jpg"} {
				mustOK(t, os.Lchown(filepath.Join(src, rel), 4242, 4243))
			}
			mustOK(t, os.Lchown(filepath.Join(src, "deploy.sh"), 4244, 4245))
			logs := &capture{}
			tw := &testWriter{t: t}
			t.Cleanup(tw.close) // after the job's cleanup: it logs until stopped
			startSSHJobWith(t, "web1", srv, src, dst, withReceiver(t, p.receiver), func(o *lsync.JobOptions) {
				o.OwnerNames = names
				o.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(logs, tw), nil))
			})
			lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)

			web := [2]uint32{uint32(wdUID), uint32(wdGID)}
			if p.receiver == lsync.ReceiverOff {
				web = [2]uint32{4242, 4243}
			}
			waitOwner(t, filepath.Join(dst, "uploads"), web[0], web[1])
			waitOwner(t, filepath.Join(dst, "uploads/a.jpg"), web[0], web[1])
			waitOwner(t, filepath.Join(dst, "deploy.sh"), 4244, 4245)
			if p.receiver != lsync.ReceiverOff {
				waitOwner(t, filepath.Join(dst, "uploads/latest.jpg"), web[0], web[1])
			}
			// A chown alone on the source goes by name too.
			mustOK(t, os.Lchown(filepath.Join(src, "deploy.sh"), 4242, 4243))
			waitOwner(t, filepath.Join(dst, "deploy.sh"), web[0], web[1])

			notMapped := strings.Contains(logs.String(), "names are not mapped")
			if p.receiver == lsync.ReceiverOff && !notMapped {
				t.Errorf("over SFTP the log does not say that names are not mapped:\n%s", logs)
			}
			if p.receiver != lsync.ReceiverOff && notMapped {
				t.Errorf("the receiver maps names, but the log says it does not:\n%s", logs)
			}
		})
	}
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
