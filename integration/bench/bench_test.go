package main

import (
	"bytes"
	"context"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/lockstep-ha/lockstep/config"
	"github.com/lockstep-ha/lockstep/internal/testbed"
	"github.com/lockstep-ha/lockstep/lsync"
)

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func TestDigestSeesContentModeSymlinkAndExtraFiles(t *testing.T) {
	ctx := context.Background()
	a, b := t.TempDir(), t.TempDir()
	for _, root := range []string{a, b} {
		writeFile(t, filepath.Join(root, "index.html"), "hello", 0o644)
		writeFile(t, filepath.Join(root, "sub", "app.js"), "js", 0o600)
		if err := os.Symlink("index.html", filepath.Join(root, "link")); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(filepath.Join(root, "empty"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	da, db := NewDigester(), NewDigester()
	list := func(d *Digester, root string) []TreeEntry {
		t.Helper()
		l, err := d.Tree(ctx, root)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	want := list(da, a)
	if diff := FirstDiff(want, list(db, b)); diff != "" {
		t.Fatalf("identical trees differ: %s", diff)
	}
	if len(want) != 5 {
		t.Fatalf("want 5 entries (file, dir, file, link, empty dir), got %d: %v", len(want), want)
	}

	// Same size, same mtime, different content: the cache must not hide it
	// (the rewrite changes ctime).
	st, _ := os.Stat(filepath.Join(b, "index.html"))
	writeFile(t, filepath.Join(b, "index.html"), "HELLO", 0o644)
	if err := os.Chtimes(filepath.Join(b, "index.html"), st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	if diff := FirstDiff(want, list(db, b)); !strings.Contains(diff, "index.html: differs") {
		t.Fatalf("content change not seen: %q", diff)
	}
	writeFile(t, filepath.Join(b, "index.html"), "hello", 0o644)

	if err := os.Chmod(filepath.Join(b, "sub", "app.js"), 0o644); err != nil {
		t.Fatal(err)
	}
	if diff := FirstDiff(want, list(db, b)); !strings.Contains(diff, "sub/app.js: differs") {
		t.Fatalf("mode change not seen: %q", diff)
	}
	_ = os.Chmod(filepath.Join(b, "sub", "app.js"), 0o600)

	_ = os.Remove(filepath.Join(b, "link"))
	_ = os.Symlink("sub/app.js", filepath.Join(b, "link"))
	if diff := FirstDiff(want, list(db, b)); !strings.Contains(diff, "link: differs") {
		t.Fatalf("symlink target change not seen: %q", diff)
	}
	_ = os.Remove(filepath.Join(b, "link"))
	_ = os.Symlink("index.html", filepath.Join(b, "link"))

	writeFile(t, filepath.Join(b, ".lockstep-tmp-x"), "partial", 0o600)
	if diff := FirstDiff(want, list(db, b)); !strings.Contains(diff, ".lockstep-tmp-x: extra on target") {
		t.Fatalf("leftover temp file not seen: %q", diff)
	}
	_ = os.Remove(filepath.Join(b, ".lockstep-tmp-x"))
	_ = os.RemoveAll(filepath.Join(b, "empty"))
	if diff := FirstDiff(want, list(db, b)); !strings.Contains(diff, "empty: missing on target") {
		t.Fatalf("missing dir not seen: %q", diff)
	}

	// A missing root is an empty tree: polling may start before the tool
	// created the target.
	if l, err := da.Tree(ctx, filepath.Join(a, "nope")); err != nil || len(l) != 0 {
		t.Fatalf("missing root: %v %v", l, err)
	}
}

func TestTreeWaiterTimesOutNamingTheDifference(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(a, "x"), "1", 0o644)
	w := TreeWaiter{Source: NewDigester(), Target: NewDigester(), Interval: time.Millisecond}
	_, err := w.WaitEqual(context.Background(), a, b, 20*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "x: missing on target") {
		t.Fatalf("want timeout naming x, got %v", err)
	}
	// The file lands whole (as a sync tool delivers it); the writer is
	// waited for, so it never touches the directory after the test.
	wrote := make(chan error, 1)
	go func() {
		time.Sleep(30 * time.Millisecond)
		tmp := filepath.Join(t.TempDir(), "x")
		if err := os.WriteFile(tmp, []byte("1"), 0o644); err != nil {
			wrote <- err
			return
		}
		if err := os.Chmod(tmp, 0o644); err != nil {
			wrote <- err
			return
		}
		wrote <- os.Rename(tmp, filepath.Join(b, "x"))
	}()
	_, err = w.WaitEqual(context.Background(), a, b, 5*time.Second)
	if werr := <-wrote; werr != nil {
		t.Fatal(werr)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestCountingProxyCountsBothWaysAndCutsConnectionsOnStop(t *testing.T) {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer testbed.Serve(backend, func(_ context.Context, c net.Conn) { _, _ = io.Copy(c, c) })() // echo
	p := NewCountingProxy(backend.Addr().String())
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	port := p.Port()

	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("x"), 100_000)
	go func() { _, _ = c.Write(msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	up, down, conns := p.Counters()
	if up != int64(len(msg)) || down != int64(len(msg)) || conns != 1 {
		t.Fatalf("counters up=%d down=%d conns=%d, want %d/%d/1", up, down, conns, len(msg), len(msg))
	}

	p.Stop()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("open connection survived Stop")
	}
	c.Close()
	if c2, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c2.Close()
		t.Fatal("proxy still accepting after Stop")
	}

	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	if p.Port() != port {
		t.Fatalf("restart moved the port from %d to %d", port, p.Port())
	}
	c3, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if _, err := c3.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c3, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("after restart: %q %v", buf, err)
	}
}

func TestLsyncdConfigVariants(t *testing.T) {
	peer := SSHPeer{Host: "127.0.0.1", Port: 2222, User: "root", Identity: "/k/id", KnownHosts: "/k/kh"}
	tuned := LsyncdConfig("/src", "/dst", peer, LsyncdVariant{Tuned: true}, "/l/log", "/l/status", "/l/cm")
	for _, want := range []string{"default.rsyncssh", "delay = 0,", `ControlMaster = "auto"`, `ControlPath = "/l/cm"`,
		"port = 2222", `identityFile = "/k/id"`, `UserKnownHostsFile = "/k/kh"`, `StrictHostKeyChecking = "yes"`,
		"nodaemon = true", `host = "root@127.0.0.1"`, `targetdir = "/dst"`} {
		if !strings.Contains(tuned, want) {
			t.Errorf("tuned config lacks %q:\n%s", want, tuned)
		}
	}
	def := LsyncdConfig("/src", "/dst", peer, LsyncdVariant{}, "/l/log", "/l/status", "/l/cm")
	for _, unwanted := range []string{"delay", "ControlMaster", "ControlPath", "ControlPersist"} {
		if strings.Contains(def, unwanted) {
			t.Errorf("defaults config sets %q:\n%s", unwanted, def)
		}
	}
	if !strings.Contains(def, `UserKnownHostsFile = "/k/kh"`) {
		t.Errorf("defaults config must still verify the host key:\n%s", def)
	}
	rs := LsyncdConfig("/src", "/dst", peer, LsyncdVariant{Tuned: true, Rsync: true}, "/l/log", "/l/status", "/l/cm")
	for _, want := range []string{"default.rsync,", "delay = 0,", `target = "root@127.0.0.1:/dst"`,
		`rsh = "/usr/bin/ssh -p 2222 -i /k/id -o UserKnownHostsFile=/k/kh -o StrictHostKeyChecking=yes -o BatchMode=yes -o ControlMaster=auto -o ControlPath=/l/cm -o ControlPersist=600"`} {
		if !strings.Contains(rs, want) {
			t.Errorf("default.rsync config lacks %q:\n%s", want, rs)
		}
	}
	if strings.Contains(rs, "rsyncssh") || strings.Contains(rs, "targetdir") {
		t.Errorf("default.rsync config has rsyncssh keys:\n%s", rs)
	}
	if got := luaString(`a"b\c`); got != `"a\"b\\c"` {
		t.Errorf("luaString = %s", got)
	}
}

// The generated config must pass the real loader, strict keys included,
// or every sync scenario measures nothing.
func TestLockstepSyncConfigPassesTheLoader(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "id")
	kh := filepath.Join(dir, "kh")
	writeFile(t, key, "not really a key", 0o600)
	writeFile(t, kh, "", 0o644)
	b, err := LockstepSyncConfig("/srv/src", "/srv/dst", SSHPeer{Host: "127.0.0.1", Port: 2200, User: "root", Identity: key, KnownHosts: kh}, nil)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "c.yaml")
	writeFile(t, path, string(b), 0o600)
	f, err := config.Load(path)
	if err != nil {
		t.Fatalf("config rejected: %v\n%s", err, b)
	}
	if len(f.Sync) != 1 || len(f.Sync[0].Targets) != 1 {
		t.Fatalf("unexpected decode: %+v", f.Sync)
	}
	tg := f.Sync[0].Targets[0]
	if f.Sync[0].Source != "/srv/src" || tg.Port != 2200 || tg.Path != "/srv/dst" || tg.Identity != key {
		t.Fatalf("decoded %+v / %+v", f.Sync[0], tg)
	}
	// Defaults stay the loader's: the benchmark measures lockstep as shipped.
	if f.Sync[0].Delay != lsync.DefaultDelay {
		t.Fatalf("delay = %s, want the default", f.Sync[0].Delay)
	}
}

func TestReportMarkdown(t *testing.T) {
	r := &Report{Started: time.Unix(0, 0), Elapsed: 90 * time.Second, Facts: MachineFacts{Cores: 2, Kernel: "6.1", Go: "go1.26", Versions: [][2]string{{"lsyncd", "Version: 2.2.3"}}}}
	r.Results = []*Result{
		{ID: 1, Title: "Single", Status: StatusOK, Rows: []Row{
			{Metric: "p50", Kind: KindDuration, Lockstep: seconds(10 * time.Millisecond), Anchor: "lsyncd", AnchorV: seconds(200 * time.Millisecond)},
			{Metric: "bytes", Kind: KindBytes, Lockstep: bytesVal(3 << 20), Anchor: "lsyncd", AnchorV: missing("did not converge")},
		}, Notes: []string{"a | note"}},
		{ID: 8, Title: "Checksum", Status: StatusSkipped, Reason: "sysbench not installed"},
	}
	var b strings.Builder
	if err := r.WriteMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"| 1 | Single | ok | p50 | 10.0 ms | lsyncd | 200.0 ms | 0.05 |",
		"| bytes | 3.0 MiB | lsyncd | n/a (did not converge) | — |",
		"| 8 | Checksum | skipped: sysbench not installed |",
		"- a | note",
		"- Cores: 2",
		"- lsyncd: Version: 2.2.3",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if r.Failed() {
		t.Fatal("skipped scenario counted as failure")
	}
	r.Results = append(r.Results, &Result{ID: 3, Status: StatusFailed, Reason: "boom"})
	if !r.Failed() {
		t.Fatal("failed scenario not reported")
	}
}

func TestPercentileAndRatio(t *testing.T) {
	var xs []time.Duration
	for i := 100; i >= 1; i-- {
		xs = append(xs, time.Duration(i)*time.Millisecond)
	}
	if p := Percentile(xs, 50); p != 50*time.Millisecond {
		t.Errorf("p50 = %s", p)
	}
	if p := Percentile(xs, 99); p != 99*time.Millisecond {
		t.Errorf("p99 = %s", p)
	}
	if p := Percentile(xs, 100); p != 100*time.Millisecond {
		t.Errorf("max = %s", p)
	}
	if xs[0] != 100*time.Millisecond {
		t.Error("Percentile sorted its input in place")
	}
	if r := (Row{Lockstep: val(1), AnchorV: val(4)}).Ratio(); r != 0.25 {
		t.Errorf("ratio = %v", r)
	}
	if r := (Row{Lockstep: val(1), AnchorV: missing("x")}).Ratio(); !math.IsNaN(r) {
		t.Errorf("ratio with a missing side = %v", r)
	}
}

func TestProcStatsOfOwnProcess(t *testing.T) {
	if _, err := os.Stat("/proc/self/fdinfo"); err != nil {
		t.Skip("no /proc")
	}
	rss, err := RSSBytes(os.Getpid())
	if err != nil || rss <= 0 {
		t.Fatalf("RSS = %d, %v", rss, err)
	}
	base, err := InotifyWatches(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := 0; i < 3; i++ {
		d := t.TempDir()
		if err := w.Add(d); err != nil {
			t.Fatal(err)
		}
	}
	n, err := InotifyWatches(os.Getpid())
	if err != nil || n != base+3 {
		t.Fatalf("watches = %d (base %d), %v; want base+3", n, base, err)
	}
	if cpu, err := CPUSeconds(os.Getpid()); err != nil || cpu < 0 {
		t.Fatalf("cpu = %v, %v", cpu, err)
	}
}

func TestSummarizePTParsesTheResultTable(t *testing.T) {
	out := `            TS ERRORS  DIFFS     ROWS  DIFF_ROWS  CHUNKS SKIPPED    TIME TABLE
11-22T05:30:01      0      1   250000          1       6       0   1.234 sbtest.sbtest1
11-22T05:30:02      0      0   250000          0       6       0   1.100 sbtest.sbtest2
`
	s, diffs := summarizePT(out)
	if diffs != 1 || !strings.Contains(s, "sbtest.sbtest1: 0 errors, 1 differing chunk(s) of 6, 250000 rows") {
		t.Fatalf("summary %q diffs %d", s, diffs)
	}
	if _, d := summarizePT("garbage"); d != 0 {
		t.Fatal("garbage parsed")
	}
}

func TestParseSelection(t *testing.T) {
	sel, err := parseSelection("1, 3,9")
	if err != nil || !sel[1] || !sel[3] || !sel[9] || sel[2] {
		t.Fatalf("%v %v", sel, err)
	}
	if _, err := parseSelection("0"); err == nil {
		t.Fatal("0 accepted")
	}
	if _, err := parseSelection("x"); err == nil {
		t.Fatal("x accepted")
	}
	if sel, err := parseSelection(""); err != nil || sel != nil {
		t.Fatal("empty selection must mean all")
	}
	if code := realMain([]string{"-scenarios", "42"}, io.Discard, io.Discard); code != 2 {
		t.Fatalf("bad flag exit %d, want 2", code)
	}
}

func TestGenerateTreeShape(t *testing.T) {
	root := filepath.Join(t.TempDir(), "t")
	if err := generateTree(root, 20, 200, 64); err != nil {
		t.Fatal(err)
	}
	files, size, err := countTree(root)
	if err != nil || files != 200 || size != 200*64 {
		t.Fatalf("files=%d size=%d err=%v", files, size, err)
	}
	dirs := 0
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && p != root {
			dirs++
		}
		return nil
	})
	if dirs != 20 {
		t.Fatalf("dirs = %d, want 20", dirs)
	}
}

func TestTreeWaiterSeesLateFixesIncrementally(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for i := 0; i < 20; i++ {
		writeFile(t, filepath.Join(a, "d", strings.Repeat("f", i+1)), "same", 0o644)
		writeFile(t, filepath.Join(b, "d", strings.Repeat("f", i+1)), "same", 0o644)
	}
	writeFile(t, filepath.Join(a, "new"), "v2", 0o644)
	writeFile(t, filepath.Join(b, "new"), "v1", 0o644)
	writeFile(t, filepath.Join(b, "stale"), "x", 0o644)
	w := TreeWaiter{Source: NewDigester(), Target: NewDigester(), Interval: time.Millisecond}
	fixed := make(chan time.Time, 1)
	go func() {
		time.Sleep(20 * time.Millisecond)
		_ = os.Remove(filepath.Join(b, "stale"))
		time.Sleep(20 * time.Millisecond)
		_ = os.WriteFile(filepath.Join(b, "new.tmp"), []byte("v2"), 0o644)
		_ = os.Rename(filepath.Join(b, "new.tmp"), filepath.Join(b, "new"))
		fixed <- time.Now()
	}()
	at, err := w.WaitEqual(context.Background(), a, b, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ft := <-fixed; at.Before(ft) {
		t.Fatalf("reported equal at %s, before the last fix at %s", at, ft)
	}
}

func TestTreeRSSCountsChildren(t *testing.T) {
	self, err := RSSBytes(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	child := int64(0)
	deadline := time.Now().Add(5 * time.Second)
	for child == 0 && time.Now().Before(deadline) {
		child, _ = RSSBytes(cmd.Process.Pid)
		time.Sleep(10 * time.Millisecond)
	}
	if tree := TreeRSS(os.Getpid()); child == 0 || tree < self+child/2 {
		t.Errorf("tree RSS %d, want about own %d + child %d", tree, self, child)
	}
}

func TestFirstDiffPath(t *testing.T) {
	for msg, want := range map[string]string{
		"target not identical after 30s: 1 paths still differ, first: d4727/f8866.txt: differs": "d4727/f8866.txt",
		"target not identical after 30s: 2035 differences, first: d1072: extra on target\nmore": "d1072",
		"lsyncd died": "",
	} {
		if got := firstDiffPath(msg); got != want {
			t.Errorf("firstDiffPath(%q) = %q, want %q", msg, got, want)
		}
	}
}

func TestLsyncdLogMentionsQuotesActionAndChildComplaint(t *testing.T) {
	dir := t.TempDir()
	out := "16:00:29 Normal: Calling rsync with filter-list of new/modified files/dirs\n/d4727/f8866.txt\n/d4727/\n" +
		"16:00:30 Normal: Moving d4727/m8356/f9344.txt -> d4727/f8866.txt\n" +
		"mv: cannot stat '/t/d4727/m8356/f9344.txt': No such file or directory\n" +
		"16:00:30 Normal: Finished Move /s//d4727/m8356/f9344.txt: 0\n"
	if err := os.WriteFile(filepath.Join(dir, "lsyncd.out"), []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	got := (&Lsyncd{Dir: dir}).LogMentions("d4727/f8866.txt", 6)
	want := []string{"16:00:30 Normal: Moving d4727/m8356/f9344.txt -> d4727/f8866.txt",
		"mv: cannot stat '/t/d4727/m8356/f9344.txt': No such file or directory"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("LogMentions = %q, want %q", got, want)
	}
}
