package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// figures are one tool's measurements in one scenario, by metric key.
type figures map[string]Value

type metricSpec struct {
	key, label string
	kind       Kind
}

// toolCase is one tool's run of a scenario.
type toolCase struct {
	tool     SyncTool
	src, dst string
	e        *Env
	started  time.Time
	// initial is start → initial sync seen complete.
	initial time.Duration
	// watchDirs > 0 starts a poller that records when the daemon holds
	// that many inotify watches.
	watchDirs int
	watchDone chan struct{}
	watchAt   Value
	// peakTreeRSS is the largest RSS of the daemon's process tree (plus
	// its helpers) sampled while watchDirs is set.
	peakTreeRSS atomic.Int64
}

// treeRSSPoller samples the RSS of the daemon and its children every
// 50ms until ctx ends.
func (tc *toolCase) treeRSSPoller(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if rss := TreeRSS(tc.tool.Pid()) + tc.tool.ExtraRSS(); rss > tc.peakTreeRSS.Load() {
			tc.peakTreeRSS.Store(rss)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// watchPoller records when the daemon's inotify watch count reaches
// tc.watchDirs; it ends on ctx cancellation, recording why.
func (tc *toolCase) watchPoller(ctx context.Context, t0 time.Time) {
	defer close(tc.watchDone)
	best := 0
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		n, err := InotifyWatches(tc.tool.Pid())
		if err == nil && n > best {
			best = n
		}
		if n >= tc.watchDirs {
			tc.watchAt = seconds(time.Since(t0))
			return
		}
		select {
		case <-ctx.Done():
			tc.watchAt = missing(fmt.Sprintf("%d of %d watches", best, tc.watchDirs))
			return
		case <-tick.C:
		}
	}
}

// measureTools runs one scenario for each tool in turn on fresh trees:
// prepare fills the source, the tool starts and settles (initial sync done
// and a sentinel written afterwards propagated, so it is watching), then
// measure runs. A lockstep failure fails the scenario once the anchors
// have been measured too; an anchor failure becomes "n/a (why)".
func measureTools(ctx context.Context, e *Env, res *Result, base string, tools []SyncTool,
	prepare func(src string) error, measure func(ctx context.Context, tc *toolCase) (figures, error),
	setup ...func(*toolCase),
) (map[string]figures, error) {
	out := map[string]figures{}
	var lockstepErr error
	for i, t := range tools {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		root := filepath.Join(base, fmt.Sprintf("run%d", i))
		tc := &toolCase{tool: t, src: filepath.Join(root, "src"), dst: filepath.Join(root, "dst"), e: e}
		for _, fn := range setup {
			fn(tc)
		}
		f, err := runToolCase(ctx, tc, prepare, measure)
		_ = os.RemoveAll(root)
		if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("not finished within the scenario's time budget: %w", err)
		}
		if err != nil {
			e.Log.Warn("tool failed", "tool", t.Name(), "err", firstLine(err.Error()))
			if i == 0 {
				lockstepErr = fmt.Errorf("%s: %w", t.Name(), err)
			} else {
				res.note("%s failed: %s", t.Name(), firstLine(err.Error()))
				res.Details = append(res.Details, t.Name()+": "+err.Error())
			}
			f = figures{"_error": missing("failed: see notes")}
			if i == 0 {
				f = figures{"_error": missing("failed: see status")}
			}
		}
		out[t.Name()] = f
	}
	return out, lockstepErr
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return truncate(s, 300)
}

func runToolCase(ctx context.Context, tc *toolCase, prepare func(string) error,
	measure func(context.Context, *toolCase) (figures, error),
) (_ figures, err error) {
	if err := os.MkdirAll(tc.src, 0o755); err != nil {
		return nil, err
	}
	if prepare != nil {
		if err := prepare(tc.src); err != nil {
			return nil, fmt.Errorf("prepare source: %w", err)
		}
	}
	t0 := time.Now()
	if err := tc.tool.Start(ctx, tc.src, tc.dst); err != nil {
		return nil, err
	}
	defer func() {
		if serr := tc.tool.Stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	if tc.watchDirs > 0 {
		wctx, cancel := context.WithTimeout(ctx, tc.e.Sizes.BigTreeTimeout)
		tc.watchDone = make(chan struct{})
		go tc.watchPoller(wctx, t0)
		// Runs before Stop (deferred later, so earlier): the poller must not
		// outlive the daemon it reads.
		defer func() {
			cancel()
			<-tc.watchDone
		}()
		rctx, rcancel := context.WithCancel(ctx)
		rssDone := make(chan struct{})
		go tc.treeRSSPoller(rctx, rssDone)
		defer func() {
			rcancel()
			<-rssDone
		}()
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n--- %s log tail ---\n%s", err, tc.tool.Name(), tc.tool.LogTail())
		}
	}()
	tc.started = t0
	if err := tc.settle(ctx); err != nil {
		return nil, err
	}
	return measure(ctx, tc)
}

// settle waits for the initial sync, then proves the tool is watching by
// writing a sentinel file and waiting for it on the target.
func (tc *toolCase) settle(ctx context.Context) error {
	w := TreeWaiter{Source: NewDigester(), Target: NewDigester(), Interval: 20 * time.Millisecond}
	timeout := tc.e.Sizes.ConvergeTimeout
	if tc.watchDirs > 0 {
		timeout = tc.e.Sizes.BigTreeTimeout
	}
	at, err := tc.waitTree(ctx, w, timeout)
	if err != nil {
		return fmt.Errorf("initial sync: %w", err)
	}
	tc.initial = at.Sub(tc.started)
	content := randomBytes(64)
	if err := os.WriteFile(filepath.Join(tc.src, ".bench-sentinel"), content, 0o644); err != nil {
		return err
	}
	// lsyncd with defaults waits 15 s before acting.
	if _, err := tc.waitFile(ctx, ".bench-sentinel", content, 60*time.Second); err != nil {
		return fmt.Errorf("sentinel after initial sync: %w", err)
	}
	return nil
}

// waitTree waits until the target equals the (quiescent) source, checking
// that the tool is alive.
func (tc *toolCase) waitTree(ctx context.Context, w TreeWaiter, timeout time.Duration) (time.Time, error) {
	want, err := w.Source.Tree(ctx, tc.src)
	if err != nil {
		return time.Time{}, err
	}
	return tc.waitMatches(ctx, w, want, timeout)
}

func (tc *toolCase) waitMatches(ctx context.Context, w TreeWaiter, want []TreeEntry, timeout time.Duration) (time.Time, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	died := make(chan error, 1)
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := tc.tool.Alive(); err != nil {
					died <- err
					cancel()
					return
				}
			}
		}
	}()
	at, err := w.WaitMatches(ctx, want, tc.dst, timeout)
	select {
	case derr := <-died:
		return time.Time{}, derr
	default:
	}
	return at, err
}

// waitFile polls the target copy of rel until it holds want; the poll is
// sub-millisecond so that the figure is the tool's, not the probe's.
func (tc *toolCase) waitFile(ctx context.Context, rel string, want []byte, timeout time.Duration) (time.Time, error) {
	p := filepath.Join(tc.dst, rel)
	deadline := time.Now().Add(timeout)
	nextAlive := time.Now().Add(100 * time.Millisecond)
	for {
		b, err := os.ReadFile(p)
		now := time.Now()
		if err == nil && bytes.Equal(b, want) {
			return now, nil
		}
		if now.After(deadline) {
			state := "missing"
			if err == nil {
				state = fmt.Sprintf("%d bytes, different content", len(b))
			}
			return time.Time{}, fmt.Errorf("%s not on target after %s (%s)", rel, timeout, state)
		}
		if now.After(nextAlive) {
			if err := tc.tool.Alive(); err != nil {
				return time.Time{}, err
			}
			if ctx.Err() != nil {
				return time.Time{}, ctx.Err()
			}
			nextAlive = now.Add(100 * time.Millisecond)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// emitRows adds one row per metric and anchor (tools[1:]), lockstep being
// tools[0].
func emitRows(res *Result, tools []SyncTool, figs map[string]figures, metrics []metricSpec) {
	if len(tools) == 0 {
		return
	}
	ls := figs[tools[0].Name()]
	for _, m := range metrics {
		lv := pick(ls, m.key)
		if len(tools) == 1 {
			res.add(Row{Metric: m.label, Kind: m.kind, Lockstep: lv, Anchor: "lsyncd", AnchorV: missing("lsyncd not installed")})
			continue
		}
		for _, t := range tools[1:] {
			f, ok := figs[t.Name()]
			if !ok {
				continue
			}
			res.add(Row{Metric: m.label, Kind: m.kind, Lockstep: lv, Anchor: t.Name(), AnchorV: pick(f, m.key)})
		}
	}
}

func pick(f figures, key string) Value {
	if f == nil {
		return missing("not run")
	}
	if v, ok := f[key]; ok {
		return v
	}
	if v, ok := f["_error"]; ok {
		return v
	}
	return missing("not measured")
}

// sampleFigures turns latency samples into p50/p99/max figures.
func sampleFigures(samples []time.Duration) figures {
	if len(samples) == 0 {
		return figures{}
	}
	return figures{
		"p50": seconds(Percentile(samples, 50)),
		"p99": seconds(Percentile(samples, 99)),
		"max": seconds(Percentile(samples, 100)),
	}
}

// Scenario 1: files written one at a time, time until identical content
// on the target.
func runSingleFile(ctx context.Context, e *Env, res *Result) error {
	base, err := e.scenarioDir("s1")
	if err != nil {
		return err
	}
	tools, err := e.syncTools(base, e.Sizes.SingleFilesDefault > 0)
	if err != nil {
		return err
	}
	counts := map[string]int{}
	figs, err := measureTools(ctx, e, res, base, tools, nil, func(ctx context.Context, tc *toolCase) (figures, error) {
		n := e.Sizes.SingleFiles
		if l, ok := tc.tool.(*Lsyncd); ok && !l.Tuned {
			n = e.Sizes.SingleFilesDefault
		}
		var samples []time.Duration
		for i := 0; i < n; i++ {
			rel := fmt.Sprintf("file-%04d.html", i)
			content := randomBytes(1024)
			t0 := time.Now()
			if err := os.WriteFile(filepath.Join(tc.src, rel), content, 0o644); err != nil {
				return nil, err
			}
			at, err := tc.waitFile(ctx, rel, content, 60*time.Second)
			if err != nil {
				return nil, err
			}
			samples = append(samples, at.Sub(t0))
			// A short gap so each write is a separate event for both tools.
			time.Sleep(10 * time.Millisecond)
		}
		counts[tc.tool.Name()] = n
		return sampleFigures(samples), nil
	})
	emitRows(res, tools, figs, []metricSpec{
		{"p50", "p50 write → identical on target", KindDuration},
		{"p99", "p99", KindDuration},
		{"max", "max", KindDuration},
	})
	for _, t := range tools {
		if n, ok := counts[t.Name()]; ok {
			res.note("%s: %d files of 1 KiB, written one at a time; the target copy is polled every 0.2 ms until its content is identical.", t.Name(), n)
		}
	}
	if e.Sizes.SingleFilesDefault > 0 {
		res.note("lsyncd with its defaults waits `delay = 15` s before each batch, so it gets only %d samples; its figures are dominated by that delay by design.", e.Sizes.SingleFilesDefault)
	} else {
		res.note("lsyncd with its defaults (15 s delay) is left out in smoke mode.")
	}
	return err
}

// Scenario 2: a burst of many files copied in, time until the target tree
// is identical (digest), from the start of the copy.
func runBurst(ctx context.Context, e *Env, res *Result) error {
	base, err := e.scenarioDir("s2")
	if err != nil {
		return err
	}
	tools, err := e.syncTools(base, !e.Smoke)
	if err != nil {
		return err
	}
	var from string
	if e.Sizes.BurstFromGoroot {
		out, err := runCmd(ctx, "go", "env", "GOROOT")
		if err != nil {
			return err
		}
		from = filepath.Join(strings.TrimSpace(out), "src")
	} else {
		from = filepath.Join(base, "burst-src")
		if err := generateTree(from, 5, e.Sizes.BurstFiles, 4096); err != nil {
			return err
		}
	}
	nfiles, nbytes, err := countTree(from)
	if err != nil {
		return err
	}
	res.note("Burst: `cp -a %s` (%d files, %s) into the watched source; time runs from the start of the copy until the target tree digest (path, mode, size, sha256, symlink target) equals the source's.", from, nfiles, formatBytes(float64(nbytes)))
	figs, err := measureTools(ctx, e, res, base, tools, nil, func(ctx context.Context, tc *toolCase) (figures, error) {
		sshEnv, _ := e.SSH()
		up0, down0, conns0 := sshEnv.proxy.Counters()
		cpu0, _ := CPUSeconds(tc.tool.Pid())
		t0 := time.Now()
		if _, err := runCmd(ctx, "cp", "-a", from, filepath.Join(tc.src, "tree")); err != nil {
			return nil, err
		}
		copied := time.Since(t0)
		w := TreeWaiter{Source: NewDigester(), Target: NewDigester(), Interval: 20 * time.Millisecond}
		at, err := tc.waitTree(ctx, w, e.Sizes.ConvergeTimeout)
		if err != nil {
			return nil, err
		}
		cpu1, _ := CPUSeconds(tc.tool.Pid())
		up1, down1, conns1 := sshEnv.proxy.Counters()
		res.note("%s: copy itself took %s; identical after %s; %d ssh connection(s) opened.", tc.tool.Name(), copied.Round(time.Millisecond), at.Sub(t0).Round(time.Millisecond), conns1-conns0)
		return figures{
			"converge": seconds(at.Sub(t0)),
			"bytes":    bytesVal(up1 - up0 + down1 - down0),
			"cpu":      val(cpu1 - cpu0),
		}, nil
	})
	emitRows(res, tools, figs, []metricSpec{
		{"converge", "copy start → identical tree", KindDuration},
		{"bytes", "bytes over ssh (both directions)", KindBytes},
		{"cpu", "client CPU seconds (daemon + reaped children)", KindCount},
	})
	return err
}

// Scenario 3: a big pre-existing tree: initial sync, watch setup, memory.
func runBigTree(ctx context.Context, e *Env, res *Result) error {
	base, err := e.scenarioDir("s3")
	if err != nil {
		return err
	}
	tools, err := e.syncTools(base, false)
	if err != nil {
		return err
	}
	tree := filepath.Join(base, "bigtree")
	t0 := time.Now()
	if err := generateTree(tree, e.Sizes.BigDirs, e.Sizes.BigFiles, 256); err != nil {
		return err
	}
	ndirs := e.Sizes.BigDirs + 1 // + the root
	res.note("Tree: %d files of 256 B in %d directories, generated in %s; each tool starts with an empty target.", e.Sizes.BigFiles, e.Sizes.BigDirs, time.Since(t0).Round(time.Millisecond))
	res.note("\"Watching\" = the daemon holds an inotify watch for every directory (counted from /proc/PID/fdinfo), independent of what the tool logs.")
	settle := 3 * time.Second
	if e.Smoke {
		settle = 500 * time.Millisecond
	}
	prepare := func(src string) error {
		if err := os.Remove(src); err != nil {
			return err
		}
		if _, err := os.Stat(tree); err != nil {
			// The previous tool failed before giving the tree back.
			return generateTree(src, e.Sizes.BigDirs, e.Sizes.BigFiles, 256)
		}
		// The same generated tree serves every tool: move it in and back out.
		return os.Rename(tree, src)
	}
	figs, err := measureTools(ctx, e, res, base, tools, prepare, func(ctx context.Context, tc *toolCase) (figures, error) {
		f := figures{"initial": seconds(tc.initial)}
		select {
		case <-tc.watchDone:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		f["watch"] = tc.watchAt
		time.Sleep(settle)
		rss, err := RSSBytes(tc.tool.Pid())
		if err != nil {
			return nil, err
		}
		f["rss"] = bytesVal(rss)
		if x := tc.tool.ExtraRSS(); x > 0 {
			f["rss_all"] = bytesVal(rss + x)
		} else {
			f["rss_all"] = bytesVal(rss)
		}
		if anon, err := procStatusBytes(tc.tool.Pid(), "RssAnon"); err == nil {
			f["anon"] = bytesVal(anon)
		}
		// The rest of RSS: the program's text and mapped files (shared
		// with the page cache), reported apart so that neither hides in
		// the total.
		if file, err := procStatusBytes(tc.tool.Pid(), "RssFile"); err == nil {
			f["file"] = bytesVal(file)
		}
		if hwm, err := procStatusBytes(tc.tool.Pid(), "VmHWM"); err == nil {
			f["hwm"] = bytesVal(hwm)
		}
		if peak := tc.peakTreeRSS.Load(); peak > 0 {
			f["hwm_tree"] = bytesVal(peak)
		}
		if cpu, err := CPUSeconds(tc.tool.Pid()); err == nil {
			f["cpu"] = val(cpu)
		}
		// Give the tree back for the next tool.
		if err := os.Rename(tc.src, tree); err != nil {
			return nil, err
		}
		return f, os.MkdirAll(tc.src, 0o755)
	}, func(tc *toolCase) { tc.watchDirs = ndirs })
	emitRows(res, tools, figs, []metricSpec{
		{"initial", "start → initial sync identical", KindDuration},
		{"watch", fmt.Sprintf("start → %d directories watched", ndirs), KindDuration},
		{"rss", "RSS after settling (daemon process)", KindBytes},
		{"rss_all", "RSS incl. ssh ControlMaster", KindBytes},
		{"anon", "private memory after settling (RssAnon: RSS without the shared program text)", KindBytes},
		{"file", "file-backed memory after settling (RssFile: program text, mapped files)", KindBytes},
		{"hwm", "peak RSS (VmHWM, daemon process)", KindBytes},
		{"hwm_tree", "peak RSS of daemon + children (rsync, ssh), sampled every 50ms", KindBytes},
		{"cpu", "client CPU seconds for the initial sync", KindCount},
	})
	return err
}

func procStatusBytes(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && k == field {
			var kb int64
			if _, err := fmt.Sscan(strings.TrimSpace(v), &kb); err != nil {
				return 0, err
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// generateTree writes files spread over dirs directories (two levels, so
// no directory gets huge) with distinct pseudo-random content.
func generateTree(root string, dirs, files, size int) error {
	if dirs < 1 {
		dirs = 1
	}
	fanout := 1
	for fanout*fanout < dirs {
		fanout++
	}
	var paths []string
	for i := 0; i < dirs; i++ {
		var p string
		if i < fanout {
			p = filepath.Join(root, fmt.Sprintf("d%03d", i))
		} else {
			p = filepath.Join(root, fmt.Sprintf("d%03d", i%fanout), fmt.Sprintf("s%04d", i))
		}
		paths = append(paths, p)
	}
	// Parents first.
	for _, p := range paths[:min(fanout, len(paths))] {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
	}
	for _, p := range paths {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
	}
	buf := randomBytes(size + 64)
	for i := 0; i < files; i++ {
		content := append(fmt.Appendf(nil, "%08d\n", i), buf[i%64:i%64+size-9]...)
		if err := os.WriteFile(filepath.Join(paths[i%len(paths)], fmt.Sprintf("f%06d.txt", i)), content, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func countTree(root string) (files int, size int64, err error) {
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			files++
			size += info.Size()
		}
		return nil
	})
	return files, size, err
}

// Scenario 4: many writes to few files within a short window.
func runStorm(ctx context.Context, e *Env, res *Result) error {
	base, err := e.scenarioDir("s4")
	if err != nil {
		return err
	}
	tools, err := e.syncTools(base, false)
	if err != nil {
		return err
	}
	sz := e.Sizes
	prepare := func(src string) error {
		for i := 0; i < sz.StormFiles; i++ {
			if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("hot-%03d.json", i)), randomBytes(sz.StormFileSize), 0o644); err != nil {
				return err
			}
		}
		return nil
	}
	res.note("%d rewrites (truncate + write ≈%s, the size varying by up to 63 B) spread over %d files within %s; time to converge is from the last write.", sz.StormWrites, formatBytes(float64(sz.StormFileSize)), sz.StormFiles, sz.StormWindow)
	figs, err := measureTools(ctx, e, res, base, tools, prepare, func(ctx context.Context, tc *toolCase) (figures, error) {
		sshEnv, _ := e.SSH()
		up0, down0, conns0 := sshEnv.proxy.Counters()
		payload := randomBytes(sz.StormFileSize + 64)
		t0 := time.Now()
		for i := 0; i < sz.StormWrites; i++ {
			if due := t0.Add(time.Duration(i) * sz.StormWindow / time.Duration(sz.StormWrites)); time.Until(due) > 0 {
				time.Sleep(time.Until(due))
			}
			copy(payload, fmt.Appendf(nil, "%08d", i))
			// The size changes with every write: rsync's quick check
			// (size + whole-second mtime) would otherwise skip a same-size
			// rewrite within the same second, and the figure would measure
			// that gap instead of speed (it is reported separately).
			if err := os.WriteFile(filepath.Join(tc.src, fmt.Sprintf("hot-%03d.json", i%sz.StormFiles)), payload[:sz.StormFileSize+i%64], 0o644); err != nil {
				return nil, err
			}
		}
		tEnd := time.Now()
		w := TreeWaiter{Source: NewDigester(), Target: NewDigester(), Interval: 10 * time.Millisecond}
		at, err := tc.waitTree(ctx, w, sz.ConvergeTimeout)
		if err != nil {
			return nil, err
		}
		// Trailing traffic (acks, a last redundant batch) belongs to the storm.
		time.Sleep(500 * time.Millisecond)
		up1, down1, conns1 := sshEnv.proxy.Counters()
		res.note("%s: writes took %s; identical %s after the last write; %s up, %s down, %d new ssh connection(s).", tc.tool.Name(),
			tEnd.Sub(t0).Round(time.Millisecond), at.Sub(tEnd).Round(time.Millisecond), formatBytes(float64(up1-up0)), formatBytes(float64(down1-down0)), conns1-conns0)
		return figures{
			"converge": seconds(at.Sub(tEnd)),
			"bytes":    bytesVal(up1 - up0 + down1 - down0),
		}, nil
	})
	emitRows(res, tools, figs, []metricSpec{
		{"converge", "last write → identical", KindDuration},
		{"bytes", "bytes over ssh (both directions)", KindBytes},
	})
	return err
}

// Scenario 5: rename of a directory holding many files.
func runRename(ctx context.Context, e *Env, res *Result) error {
	base, err := e.scenarioDir("s5")
	if err != nil {
		return err
	}
	tools, err := e.syncTools(base, false)
	if err != nil {
		return err
	}
	prepare := func(src string) error {
		return generateTree(filepath.Join(src, "assets"), 1, e.Sizes.RenameFiles, 1024)
	}
	res.note("`mv assets assets-v2` where assets/ holds %d files of 1 KiB (after the initial sync).", e.Sizes.RenameFiles)
	figs, err := measureTools(ctx, e, res, base, tools, prepare, func(ctx context.Context, tc *toolCase) (figures, error) {
		sshEnv, _ := e.SSH()
		up0, down0, _ := sshEnv.proxy.Counters()
		t0 := time.Now()
		if err := os.Rename(filepath.Join(tc.src, "assets"), filepath.Join(tc.src, "assets-v2")); err != nil {
			return nil, err
		}
		w := TreeWaiter{Source: NewDigester(), Target: NewDigester(), Interval: 10 * time.Millisecond}
		at, err := tc.waitTree(ctx, w, e.Sizes.ConvergeTimeout)
		if err != nil {
			return nil, err
		}
		time.Sleep(500 * time.Millisecond)
		up1, down1, _ := sshEnv.proxy.Counters()
		return figures{
			"converge": seconds(at.Sub(t0)),
			"bytes":    bytesVal(up1 - up0 + down1 - down0),
		}, nil
	})
	emitRows(res, tools, figs, []metricSpec{
		{"converge", "rename → identical", KindDuration},
		{"bytes", "bytes over ssh (both directions)", KindBytes},
	})
	return err
}

// Scenario 6: the peer goes away, changes pile up, the peer comes back.
func runOutage(ctx context.Context, e *Env, res *Result) error {
	base, err := e.scenarioDir("s6")
	if err != nil {
		return err
	}
	tools, err := e.syncTools(base, false)
	if err != nil {
		return err
	}
	n := e.Sizes.OutageChanges
	down := 3 * time.Second
	if e.Smoke {
		down = 500 * time.Millisecond
	}
	prepare := func(src string) error {
		return generateTree(src, 10, n, 2048)
	}
	res.note("The peer's sshd becomes unreachable (the proxy in front of it closes its port and cuts open connections, as when sshd stops); %d changes are made (%d new files, %d rewritten, %d deleted); %s later it is reachable again. Time runs from the moment it is back.", n, n/2, n/4, n-n/2-n/4, down)
	figs, err := measureTools(ctx, e, res, base, tools, prepare, func(ctx context.Context, tc *toolCase) (figures, error) {
		sshEnv, _ := e.SSH()
		sshEnv.proxy.Stop()
		restarted := false
		defer func() {
			if !restarted {
				_ = sshEnv.proxy.Start()
			}
		}()
		var existing []string
		_ = filepath.WalkDir(tc.src, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() && !strings.HasPrefix(d.Name(), ".bench") {
				existing = append(existing, p)
			}
			return nil
		})
		if len(existing) < n/2 {
			return nil, fmt.Errorf("source has %d files, want %d", len(existing), n)
		}
		for i := 0; i < n/2; i++ {
			if err := os.WriteFile(filepath.Join(tc.src, fmt.Sprintf("d%03d", i%3), fmt.Sprintf("new-%05d.txt", i)), randomBytes(2048), 0o644); err != nil {
				return nil, err
			}
		}
		for i := 0; i < n/4; i++ {
			// A new size, for the same reason as in the storm.
			if err := os.WriteFile(existing[i], randomBytes(3000), 0o644); err != nil {
				return nil, err
			}
		}
		for i := n / 4; i < n-n/2; i++ {
			if err := os.Remove(existing[i]); err != nil {
				return nil, err
			}
		}
		time.Sleep(down)
		if err := tc.tool.Alive(); err != nil {
			return nil, fmt.Errorf("died while the peer was down: %w", err)
		}
		if err := sshEnv.proxy.Start(); err != nil {
			return nil, err
		}
		restarted = true
		t0 := time.Now()
		w := TreeWaiter{Source: NewDigester(), Target: NewDigester(), Interval: 20 * time.Millisecond}
		at, err := tc.waitTree(ctx, w, e.Sizes.ConvergeTimeout)
		if err != nil {
			return nil, err
		}
		f := figures{"converge": seconds(at.Sub(t0))}
		delivered, err := sameSecondProbe(ctx, tc, sshEnv.proxy, down)
		if err != nil {
			return nil, err
		}
		f["same_second"] = delivered
		return f, nil
	})
	emitRows(res, tools, figs, []metricSpec{
		{"converge", "peer back → identical", KindDuration},
		{"same_second", "same-size rewrite within the same second, made while the peer was down, delivered?", KindBool},
	})
	res.note("Same-second probe: probe.conf (512 B) is synced with mtime T (a whole second); the peer goes down; the file is rewritten with different content of the same size and mtime T + 0.4 s (a second save within the same second); the peer comes back; the target must hold the new content within %s. A \"no\" is a lost update: a size + whole-second-mtime comparison (rsync's quick check; SFTP v3 carries whole seconds) cannot see it.", e.Sizes.ProbeWait)
	return err
}

// sameSecondProbe checks that a same-size rewrite within the same second,
// made while the peer was unreachable, reaches the peer once it is back.
func sameSecondProbe(ctx context.Context, tc *toolCase, proxy *CountingProxy, down time.Duration) (Value, error) {
	rel := "probe.conf"
	p := filepath.Join(tc.src, rel)
	T := time.Now().Add(-10 * time.Second).Truncate(time.Second)
	v1 := randomBytes(512)
	if err := os.WriteFile(p, v1, 0o644); err != nil {
		return Value{}, err
	}
	if err := os.Chtimes(p, T, T); err != nil {
		return Value{}, err
	}
	if _, err := tc.waitFile(ctx, rel, v1, 30*time.Second); err != nil {
		return Value{}, fmt.Errorf("probe v1: %w", err)
	}
	// Let the tool finish with v1 (its mtime update lands after the content).
	time.Sleep(300 * time.Millisecond)
	proxy.Stop()
	v2 := randomBytes(512)
	werr := os.WriteFile(p, v2, 0o644)
	if werr == nil {
		werr = os.Chtimes(p, T.Add(400*time.Millisecond), T.Add(400*time.Millisecond))
	}
	time.Sleep(down)
	if err := proxy.Start(); err != nil {
		return Value{}, err
	}
	if werr != nil {
		return Value{}, werr
	}
	if _, err := tc.waitFile(ctx, rel, v2, tc.e.Sizes.ProbeWait); err != nil {
		if aerr := tc.tool.Alive(); aerr != nil {
			return Value{}, aerr
		}
		return val(0), nil
	}
	return val(1), nil
}

var errNoLockstepCmd = errors.New("lockstep command not available")

// lockstepHas reports whether the built binary implements a subcommand
// (the placeholders print "not built yet").
func lockstepHas(ctx context.Context, bin string, args ...string) error {
	out, err := exec.CommandContext(ctx, bin, append(args, "--help")...).CombinedOutput()
	// cobra prints the parent's help for an unknown subcommand: insist on
	// the subcommand's own usage line.
	if err != nil || strings.Contains(string(out), "not built yet") || !strings.Contains(string(out), "lockstep "+strings.Join(args, " ")) {
		return fmt.Errorf("%w: `lockstep %s` (%s)", errNoLockstepCmd, strings.Join(args, " "), firstLine(strings.TrimSpace(string(out))))
	}
	return nil
}
