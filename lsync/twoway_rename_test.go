package lsync_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/localtarget"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// TestTwoWayRenameOfJustDeliveredFile: node a renames a file node b has
// just delivered, within a's batch window. a's batch then holds the old
// name as "created then renamed away"; it must still remove the old name
// on b, or b keeps it for good (two-way full passes never delete).
func TestTwoWayRenameOfJustDeliveredFile(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	job := func(src, peer, dst string) lsync.JobConfig {
		return lsync.JobConfig{
			Name: "docroot", Source: src, TwoWay: true, VerifyInterval: ptr(time.Duration(0)),
			// A long quiet period on a makes sure the delivery and the
			// rename land in the same batch.
			Delay: 300 * time.Millisecond, MaxDelay: 2 * time.Second,
			Targets: []lsync.TargetConfig{{Name: peer, Path: dst}},
		}
	}
	ja := lsynctest.StartJob(t, job(a, "b", b), nil, lsync.JobOptions{Node: "a", Registerer: prometheus.NewRegistry()})
	jb := lsynctest.StartJob(t, job(b, "a", a), nil, lsync.JobOptions{Node: "b", Registerer: prometheus.NewRegistry()})
	// Wait for the initial passes: a file a full pass delivers while its
	// own live event is still queued on b is a different race (see the
	// package documentation).
	waitFor(t, "initial passes", func() bool {
		sa, sb := statusOf(ja, "b"), statusOf(jb, "a")
		return sa.Connected && sb.Connected && !sa.LastSync.IsZero() && !sb.LastSync.IsZero()
	})

	for i := 0; i < 3; i++ {
		oldName, newName := fmt.Sprintf("from-b-%d.txt", i), fmt.Sprintf("renamed-on-a-%d.txt", i)
		mustWrite(t, b, oldName, "delivered by b")
		waitFor(t, oldName+" delivered to a", func() bool {
			_, err := os.Lstat(filepath.Join(a, oldName))
			return err == nil
		})
		if err := os.Rename(filepath.Join(a, oldName), filepath.Join(a, newName)); err != nil {
			t.Fatal(err)
		}
		lsynctest.WaitTreesEqual(t, a, b, waitLimit)
		for _, root := range []string{a, b} {
			if _, err := os.Lstat(filepath.Join(root, oldName)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s still in %s (err %v)", oldName, root, err)
			}
			if _, err := os.Lstat(filepath.Join(root, newName)); err != nil {
				t.Errorf("%s missing in %s: %v", newName, root, err)
			}
		}
	}
}

// renameFailingConnector wraps a local target whose Rename always fails
// (like an SFTP server refusing the rename) and records, when the old
// name is removed, whether the new name had already landed.
type renameFailingConnector struct {
	inner   lsync.Connector
	dst     string
	watch   string // old name
	newName string
	mu      sync.Mutex
	// removedBeforeUpload is set when watch was removed while newName
	// was not on the target yet.
	removedBeforeUpload bool
	renames             atomic.Int32
}

func (c *renameFailingConnector) Name() string { return c.inner.Name() }

func (c *renameFailingConnector) Connect(ctx context.Context) (lsync.Target, error) {
	t, err := c.inner.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &renameFailingTarget{Target: t, c: c}, nil
}

type renameFailingTarget struct {
	lsync.Target
	c *renameFailingConnector
}

func (t *renameFailingTarget) Rename(ctx context.Context, from, to string) error {
	t.c.renames.Add(1)
	return &os.LinkError{Op: "rename", Old: from, New: to, Err: os.ErrPermission}
}

func (t *renameFailingTarget) RemoveAll(ctx context.Context, rel string) error {
	if rel == t.c.watch {
		if _, err := os.Lstat(filepath.Join(t.c.dst, t.c.newName, "f.txt")); err != nil {
			t.c.mu.Lock()
			t.c.removedBeforeUpload = true
			t.c.mu.Unlock()
		}
	}
	return t.Target.RemoveAll(ctx, rel)
}

// TestRenameFallbackDeletesOldNameAfterUpload: when the target refuses a
// directory rename, the new name is uploaded and only then is the old
// name deleted, in two-way mode too (whose full passes never delete).
func TestRenameFallbackDeletesOldNameAfterUpload(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "t1")
	cfg.TwoWay = true
	mustWrite(t, src, "old/f.txt", "f")
	mustWrite(t, src, "old/sub/g.txt", "g")
	inner, err := localtarget.NewConnector(cfg.Targets[0])
	if err != nil {
		t.Fatal(err)
	}
	c := &renameFailingConnector{inner: inner, dst: dst[0], watch: "old", newName: "new"}
	j := lsynctest.StartJob(t, cfg, []lsync.Connector{c}, lsync.JobOptions{Node: "a", Registerer: prometheus.NewRegistry()})
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
	waitFor(t, "in sync", func() bool { st := statusOf(j, "t1"); return st.Connected && !st.LastSync.IsZero() })

	if err := os.Rename(filepath.Join(src, "old"), filepath.Join(src, "new")); err != nil {
		t.Fatal(err)
	}
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
	if c.renames.Load() == 0 {
		t.Fatal("the directory rename was not replayed as a Rename")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removedBeforeUpload {
		t.Error("the old name was deleted before the new name was uploaded")
	}
}

// notifyingConnector hands out local sessions that can be killed from the
// test; a killed session announces it through Disconnected(), as the SFTP
// session does when its keepalive goes unanswered.
type notifyingConnector struct {
	inner    lsync.Connector
	mu       sync.Mutex
	current  *notifyingTarget
	connects atomic.Int32
}

func (c *notifyingConnector) Name() string { return c.inner.Name() }

func (c *notifyingConnector) Connect(ctx context.Context) (lsync.Target, error) {
	t, err := c.inner.Connect(ctx)
	if err != nil {
		return nil, err
	}
	nt := &notifyingTarget{Target: t, lost: make(chan struct{})}
	c.mu.Lock()
	c.current = nt
	c.mu.Unlock()
	c.connects.Add(1)
	return nt, nil
}

func (c *notifyingConnector) kill() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.current.once.Do(func() { close(c.current.lost) })
}

type notifyingTarget struct {
	lsync.Target
	lost chan struct{}
	once sync.Once
}

func (t *notifyingTarget) Disconnected() <-chan struct{} { return t.lost }

// TestIdleWorkerNoticesDisconnect: an idle target whose session dies is
// shown as disconnected without waiting for a change, and reconnects.
func TestIdleWorkerNoticesDisconnect(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "t1")
	mustWrite(t, src, "a.txt", "a")
	inner, err := localtarget.NewConnector(cfg.Targets[0])
	if err != nil {
		t.Fatal(err)
	}
	c := &notifyingConnector{inner: inner}
	reg := prometheus.NewRegistry()
	// A long backoff leaves time to observe the disconnected state.
	j := lsynctest.StartJob(t, cfg, []lsync.Connector{c}, lsync.JobOptions{
		Registerer: reg, ReconnectMin: 500 * time.Millisecond, ReconnectMax: time.Second,
	})
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
	waitFor(t, "connected and idle", func() bool { st := statusOf(j, "t1"); return st.Connected && !st.LastSync.IsZero() })

	c.kill()
	waitFor(t, "idle target shown as disconnected", func() bool {
		st := statusOf(j, "t1")
		return !st.Connected && st.LastError != ""
	})
	if v := metricValue(t, reg, "lockstep_sync_connected", "t1"); v != 0 {
		t.Errorf("lockstep_sync_connected = %v, want 0", v)
	}
	waitFor(t, "reconnected", func() bool { return c.connects.Load() >= 2 && statusOf(j, "t1").Connected })
	mustWrite(t, src, "b.txt", "b")
	lsynctest.WaitTreesEqual(t, src, dst[0], waitLimit)
}
