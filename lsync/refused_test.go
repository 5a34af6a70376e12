package lsync_test

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRefusalLoggedOnceCountedAndTheRestSyncs: a target directory turned
// into a symlink makes writes below it refused. Each path is logged once
// however often it is retried, every refusal is counted, and other paths
// keep syncing.
func TestRefusalLoggedOnceCountedAndTheRestSyncs(t *testing.T) {
	src, dst, outside := t.TempDir(), t.TempDir(), t.TempDir()
	lsynctest.WriteFile(t, outside, "keep.txt", "outside", 0o600, time.Time{})
	lsynctest.WriteFile(t, src, "uploads/a.txt", "a", 0o644, time.Time{})
	cfg := lsync.JobConfig{Name: "docroot", Source: src, VerifyInterval: ptr(time.Duration(0)),
		Targets: []lsync.TargetConfig{{Name: "t", Path: dst}}}
	logs := &syncBuffer{}
	reg := prometheus.NewRegistry()
	j := lsynctest.StartJob(t, cfg, nil, lsync.JobOptions{Node: "n", Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	lsynctest.WaitTreesEqual(t, src, dst, waitLimit)
	before := lsynctest.Snapshot(t, outside)

	if err := os.Rename(filepath.Join(dst, "uploads"), filepath.Join(dst, "uploads.old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dst, "uploads")); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		lsynctest.WriteFile(t, src, "uploads/new.txt", strings.Repeat("x", i+1), 0o644, time.Time{})
		lsynctest.WriteFile(t, src, "other.txt", strings.Repeat("y", i+1), 0o644, time.Time{})
		waitFor(t, "other.txt on the target", func() bool {
			b, err := os.ReadFile(filepath.Join(dst, "other.txt"))
			return err == nil && len(b) == i+1
		})
		waitFor(t, "the refusal counted", func() bool {
			return metricValue(t, reg, "lockstep_sync_refused_total", "t") >= float64(i+1)
		})
	}
	lsynctest.AssertSnapshotUnchanged(t, outside, before)
	// Once per path (the directory's own mtime may be refused too, once).
	if n := strings.Count(logs.String(), "path=uploads/new.txt"); n != 1 {
		t.Errorf("refusal of uploads/new.txt logged %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "path=uploads/new.txt") {
		t.Errorf("the refusal does not name the path:\n%s", logs.String())
	}
	// A full pass repairs the target (the source is authoritative) and
	// reports the target in sync.
	res := j.ReconcileOnce(t.Context())
	if len(res) != 1 || res[0].Err != nil {
		t.Fatalf("ReconcileOnce: %+v", res)
	}
	lsynctest.WaitTreesEqual(t, src, dst, waitLimit, lsynctest.Ignore(func(rel string) bool {
		return rel == "uploads.old"
	}))
	lsynctest.AssertSnapshotUnchanged(t, outside, before)
}

// TestRefusedPathInStatus: a refused path shows in the target's status
// (count, first path), and the target is not reported in sync while it is
// refused, although other paths land; once the path lands it is cleared
// and the target is in sync again. The local target reports its protocol.
func TestRefusedPathInStatus(t *testing.T) {
	src, dst, outside := t.TempDir(), t.TempDir(), t.TempDir()
	lsynctest.WriteFile(t, src, "uploads/a.txt", "a", 0o644, time.Time{})
	cfg := lsync.JobConfig{Name: "docroot", Source: src, VerifyInterval: ptr(time.Duration(0)),
		Targets: []lsync.TargetConfig{{Name: "t", Path: dst}}}
	reg := prometheus.NewRegistry()
	j := lsynctest.StartJob(t, cfg, nil, lsync.JobOptions{Node: "n", Registerer: reg})
	lsynctest.WaitTreesEqual(t, src, dst, waitLimit)
	status := func() lsync.TargetStatus { return j.Status()[0] }
	waitFor(t, "the target in sync", func() bool { return !status().LastSync.IsZero() })
	if st := status(); st.Protocol != "local" || st.ProtocolFallback != "" || st.Refused != 0 {
		t.Errorf("status before: %+v", st)
	}

	if err := os.Rename(filepath.Join(dst, "uploads"), filepath.Join(dst, "uploads.old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dst, "uploads")); err != nil {
		t.Fatal(err)
	}
	lsynctest.WriteFile(t, src, "uploads/new.txt", "n", 0o644, time.Time{})
	waitFor(t, "the refusal in status", func() bool { return status().Refused == 1 })
	st := status()
	if st.FirstRefused != "uploads/new.txt" {
		t.Errorf("FirstRefused %q, want uploads/new.txt", st.FirstRefused)
	}
	lastSync := st.LastSync
	lsynctest.WriteFile(t, src, "other.txt", "o", 0o644, time.Time{})
	waitFor(t, "other.txt on the target", func() bool {
		_, err := os.Stat(filepath.Join(dst, "other.txt"))
		// The refused path waits for its retry: still pending.
		return err == nil && status().PendingFiles == 1
	})
	time.Sleep(50 * time.Millisecond)
	if st := status(); !st.LastSync.Equal(lastSync) || st.Refused != 1 {
		t.Errorf("a batch landed beside the refused path: LastSync %v -> %v, Refused %d; want the target not in sync",
			lastSync, st.LastSync, st.Refused)
	}

	// The peer is repaired; the next change of the path lands it.
	if err := os.Remove(filepath.Join(dst, "uploads")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dst, "uploads.old"), filepath.Join(dst, "uploads")); err != nil {
		t.Fatal(err)
	}
	lsynctest.WriteFile(t, src, "uploads/new.txt", "n2", 0o644, time.Time{})
	waitFor(t, "the refusal cleared and the target in sync", func() bool {
		st := status()
		return st.Refused == 0 && st.FirstRefused == "" && st.LastSync.After(lastSync)
	})
	if v := metricValue(t, reg, "lockstep_sync_target_protocol", "t"); v != 1 {
		t.Errorf("lockstep_sync_target_protocol = %v, want 1", v)
	}
}

// TestRefusedPathRetried: a refused path is looked at again on its own
// (2 s, then backing off): once the peer is put right it lands without a
// new change in the source and without a full pass (verification off).
func TestRefusedPathRetried(t *testing.T) {
	src, dst, outside := t.TempDir(), t.TempDir(), t.TempDir()
	lsynctest.WriteFile(t, src, "uploads/a.txt", "a", 0o644, time.Time{})
	cfg := lsync.JobConfig{Name: "docroot", Source: src, VerifyInterval: ptr(time.Duration(0)),
		Targets: []lsync.TargetConfig{{Name: "t", Path: dst}}}
	j := lsynctest.StartJob(t, cfg, nil, lsync.JobOptions{Node: "n"})
	lsynctest.WaitTreesEqual(t, src, dst, waitLimit)
	if err := os.Rename(filepath.Join(dst, "uploads"), filepath.Join(dst, "uploads.old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dst, "uploads")); err != nil {
		t.Fatal(err)
	}
	lsynctest.WriteFile(t, src, "uploads/new.txt", "n", 0o644, time.Time{})
	waitFor(t, "the refusal in status", func() bool { return j.Status()[0].Refused == 1 })
	if err := os.Remove(filepath.Join(dst, "uploads")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dst, "uploads.old"), filepath.Join(dst, "uploads")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the refused path landed by its retry", func() bool {
		b, err := os.ReadFile(filepath.Join(dst, "uploads/new.txt"))
		return err == nil && string(b) == "n" && j.Status()[0].Refused == 0
	})
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Errorf("something was written outside the target: %v", entries)
	}
}
