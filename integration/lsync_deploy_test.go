package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/integration/sshdtest"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// release writes a small web application release into dir.
func release(t *testing.T, dir, version string, files int) {
	t.Helper()
	write(t, dir, "index.php", "<?php echo '"+version+"';", 0o644)
	for i := range files {
		write(t, dir, "vendor/lib"+strconv.Itoa(i%5)+"/f"+strconv.Itoa(i)+".php", version+" "+strconv.Itoa(i), 0o644)
	}
	write(t, dir, "only-in-"+version+".txt", version, 0o644)
}

func mustRename(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

// TestSSHSyncFollowsDirectorySwapDeploy: the deploy builds the new
// release beside the docroot, renames the docroot away, renames the new
// tree into its place and deletes the old one. The peer ends equal to the
// new release, and live edits in it propagate.
func TestSSHSyncFollowsDirectorySwapDeploy(t *testing.T) {
	srv := sshdtest.Start(t)
	parent, dst := t.TempDir(), t.TempDir()
	src := filepath.Join(parent, "docroot")
	release(t, src, "v1", 40)
	startSSHJob(t, "a", srv, src, dst, nil)
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)

	release(t, filepath.Join(parent, "docroot.new"), "v2", 40)
	mustRename(t, src, filepath.Join(parent, "docroot.old"))
	mustRename(t, filepath.Join(parent, "docroot.new"), src)
	// The old tree keeps changing after it was moved away, then goes:
	// none of it may reach the peer.
	write(t, filepath.Join(parent, "docroot.old"), "late-write-in-old-tree.txt", "old", 0o644)
	if err := os.RemoveAll(filepath.Join(parent, "docroot.old")); err != nil {
		t.Fatal(err)
	}
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)

	// Live edits in the new tree are watched.
	write(t, src, "vendor/lib1/f1.php", "edited after the deploy", 0o644)
	write(t, src, "uploads/new.jpg", "jpeg", 0o644)
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)
}

// TestSSHSyncFollowsSymlinkReleaseSwitch: the source is `current ->
// releases/N`, switched with `ln -sfn` + `mv -T` as Capistrano and
// Deployer do. Edits under the link propagate before and after the
// switch, and the switch itself does.
func TestSSHSyncFollowsSymlinkReleaseSwitch(t *testing.T) {
	srv := sshdtest.Start(t)
	base, dst := t.TempDir(), t.TempDir()
	release(t, filepath.Join(base, "releases", "1"), "v1", 30)
	current := filepath.Join(base, "current")
	if err := os.Symlink("releases/1", current); err != nil {
		t.Fatal(err)
	}
	startSSHJob(t, "a", srv, current, dst, nil)
	lsynctest.WaitTreesEqual(t, filepath.Join(base, "releases", "1"), dst, convergeTimeout, sftpOpts...)

	write(t, current, "index.php", "<?php echo 'hotfix';", 0o644)
	lsynctest.WaitTreesEqual(t, filepath.Join(base, "releases", "1"), dst, convergeTimeout, sftpOpts...)

	release(t, filepath.Join(base, "releases", "2"), "v2", 30)
	if err := os.Symlink("releases/2", filepath.Join(base, "current.tmp")); err != nil {
		t.Fatal(err)
	}
	mustRename(t, filepath.Join(base, "current.tmp"), current) // mv -T
	lsynctest.WaitTreesEqual(t, filepath.Join(base, "releases", "2"), dst, convergeTimeout, sftpOpts...)

	write(t, current, "vendor/lib2/f7.php", "edited in release 2", 0o644)
	// An edit in the release no longer current must not reach the peer.
	write(t, filepath.Join(base, "releases", "1"), "index.php", "<?php echo 'stale';", 0o644)
	lsynctest.WaitTreesEqual(t, filepath.Join(base, "releases", "2"), dst, convergeTimeout, sftpOpts...)
	time.Sleep(300 * time.Millisecond)
	lsynctest.AssertTreesEqual(t, filepath.Join(base, "releases", "2"), dst, sftpOpts...)
}

// TestSSHSyncEmptyOrMissingSourceDeletesNothing: the volume holding the
// docroot is not mounted when the daemon starts (the directory is missing,
// or an empty mountpoint). Nothing is deleted on the peer, the job says it
// holds, and when the docroot appears the peer follows it.
func TestSSHSyncEmptyOrMissingSourceDeletesNothing(t *testing.T) {
	for _, tc := range []struct {
		name   string
		create bool // an empty mountpoint rather than nothing at all
	}{{"missing", false}, {"empty", true}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := sshdtest.Start(t)
			parent, dst := t.TempDir(), t.TempDir()
			release(t, dst, "v1", 40) // the peer's copy: the only one right now
			before, err := lsynctest.DiffTrees(dst, dst)
			if err != nil || len(before) != 0 {
				t.Fatal(before, err)
			}
			src := filepath.Join(parent, "docroot")
			if tc.create {
				if err := os.Mkdir(src, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			j := startSSHJob(t, "a", srv, src, dst, nil)
			waitStatus(t, j, func(s lsync.TargetStatus) bool { return s.Held != "" })
			st := j.job.Status()[0]
			if want := map[bool]string{false: "missing", true: "empty"}[tc.create]; !strings.Contains(st.Held, want) {
				t.Errorf("held %q, want it to say %q", st.Held, want)
			}
			time.Sleep(500 * time.Millisecond) // a few retries
			if _, err := os.Stat(filepath.Join(dst, "index.php")); err != nil {
				t.Fatalf("the peer's docroot was deleted: %v", err)
			}
			// The volume is mounted: a new tree appears at the name.
			release(t, filepath.Join(parent, "mounted"), "v2", 40)
			if tc.create {
				if err := os.Remove(src); err != nil {
					t.Fatal(err)
				}
			}
			mustRename(t, filepath.Join(parent, "mounted"), src)
			lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)
			waitStatus(t, j, func(s lsync.TargetStatus) bool { return s.Held == "" })
		})
	}
}
