package integration

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/integration/sshdtest"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// waitContent waits until p holds want.
func waitContent(t *testing.T, p, want string) {
	t.Helper()
	deadline := time.Now().Add(convergeTimeout)
	for {
		b, err := os.ReadFile(p)
		if err == nil && string(b) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %q (err %v), want %q", p, b, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// SFTP v3 carries whole-second mtimes, so a same-size rewrite within the
// second of the copy on the peer looks unchanged to a size+mtime
// comparison. Neither the live path nor the catch-up after the peer was
// down may lose it (benchmark scenario 6).
func TestSSHSyncSameSecondRewriteNotLost(t *testing.T) {
	srv := sshdtest.Start(t)
	src, dst := t.TempDir(), t.TempDir()
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	lsynctest.WriteFile(t, src, "live.html", "version-1", 0o644, base)
	lsynctest.WriteFile(t, src, "down.html", "version-1", 0o644, base)
	j := startSSHJob(t, "web1", srv, src, dst, nil)
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)

	// While connected: delivered by the live event.
	lsynctest.WriteFile(t, src, "live.html", "version-2", 0o644, base.Add(400*time.Millisecond))
	waitContent(t, filepath.Join(dst, "live.html"), "version-2")

	// While the peer is down: delivered by the catch-up after reconnecting.
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, j, func(s lsync.TargetStatus) bool { return !s.Connected })
	lsynctest.WriteFile(t, src, "down.html", "version-2", 0o644, base.Add(400*time.Millisecond))
	waitStatus(t, j, func(s lsync.TargetStatus) bool { return !s.Connected && s.PendingFiles >= 1 })
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	waitContent(t, filepath.Join(dst, "down.html"), "version-2")
	waitStatus(t, j, func(s lsync.TargetStatus) bool { return s.Connected && s.PendingFiles == 0 && !s.Rescanning })
	lsynctest.AssertTreesEqual(t, src, dst, sftpOpts...)
}
