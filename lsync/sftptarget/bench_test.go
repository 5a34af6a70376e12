package sftptarget

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/lockstep-ha/lockstep/integration/sshdtest"
	"github.com/lockstep-ha/lockstep/lsync"
)

// Raw transport throughput over loopback sshd, without the sync engine:
//
//	go test -run '^$' -bench Small -benchtime 3000x ./lsync/sftptarget/
//	go test -run '^$' -bench 'Large|Walk' -benchtime 3x ./lsync/sftptarget/
func BenchmarkWriteFileSmall(b *testing.B) {
	for _, ch := range []int{1, sftpChannels} {
		for _, conc := range []int{1, 8, 32} {
			b.Run(fmt.Sprintf("4KiB/channels=%d/concurrency=%d", ch, conc), func(b *testing.B) {
				benchSmall(b, ch, conc, 4096)
			})
		}
	}
}

func benchSmall(b *testing.B, channels, conc, size int) {
	srv := sshdtest.Start(b)
	root := filepath.Join(b.TempDir(), "root")
	c, err := newConnector(srv.TargetConfig("bench", root), nil)
	if err != nil {
		b.Fatal(err)
	}
	c.channels = channels
	ctx := context.Background()
	s, err := c.connect(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	data := bytes.Repeat([]byte("x"), size)
	mtime := time.Now()
	var next atomic.Int64
	b.SetBytes(int64(size))
	b.ResetTimer()
	var g errgroup.Group
	for w := 0; w < conc; w++ {
		g.Go(func() error {
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return nil
				}
				// 100 files per directory, like a docroot.
				rel := fmt.Sprintf("d%03d/f%05d.html", i/100, i)
				if err := s.WriteFile(ctx, rel, bytes.NewReader(data), 0o644, mtime); err != nil {
					return err
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "files/s")
}

func BenchmarkWriteFileLarge(b *testing.B) {
	srv := sshdtest.Start(b)
	root := filepath.Join(b.TempDir(), "root")
	c, err := newConnector(srv.TargetConfig("bench", root), nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	s, err := c.connect(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	data := make([]byte, 128<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.WriteFile(ctx, "big.bin", bytes.NewReader(data), 0o644, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWalkGoSrc walks $GOROOT/src (about 11k files) over SFTP, the
// cost of every reconciliation pass on the target side.
func BenchmarkWalkGoSrc(b *testing.B) {
	srv := sshdtest.Start(b)
	c, err := newConnector(srv.TargetConfig("bench", filepath.Join(runtime.GOROOT(), "src")), nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	s, err := c.connect(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n := 0
		if err := s.Walk(ctx, "", func(lsync.Entry) error { n++; return nil }); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(n), "entries")
	}
}

// BenchmarkInitialSync runs a full reconciliation of a docroot-shaped
// tree (files of 256 B, ten per directory, like the harness's big-tree
// scenario at a fifth of its size) into an empty target, through the real
// sync engine:
//
//	go test -run '^$' -bench InitialSync -benchtime 1x ./lsync/sftptarget/
//
// BENCH_FILES (default 20000), BENCH_CONC and BENCH_CHANNELS override
// the tree size, the job's concurrency and the number of SFTP channels;
// BENCH_RECEIVER=/path/to/lockstep measures the receiver instead of SFTP;
// BENCH_CPUPROFILE writes a CPU profile of the pass alone.
func BenchmarkInitialSync(b *testing.B) {
	src, files := makeDocroot(b)
	source, err := lsync.OpenSource(src, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer source.Close()
	srv := sshdtest.Start(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := newConnector(srv.TargetConfig("bench", filepath.Join(b.TempDir(), "root")), nil)
		if err != nil {
			b.Fatal(err)
		}
		conc := lsync.DefaultConcurrency
		if v, err := strconv.Atoi(os.Getenv("BENCH_CONC")); err == nil {
			conc = v
		}
		if v, err := strconv.Atoi(os.Getenv("BENCH_CHANNELS")); err == nil {
			c.channels = v
		}
		var s lsync.Target
		if bin := os.Getenv("BENCH_RECEIVER"); bin != "" {
			// The lockstep receiver instead of SFTP: BENCH_RECEIVER is
			// the path of a built lockstep binary.
			c.cfg.Receiver, c.cfg.ReceiverCommand = lsync.ReceiverOn, bin
			s, err = c.Connect(ctx)
		} else {
			s, err = c.connect(ctx)
		}
		if err != nil {
			b.Fatal(err)
		}
		rec := &lsync.Reconciler{Source: source, Target: "bench", Delete: true, Concurrency: conc, Logger: slog.New(slog.DiscardHandler)}
		start, cpu0, busy0 := time.Now(), cpuTime(), machineBusy()
		tt := &timedTarget{Target: s}
		stopProfile := profileIfAsked(b)
		rep, err := rec.Reconcile(ctx, tt, false)
		stopProfile()
		if err != nil {
			b.Fatal(err)
		}
		if !rep.InSync() || rep.Files != files {
			b.Fatalf("pass incomplete: %d files, errors %v, retry %v", rep.Files, rep.Errors, rep.Retry)
		}
		b.ReportMetric(float64(files)/time.Since(start).Seconds(), "files/s")
		b.ReportMetric((cpuTime() - cpu0).Seconds(), "client-cpu-s")
		// Client and server share this machine: when the busy time
		// nears wall time × cores, the pass is CPU-bound.
		b.ReportMetric((machineBusy() - busy0).Seconds(), "machine-busy-s")
		b.ReportMetric(time.Duration(tt.mkdir.Load()).Seconds(), "mkdir-call-s")
		b.ReportMetric(time.Duration(tt.chtimes.Load()).Seconds(), "chtimes-call-s")
		b.ReportMetric(time.Duration(tt.walk.Load()).Seconds(), "walk-s")
		b.ReportMetric(float64(peakRSS())/(1<<20), "peak-rss-MiB")
		_ = s.Close()
	}
}

// makeDocroot writes BENCH_FILES (default 20000) files of 256 B, ten per
// directory, under a fresh source directory.
func makeDocroot(b *testing.B) (dir string, files int) {
	files, perDir := 20000, 10
	if v, err := strconv.Atoi(os.Getenv("BENCH_FILES")); err == nil {
		files = v
	}
	src := b.TempDir()
	data := bytes.Repeat([]byte("x"), 256)
	for i := 0; i < files; i++ {
		dir := filepath.Join(src, fmt.Sprintf("d%02d", i/perDir/100), fmt.Sprintf("d%05d", i/perDir))
		if i%perDir == 0 {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				b.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%06d.html", i)), data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	return src, files
}

// cpuTime is the CPU time this process used so far (user + system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// profileIfAsked writes a CPU profile of the pass alone (without the
// set-up) to the file named by BENCH_CPUPROFILE.
func profileIfAsked(b *testing.B) (stop func()) {
	file := os.Getenv("BENCH_CPUPROFILE")
	if file == "" {
		return func() {}
	}
	f, err := os.Create(file)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}
}

// peakRSS is this process's VmHWM in bytes.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// machineBusy is the CPU time all processes used so far (the non-idle
// jiffies of /proc/stat), to see what the server side costs.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	var busy int64
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseInt(f, 10, 64)
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return time.Duration(busy) * time.Second / 100 // USER_HZ
}

// timedTarget adds up the time spent in some calls. Mkdir and Chtimes run
// in parallel per directory level, so their figures are summed call time
// (a measure of round trips), not wall time.
type timedTarget struct {
	lsync.Target
	mkdir, chtimes, walk atomic.Int64 // nanoseconds
}

func (t *timedTarget) Mkdir(ctx context.Context, rel string, mode fs.FileMode) error {
	defer func(start time.Time) { t.mkdir.Add(int64(time.Since(start))) }(time.Now())
	return t.Target.Mkdir(ctx, rel, mode)
}

func (t *timedTarget) Chtimes(ctx context.Context, rel string, mtime time.Time) error {
	defer func(start time.Time) { t.chtimes.Add(int64(time.Since(start))) }(time.Now())
	return t.Target.Chtimes(ctx, rel, mtime)
}

func (t *timedTarget) Walk(ctx context.Context, sub string, fn func(lsync.Entry) error) error {
	defer func(start time.Time) { t.walk.Add(int64(time.Since(start))) }(time.Now())
	return t.Target.Walk(ctx, sub, fn)
}

// BenchmarkJobInitialSync runs a whole job (watcher, batcher, worker) on
// a pre-existing tree against real sshd, as `lockstep sync` starts on a
// big docroot: the figures to compare with BenchmarkInitialSync, which
// times the reconciliation alone. BENCH_FILES sets the tree size;
// BENCH_LOG=1 shows the job's log; BENCH_HEAPPROFILE writes the heap
// in use once the pass is over.
//
//	TMPDIR=/dev/shm go test -run '^$' -bench JobInitialSync -benchtime 1x ./lsync/sftptarget/
func BenchmarkJobInitialSync(b *testing.B) {
	src, files := makeDocroot(b)
	srv := sshdtest.Start(b)
	logger := slog.New(slog.DiscardHandler)
	if os.Getenv("BENCH_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tc := srv.TargetConfig("bench", filepath.Join(b.TempDir(), "root"))
		c, err := NewConnector(tc, logger)
		if err != nil {
			b.Fatal(err)
		}
		cfg := lsync.JobConfig{Name: "bench", Source: src, Targets: []lsync.TargetConfig{tc}}
		j, err := lsync.NewJob(cfg, []lsync.Connector{c}, lsync.JobOptions{Logger: logger})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		start, cpu0, busy0 := time.Now(), cpuTime(), machineBusy()
		stopProfile := profileIfAsked(b)
		if err := j.Start(ctx); err != nil {
			b.Fatal(err)
		}
		for {
			st := j.Status()[0]
			if !st.LastSync.IsZero() && st.PendingFiles == 0 && !st.Rescanning {
				break
			}
			if time.Since(start) > 10*time.Minute {
				b.Fatalf("no initial sync after 10 minutes: %+v", st)
			}
			time.Sleep(10 * time.Millisecond)
		}
		stopProfile()
		b.ReportMetric(float64(files)/time.Since(start).Seconds(), "files/s")
		b.ReportMetric((cpuTime() - cpu0).Seconds(), "client-cpu-s")
		b.ReportMetric((machineBusy() - busy0).Seconds(), "machine-busy-s")
		b.ReportMetric(float64(peakRSS())/(1<<20), "peak-rss-MiB")
		if file := os.Getenv("BENCH_HEAPPROFILE"); file != "" {
			// What the idle daemon keeps once the pass is over.
			time.Sleep(time.Second)
			runtime.GC()
			f, err := os.Create(file)
			if err != nil {
				b.Fatal(err)
			}
			if err := pprof.WriteHeapProfile(f); err != nil {
				b.Fatal(err)
			}
			_ = f.Close()
		}
		cancel()
		j.Stop()
	}
}
