package lsync

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestCountAheadFeedsTheNextPass: the count CountAhead started while the
// caller waited (the dial of `sync --once`) is the next pass's total; the
// pass does not walk the tree again to count it. Files added after the
// count show that: a recount would include them.
func TestCountAheadFeedsTheNextPass(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"a", "b", "d/c"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, n)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	src, err := OpenSource(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	r := &Reconciler{Source: src}
	stop := r.CountAhead(t.Context())
	c := r.countAhead.Load()
	if c == nil {
		t.Fatal("no count started")
	}
	<-c.done
	for _, n := range []string{"e", "d/f"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pp := r.startProgress(t.Context(), false)
	waitTotal(t, r)
	if got := r.Progress.Snapshot().Total; got != 4 {
		t.Errorf("total %d, want the 4 entries counted ahead (a recount finds 6)", got)
	}
	pp.stop()
	stop() // taken by the pass: returns at once
	if r.countAhead.Load() != nil {
		t.Error("the count is still pending after the pass took it")
	}

	// Without a count ahead, the pass counts for itself.
	pp = r.startProgress(t.Context(), false)
	waitTotal(t, r)
	if got := r.Progress.Snapshot().Total; got != 6 {
		t.Errorf("total %d, want 6", got)
	}
	pp.stop()

	// A count nobody took is abandoned by stop, and the next pass does
	// not pick up a stale one.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stop = r.CountAhead(ctx)
	stop()
	if r.countAhead.Load() != nil {
		t.Error("an abandoned count is left for the next pass")
	}
}

func waitTotal(t *testing.T, r *Reconciler) {
	t.Helper()
	for i := 0; r.Progress.Snapshot().Total == 0; i++ {
		if i > 5000 {
			t.Fatal("no total")
		}
		time.Sleep(time.Millisecond)
	}
}
