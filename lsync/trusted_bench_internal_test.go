//go:build unix

package lsync

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/lsync/syncstate"
)

// benchTree makes a source of 2,000 directories of 10 files each (20k
// entries): the shape of a docroot, scaled down.
func benchTree(dir string) error {
	mtime := time.Unix(1_600_000_000, 0)
	for d := range 2000 {
		sub := filepath.Join(dir, fmt.Sprintf("d%02d", d%20), fmt.Sprintf("s%03d", d))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return err
		}
		for f := range 10 {
			p := filepath.Join(sub, fmt.Sprintf("page-%d.html", f))
			if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
				return err
			}
			if err := os.Chtimes(p, mtime, mtime); err != nil {
				return err
			}
		}
	}
	return nil
}

// benchReconciler is a Reconciler over benchTree whose state records the
// tree as it is.
func benchReconciler(b *testing.B) *Reconciler {
	b.Helper()
	dir := b.TempDir()
	if err := benchTree(dir); err != nil {
		b.Fatal(err)
	}
	return trustingReconciler(b, dir)
}

// trustingReconciler is a Reconciler over dir whose state records the
// tree as it is now, and is trusted.
func trustingReconciler(b testing.TB, dir string) *Reconciler {
	b.Helper()
	src, err := OpenSource(dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = src.Close() })
	st, err := syncstate.Open(filepath.Join(b.TempDir(), "state.db"), "bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Close() })
	var mu sync.Mutex
	puts := map[string]syncstate.Record{}
	err = src.walkDirs(context.Background(), walkDirWorkers, func(_ string, entries []Entry, listErr error) ([]string, error) {
		if listErr != nil {
			return nil, listErr
		}
		var descend []string
		mu.Lock()
		defer mu.Unlock()
		for _, e := range entries {
			puts[e.Path] = recordOf(e)
			if e.Mode.IsDir() {
				descend = append(descend, e.Path)
			}
		}
		return descend, nil
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := st.Update(puts, nil); err != nil {
		b.Fatal(err)
	}
	r := &Reconciler{Source: src, State: st}
	r.TrustState(true)
	return r
}

// BenchmarkTrustedDiff is the comparison of a restart in sync: walk the
// source, compare each directory with the state's records.
func BenchmarkTrustedDiff(b *testing.B) {
	r := benchReconciler(b)
	defer reportCPU(b)()
	for b.Loop() {
		d, err := r.trustedDiff(b.Context(), nil)
		if err != nil || !d.empty() || d.entries != 22020 {
			b.Fatalf("diff: %v, %d paths, %d scan, %d entries", err, len(d.paths), len(d.scan), d.entries)
		}
	}
}

// BenchmarkWalkDirs is the source walk alone.
func BenchmarkWalkDirs(b *testing.B) {
	r := benchReconciler(b)
	defer reportCPU(b)()
	for b.Loop() {
		err := r.Source.walkDirs(b.Context(), walkDirWorkers, func(_ string, entries []Entry, _ error) ([]string, error) {
			var descend []string
			for _, e := range entries {
				if e.Mode.IsDir() {
					descend = append(descend, e.Path)
				}
			}
			return descend, nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// reportCPU reports allocations and the process's CPU time per op (user
// and system, all threads): a walk is spread over several goroutines,
// and its wall time says little on a shared machine.
func reportCPU(b *testing.B) func() {
	b.ReportAllocs()
	start := cpuTime()
	return func() { b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op") }
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
