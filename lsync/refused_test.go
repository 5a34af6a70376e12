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
	if n := strings.Count(logs.String(), "target refused the operation"); n != 1 {
		t.Errorf("refusal logged %d times, want once:\n%s", n, logs.String())
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
