package lsync_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// BenchmarkPropagationLatency measures how long a single file written to
// the source takes to appear, complete, on a local target with default
// settings. Run by hand:
//
//	go test -run '^$' -bench PropagationLatency -benchtime 200x ./lsync/
func BenchmarkPropagationLatency(b *testing.B) {
	src, dst := b.TempDir(), b.TempDir()
	cfg := lsync.JobConfig{Name: "bench", Source: src, Targets: []lsync.TargetConfig{{Name: "local", Path: dst}}}
	lsynctest.StartJob(b, cfg, nil, lsync.JobOptions{Logger: discardLogger()})
	lsynctest.WaitTreesEqual(b, src, dst, 10*time.Second)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	if err := w.Add(dst); err != nil {
		b.Fatal(err)
	}
	content := bytes.Repeat([]byte("<html>lockstep</html>\n"), 200) // ~4 KB page
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := "page" + strconv.Itoa(i) + ".html"
		final := filepath.Join(dst, name)
		start := time.Now()
		if err := os.WriteFile(filepath.Join(src, name), content, 0o644); err != nil {
			b.Fatal(err)
		}
		timeout := time.After(10 * time.Second)
	wait:
		for {
			select {
			case ev := <-w.Events:
				if ev.Name == final && ev.Has(fsnotify.Create) {
					break wait
				}
			case err := <-w.Errors:
				b.Fatal(err)
			case <-timeout:
				b.Fatalf("%s did not arrive", name)
			}
		}
		lat = append(lat, time.Since(start))
		// Spread the writes so that each is its own batch.
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(float64(len(lat))*p))] }
	b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}

// BenchmarkBurstGoSource copies $(go env GOROOT)/src (about 12k files,
// 157 MB) into a watched source and measures how long after the copy
// started the local target is identical. Run by hand:
//
//	go test -run '^$' -bench BurstGoSource -benchtime 1x ./lsync/
func BenchmarkBurstGoSource(b *testing.B) {
	goroot := runtime.GOROOT()
	for i := 0; i < b.N; i++ {
		src, dst := b.TempDir(), b.TempDir()
		cfg := lsync.JobConfig{Name: "bench", Source: src, Targets: []lsync.TargetConfig{{Name: "local", Path: dst}}}
		ctx, cancel := context.WithCancel(context.Background())
		j, err := lsync.NewJob(cfg, lsynctest.LocalConnectors(b, cfg), lsync.JobOptions{Logger: discardLogger()})
		if err != nil {
			b.Fatal(err)
		}
		if err := j.Start(ctx); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if out, err := exec.Command("cp", "-a", filepath.Join(goroot, "src"), src+"/").CombinedOutput(); err != nil {
			b.Fatalf("cp: %v %s", err, out)
		}
		copied := time.Since(start)
		for {
			st := j.Status()[0]
			if st.PendingFiles == 0 && !st.Rescanning && st.Lag == 0 {
				if d, _ := lsynctest.DiffTrees(src, dst); len(d) == 0 {
					break
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		b.ReportMetric(copied.Seconds(), "copy-s")
		b.ReportMetric(time.Since(start).Seconds(), "identical-s")
		cancel()
		j.Stop()
	}
}
