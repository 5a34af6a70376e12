package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockstep-ha/lockstep/integration/poll"
	"github.com/lockstep-ha/lockstep/integration/sshdtest"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
	"github.com/lockstep-ha/lockstep/lsync/receiver"
	"github.com/lockstep-ha/lockstep/lsync/sftptarget"
)

// The hostile-peer tests run once with the lockstep receiver on the peer
// (reached over an SSH exec of the test-built binary) and once over plain
// SFTP: the receiver is what the fix relies on, SFTP is the fallback.
var protocols = []struct {
	name     string
	receiver string
}{
	{"receiver", lsync.ReceiverOn},
	{"sftp", lsync.ReceiverOff},
}

func withReceiver(t *testing.T, mode string) func(*lsync.JobConfig) {
	bin := ""
	if mode != lsync.ReceiverOff {
		bin = lockstepBinary(t)
	}
	return func(c *lsync.JobConfig) {
		for i := range c.Targets {
			c.Targets[i].Receiver = mode
			c.Targets[i].ReceiverCommand = bin
		}
	}
}

func both(mutates ...func(*lsync.JobConfig)) func(*lsync.JobConfig) {
	return func(c *lsync.JobConfig) {
		for _, m := range mutates {
			if m != nil {
				m(c)
			}
		}
	}
}

func (j *sshJob) metric(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := j.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += counterValue(m)
			}
		}
	}
	return sum
}

// hostileLayout makes a victim directory outside the peer's root, full of
// files with the names the sync is about to use.
func hostileLayout(t *testing.T) (src, dst, victim string) {
	base := t.TempDir()
	src, dst, victim = filepath.Join(base, "src"), filepath.Join(base, "peer", "docroot"), filepath.Join(base, "peer", "victim")
	old := time.Date(2015, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, f := range []string{"a.txt", "b.txt", "new.txt", "f000.php", "sub/c.txt"} {
		lsynctest.WriteFile(t, victim, f, "victim "+f, 0o600, old)
	}
	if err := os.Chown(filepath.Join(victim, "b.txt"), 1234, 1234); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(victim, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	return src, dst, victim
}

// waitIdle waits until the peer matches, directory mtimes included, and
// the job has nothing pending: the peer is then "used" and at rest. A
// swap while the job still fixes directory mtimes would race with it,
// which over SFTP is the known window (README, threat model).
func waitIdle(t *testing.T, j *sshJob, src, dst string) {
	t.Helper()
	lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, lsynctest.DirModTimes(), lsynctest.SecondModTimes())
	waitStatus(t, j, func(s lsync.TargetStatus) bool { return s.Connected && s.PendingFiles == 0 })
	time.Sleep(100 * time.Millisecond)
}

// swapForSymlink replaces the peer's directory rel by a symlink to victim.
func swapForSymlink(t *testing.T, dst, rel, victim string) {
	t.Helper()
	p := filepath.Join(dst, rel)
	if err := os.Rename(p, p+".moved-away"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, p); err != nil {
		t.Fatal(err)
	}
}

// TestHostilePeerDirectorySwappedAfterUse: after lockstep wrote into
// uploads/, the peer's uploads/ becomes a symlink to a directory outside
// the root. Creating, changing, chmod-ing and deleting files under
// uploads/ must not touch that directory, and the rest keeps syncing.
func TestHostilePeerDirectorySwappedAfterUse(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			srv := sshdtest.Start(t)
			src, dst, victim := hostileLayout(t)
			write(t, src, "uploads/a.txt", "a v1", 0o644)
			write(t, src, "uploads/b.txt", "b v1", 0o644)
			write(t, src, "uploads/sub/c.txt", "c v1", 0o644)
			j := startSSHJob(t, "web1", srv, src, dst, withReceiver(t, p.receiver))
			waitIdle(t, j, src, dst)

			before := lsynctest.Snapshot(t, victim)
			swapForSymlink(t, dst, "uploads", victim)
			refusedBefore := j.metric(t, "lockstep_sync_refused_total")

			steps := []struct {
				name string
				do   func()
			}{
				{"create", func() { write(t, src, "uploads/new.txt", "pwned?", 0o666) }},
				{"modify", func() { write(t, src, "uploads/a.txt", "a v2 pwned?", 0o644) }},
				{"chmod", func() {
					if err := os.Chmod(filepath.Join(src, "uploads/a.txt"), 0o777); err != nil {
						t.Fatal(err)
					}
				}},
				{"delete one file", func() {
					if err := os.Remove(filepath.Join(src, "uploads/b.txt")); err != nil {
						t.Fatal(err)
					}
				}},
				{"create in subdir", func() { write(t, src, "uploads/sub/new.txt", "pwned?", 0o666) }},
				{"delete subdir", func() {
					if err := os.RemoveAll(filepath.Join(src, "uploads/sub")); err != nil {
						t.Fatal(err)
					}
				}},
				{"symlink", func() {
					if err := os.Symlink("/", filepath.Join(src, "uploads/root-link")); err != nil {
						t.Fatal(err)
					}
				}},
			}
			for i, st := range steps {
				st.do()
				// A marker outside uploads/ proves the batch was applied
				// (the rest keeps syncing).
				marker := fmt.Sprintf("marker-%d", i)
				write(t, src, marker, st.name, 0o644)
				poll.Until(t, convergeTimeout, "marker "+marker+" on the peer", func() bool {
					b, err := os.ReadFile(filepath.Join(dst, marker))
					return err == nil && string(b) == st.name
				})
				lsynctest.AssertSnapshotUnchanged(t, victim, before)
				if t.Failed() {
					t.Fatalf("step %q wrote outside the root", st.name)
				}
			}
			if got := j.metric(t, "lockstep_sync_refused_total"); got <= refusedBefore {
				t.Errorf("lockstep_sync_refused_total did not move (%v): refusals must be counted", got)
			}
			// Status shows the refusals and how the peer is reached.
			if st := j.job.Status()[0]; st.Refused == 0 || !strings.HasPrefix(st.FirstRefused, "uploads/") ||
				p.receiver == lsync.ReceiverOff && st.Protocol != "sftp" || p.receiver == lsync.ReceiverOn && !strings.HasPrefix(st.Protocol, "receiver v") {
				t.Errorf("status: refused %d (first %q), protocol %q", st.Refused, st.FirstRefused, st.Protocol)
			}
			if l, err := os.Readlink(filepath.Join(dst, "uploads")); err != nil || l != victim {
				t.Errorf("the peer's symlink was changed by a live batch: %q %v", l, err)
			}
			// A full pass repairs the peer: the symlink is replaced by a
			// real directory (the source is authoritative one-way) and
			// the victim is still untouched.
			res := j.job.ReconcileOnce(context.Background())
			if len(res) != 1 || res[0].Err != nil {
				t.Fatalf("ReconcileOnce: %+v", res)
			}
			lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, lsynctest.Ignore(func(rel string) bool {
				return strings.HasSuffix(rel, ".moved-away") || strings.HasPrefix(rel, "uploads.moved-away/")
			}), lsynctest.SecondModTimes())
			lsynctest.AssertSnapshotUnchanged(t, victim, before)
		})
	}
}

// TestHostilePeerFileSwappedForSymlink: a synced file replaced on the
// peer by a symlink to a file outside is replaced, never written through.
func TestHostilePeerFileSwappedForSymlink(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			srv := sshdtest.Start(t)
			src, dst, victim := hostileLayout(t)
			write(t, src, "index.html", "v1", 0o644)
			write(t, src, "conf.php", "c1", 0o640)
			j := startSSHJob(t, "web1", srv, src, dst, withReceiver(t, p.receiver))
			waitIdle(t, j, src, dst)

			before := lsynctest.Snapshot(t, victim)
			for _, f := range []string{"index.html", "conf.php"} {
				if err := os.Remove(filepath.Join(dst, f)); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(filepath.Join(victim, "a.txt"), filepath.Join(dst, f)); err != nil {
					t.Fatal(err)
				}
			}
			write(t, src, "index.html", "v2", 0o644)
			if err := os.Chmod(filepath.Join(src, "conf.php"), 0o600); err != nil {
				t.Fatal(err)
			}
			lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, sftpOpts...)
			lsynctest.AssertSnapshotUnchanged(t, victim, before)
		})
	}
}

// swapper exchanges dir and a symlink to victim with renameat2
// (RENAME_EXCHANGE) as fast as it can until stopped, like an attacker
// with write access to the peer's docroot. When lockstep replaced the
// symlink by a directory, or removed either side, the attacker puts its
// symlink back (the directory it finds there is moved aside, kept). At
// the end a real directory is left at dir.
type swapper struct {
	stop  chan struct{}
	done  chan struct{}
	swaps atomic.Int64
	err   error
}

func startSwapper(t *testing.T, dir, victim string) *swapper {
	t.Helper()
	link := filepath.Join(filepath.Dir(dir), ".swap-"+filepath.Base(dir))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	s := &swapper{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		aside := 0
		for {
			select {
			case <-s.stop:
				s.err = settle(dir, link)
				return
			default:
			}
			err := unix.Renameat2(unix.AT_FDCWD, dir, unix.AT_FDCWD, link, unix.RENAME_EXCHANGE)
			if err == nil {
				s.swaps.Add(1)
				continue
			}
			if !errors.Is(err, unix.ENOENT) {
				s.err = err
				return
			}
			// One side is gone: re-plant what is missing.
			for _, p := range []string{dir, link} {
				if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
					_ = os.Symlink(victim, p)
				}
			}
			// Two real directories: move one aside, plant the symlink.
			fd, fl := os.Lstat(dir)
			ld, ll := os.Lstat(link)
			if fl == nil && ll == nil && fd.IsDir() && ld.IsDir() {
				aside++
				_ = os.Rename(link, fmt.Sprintf("%s-aside-%d", link, aside))
				_ = os.Symlink(victim, link)
			}
		}
	}()
	t.Cleanup(s.halt)
	return s
}

// settle leaves the real directory at dir and the symlink at link.
func settle(dir, link string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return unix.Renameat2(unix.AT_FDCWD, dir, unix.AT_FDCWD, link, unix.RENAME_EXCHANGE)
	}
	return nil
}

func (s *swapper) halt() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// burst writes n files under uploads/, changes the mode of some and
// deletes others, as a busy site would.
func burst(t *testing.T, src string, n int) {
	t.Helper()
	for i := range n {
		write(t, src, fmt.Sprintf("uploads/f%03d.php", i), fmt.Sprintf("<?php echo %d;", i), 0o644)
		if i%7 == 3 {
			if err := os.Chmod(filepath.Join(src, fmt.Sprintf("uploads/f%03d.php", i-1)), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if i%11 == 5 {
			if err := os.Remove(filepath.Join(src, fmt.Sprintf("uploads/f%03d.php", i-2))); err != nil {
				t.Fatal(err)
			}
		}
		if i%50 == 0 {
			write(t, src, fmt.Sprintf("uploads/d%d/inner.txt", i), "nested", 0o644)
		}
	}
}

// TestHostilePeerSwapRace: the peer's uploads/ and a symlink to a victim
// directory are exchanged atomically and continuously while lockstep
// writes a 200-file burst (live) and while it starts (initial pass).
// Only the receiver closes this race; over SFTP it is a known, narrowed
// race (README, threat model), so the SFTP variant is not run.
func TestHostilePeerSwapRace(t *testing.T) {
	for _, phase := range []string{"burst", "startup"} {
		t.Run(phase, func(t *testing.T) {
			srv := sshdtest.Start(t)
			src, dst, victim := hostileLayout(t)
			before := lsynctest.Snapshot(t, victim)
			write(t, src, "index.html", "home", 0o644)
			write(t, src, "uploads/seed.txt", "seed", 0o644)
			if phase == "startup" {
				burst(t, src, 200)
			}
			var sw *swapper
			if phase == "startup" {
				sw = startSwapper(t, filepath.Join(dst, "uploads"), victim)
			}
			j := startSSHJob(t, "web1", srv, src, dst, withReceiver(t, lsync.ReceiverOn))
			if phase == "burst" {
				waitIdle(t, j, src, dst)
				sw = startSwapper(t, filepath.Join(dst, "uploads"), victim)
				burst(t, src, 200)
			}
			// Keep racing until the job has pushed everything it could.
			write(t, src, "done-marker", "x", 0o644)
			poll.Until(t, convergeTimeout, "the marker on the peer", func() bool {
				_, err := os.Stat(filepath.Join(dst, "done-marker"))
				return err == nil
			})
			time.Sleep(500 * time.Millisecond)
			sw.halt()
			if sw.err != nil {
				t.Fatalf("swapper: %v", sw.err)
			}
			t.Logf("%d swaps; %v operations refused", sw.swaps.Load(), j.metric(t, "lockstep_sync_refused_total"))
			if sw.swaps.Load() < 100 {
				t.Errorf("only %d swaps: the race did not run", sw.swaps.Load())
			}
			lsynctest.AssertSnapshotUnchanged(t, victim, before)
			// Once the peer stops misbehaving, a full pass converges.
			if res := j.job.ReconcileOnce(context.Background()); len(res) != 1 || res[0].Err != nil {
				t.Fatalf("ReconcileOnce: %+v", res)
			}
			lsynctest.WaitTreesEqual(t, src, dst, convergeTimeout, lsynctest.SecondModTimes())
			lsynctest.AssertSnapshotUnchanged(t, victim, before)
		})
	}
}

// TestTwoWayTypeConflictOverSSH: node a has a symlink where node b has a
// directory with files. Neither replaces the other and nothing is deleted
// on either node or outside; once b's directory changes after a's symlink
// was made, the directory (with its content) wins on both nodes.
func TestTwoWayTypeConflictOverSSH(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) { twoWayTypeConflict(t, p.receiver) })
	}
}

func twoWayTypeConflict(t *testing.T, mode string) {
	srv := sshdtest.Start(t)
	base := t.TempDir()
	a, b, victim := filepath.Join(base, "a"), filepath.Join(base, "b"), filepath.Join(base, "victim")
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	lsynctest.WriteFile(t, victim, "photo.jpg", "victim", 0o600, old)
	lsynctest.WriteFile(t, b, "uploads/photo.jpg", "b's upload", 0o644, old)
	lsynctest.WriteFile(t, b, "uploads/2024/doc.pdf", "b's doc", 0o644, old)
	lsynctest.WriteFile(t, a, "index.html", "shared", 0o644, old)
	time.Sleep(20 * time.Millisecond) // the symlink is strictly newer than b's directory
	if err := os.Symlink(victim, filepath.Join(a, "uploads")); err != nil {
		t.Fatal(err)
	}
	beforeB, beforeVictim := lsynctest.Snapshot(t, filepath.Join(b, "uploads")), lsynctest.Snapshot(t, victim)
	recv := withReceiver(t, mode)
	twoWay := func(c *lsync.JobConfig) { c.TwoWay = true }
	startSSHJob(t, "web1", srv, a, b, both(recv, twoWay))
	jb := startSSHJob(t, "web2", srv, b, a, both(recv, twoWay))
	poll.Until(t, convergeTimeout, "index.html on b", func() bool {
		got, err := os.ReadFile(filepath.Join(b, "index.html"))
		return err == nil && string(got) == "shared"
	})
	write(t, a, "about.html", "about", 0o644)
	poll.Until(t, convergeTimeout, "about.html on b", func() bool {
		_, err := os.Stat(filepath.Join(b, "about.html"))
		return err == nil
	})
	// b's files below a's symlink were refused on a (never written
	// through it), and counted: b's connect pass ran.
	poll.Until(t, convergeTimeout, "b's writes below a's symlink counted as refused", func() bool {
		return jb.metric(t, "lockstep_sync_refused_total") > 0
	})
	// Both full passes (connect) and live batches ran; give trailing
	// work time to show up.
	time.Sleep(time.Second)
	lsynctest.AssertSnapshotUnchanged(t, filepath.Join(b, "uploads"), beforeB)
	lsynctest.AssertSnapshotUnchanged(t, victim, beforeVictim)
	if l, err := os.Readlink(filepath.Join(a, "uploads")); err != nil || l != victim {
		t.Errorf("a's symlink: %q %v", l, err)
	}

	// b's directory changes after a's symlink: at the next full pass the
	// content wins, and nothing of it is lost.
	write(t, b, "uploads/new.jpg", "b's new upload", 0o644)
	time.Sleep(100 * time.Millisecond)
	if res := jb.job.ReconcileOnce(context.Background()); len(res) != 1 || res[0].Err != nil {
		t.Fatalf("ReconcileOnce on b: %+v", res)
	}
	poll.Until(t, convergeTimeout, "b's uploads on a", func() bool {
		got, err := os.ReadFile(filepath.Join(a, "uploads/new.jpg"))
		return err == nil && string(got) == "b's new upload"
	})
	lsynctest.WaitTreesEqual(t, a, b, convergeTimeout, sftpOpts...)
	for _, f := range []string{"photo.jpg", "2024/doc.pdf"} {
		if _, err := os.Stat(filepath.Join(b, "uploads", f)); err != nil {
			t.Errorf("b lost uploads/%s: %v", f, err)
		}
	}
	lsynctest.AssertSnapshotUnchanged(t, victim, beforeVictim)
}

// capture is a logger whose output the test can search.
type capture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *capture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

func connectWith(t *testing.T, srv *sshdtest.Server, dst, mode, command string) (lsync.Target, string, error) {
	t.Helper()
	cfg := srv.TargetConfig("peer", dst)
	cfg.Receiver, cfg.ReceiverCommand = mode, command
	logs := &capture{}
	c, err := sftptarget.NewConnector(cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	tg, err := c.Connect(context.Background())
	if tg != nil {
		t.Cleanup(func() { _ = tg.Close() })
	}
	return tg, logs.String(), err
}

func mustWork(t *testing.T, tg lsync.Target, dst string) {
	t.Helper()
	if err := tg.WriteFile(context.Background(), "probe/x.txt", strings.NewReader("x"), 0o644, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dst, "probe/x.txt")); string(got) != "x" {
		t.Errorf("probe content %q", got)
	}
}

// TestReceiverFallback: auto uses the receiver when the peer has it, and
// falls back to SFTP, saying why, when it is missing or speaks another
// protocol version; on refuses to fall back.
func TestReceiverFallback(t *testing.T) {
	srv := sshdtest.Start(t)
	bin := lockstepBinary(t)

	t.Run("present", func(t *testing.T) {
		dst := t.TempDir()
		tg, logs, err := connectWith(t, srv, dst, lsync.ReceiverAuto, bin)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs, "protocol=lockstep-receiver") || strings.Contains(logs, "falling back") {
			t.Errorf("expected a receiver session; logs:\n%s", logs)
		}
		assertProtocol(t, tg, fmt.Sprintf("receiver v%d", receiver.Version), "")
		mustWork(t, tg, dst)
	})
	t.Run("absent", func(t *testing.T) {
		dst := t.TempDir()
		tg, logs, err := connectWith(t, srv, dst, lsync.ReceiverAuto, "/nonexistent/lockstep")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs, "falling back to SFTP") || !strings.Contains(logs, "exit 127") || !strings.Contains(logs, "protocol=sftp") {
			t.Errorf("expected an SFTP fallback naming exit 127; logs:\n%s", logs)
		}
		assertProtocol(t, tg, "sftp", "exit 127")
		mustWork(t, tg, dst)
	})
	t.Run("other version", func(t *testing.T) {
		dst := t.TempDir()
		script := fakeReceiver(t, receiver.Version+1, dst)
		tg, logs, err := connectWith(t, srv, dst, lsync.ReceiverAuto, script)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs, "falling back to SFTP") || !strings.Contains(logs, fmt.Sprintf("protocol version %d", receiver.Version+1)) ||
			!strings.Contains(logs, "protocol=sftp") {
			t.Errorf("expected an SFTP fallback naming the version; logs:\n%s", logs)
		}
		assertProtocol(t, tg, "sftp", fmt.Sprintf("protocol version %d", receiver.Version+1))
		mustWork(t, tg, dst)
	})
	t.Run("on without receiver", func(t *testing.T) {
		_, _, err := connectWith(t, srv, t.TempDir(), lsync.ReceiverOn, "/nonexistent/lockstep")
		if err == nil || !strings.Contains(err.Error(), "not installed") || !errors.Is(err, lsync.ErrDisconnected) {
			t.Errorf("receiver: on with no receiver: %v", err)
		}
	})
	t.Run("forced root differs", func(t *testing.T) {
		// What a forced command naming another root looks like.
		script := fakeReceiver(t, receiver.Version, "/srv/elsewhere")
		_, _, err := connectWith(t, srv, t.TempDir(), lsync.ReceiverOn, script)
		if err == nil || !strings.Contains(err.Error(), "/srv/elsewhere") {
			t.Errorf("root mismatch: %v", err)
		}
	})
}

// assertProtocol checks what the session tells status and metrics: the
// protocol, and (fallback: a part of it) why auto fell back to SFTP.
func assertProtocol(t *testing.T, tg lsync.Target, protocol, fallback string) {
	t.Helper()
	pr, ok := tg.(lsync.ProtocolReporter)
	if !ok {
		t.Fatalf("%T does not report its protocol", tg)
	}
	if pr.Protocol() != protocol || fallback == "" && pr.Fallback() != "" || !strings.Contains(pr.Fallback(), fallback) {
		t.Errorf("protocol %q, fallback %q; want %q, a fallback naming %q", pr.Protocol(), pr.Fallback(), protocol, fallback)
	}
}

// fakeReceiver writes a script that answers the hello like a receiver of
// the given protocol version serving root, then exits.
func fakeReceiver(t *testing.T, version uint32, root string) string {
	t.Helper()
	var payload []byte
	str := func(s string) {
		payload = binary.BigEndian.AppendUint32(payload, uint32(len(s)))
		payload = append(payload, s...)
	}
	str(receiver.Magic)
	payload = binary.BigEndian.AppendUint32(payload, version)
	str(root)
	str("")
	frame := binary.BigEndian.AppendUint32(nil, uint32(5+len(payload)))
	frame = append(frame, 'H', 0, 0, 0, 0)
	frame = append(frame, payload...)
	var esc strings.Builder
	for _, c := range frame {
		fmt.Fprintf(&esc, "\\%03o", c)
	}
	p := filepath.Join(t.TempDir(), "fake-lockstep")
	script := "#!/bin/sh\nprintf '" + esc.String() + "'\nsleep 1\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestReceiverForcedCommand: the setup the README recommends, the sync key
// restricted in authorized_keys to `lockstep receive --root PATH`.
func TestReceiverForcedCommand(t *testing.T) {
	srv := sshdtest.Start(t)
	bin := lockstepBinary(t)
	dst := filepath.Join(t.TempDir(), "docroot")
	ak := filepath.Join(srv.Dir, "authorized_keys")
	key, err := os.ReadFile(ak)
	if err != nil {
		t.Fatal(err)
	}
	forced := fmt.Sprintf("command=\"%s receive --root %s\",restrict %s", bin, dst, key)
	if err := os.WriteFile(ak, []byte(forced), 0o600); err != nil {
		t.Fatal(err)
	}
	// The client's own command is ignored: the forced one runs.
	tg, logs, err := connectWith(t, srv, dst, lsync.ReceiverOn, "/nonexistent/lockstep")
	if err != nil {
		t.Fatalf("%v\n%s", err, logs)
	}
	mustWork(t, tg, dst)
	// A target path other than the forced root is refused, not mixed up.
	_, _, err = connectWith(t, srv, dst+"-other", lsync.ReceiverOn, bin)
	if err == nil || !strings.Contains(err.Error(), "forced command") {
		t.Errorf("target path differing from the forced root: %v", err)
	}
}

// slowReader yields n bytes of content slowly (16 KiB every 50 ms), so
// that an upload lasts long enough for the peer to act in the middle.
type slowReader struct{ n int }

func (r *slowReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, io.EOF
	}
	time.Sleep(50 * time.Millisecond)
	k := min(len(p), r.n, 16<<10)
	for i := range k {
		p[i] = 'x'
	}
	r.n -= k
	return k, nil
}

// TestHostilePeerTempFileSwapped: the peer moves lockstep's temp file
// aside in the middle of an upload and puts a symlink to a root-owned
// 0600 file outside the root in its place. Over plain SFTP the mode and
// mtime were set by path on the temp name after the upload, and so on
// the outside file (it became 0644 with the source's mtime, and the
// upload reported success). Now neither protocol touches the outside
// file, both refuse (lsync.ErrRefused) instead of publishing the
// attacker's symlink as the file, and the owner the upload asks for is
// not handed to the outside file either.
func TestHostilePeerTempFileSwapped(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			srv := sshdtest.Start(t)
			base := t.TempDir()
			dst, victim := filepath.Join(base, "docroot"), filepath.Join(base, "victim")
			lsynctest.WriteFile(t, victim, "shadow", "secret", 0o600, time.Date(2015, 1, 1, 0, 0, 0, 0, time.UTC))
			if err := os.MkdirAll(filepath.Join(dst, "uploads"), 0o755); err != nil {
				t.Fatal(err)
			}
			before := lsynctest.Snapshot(t, victim)
			cmd := ""
			if p.receiver != lsync.ReceiverOff {
				cmd = lockstepBinary(t)
			}
			tg, _, err := connectWith(t, srv, dst, p.receiver, cmd)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			swapped := make(chan string, 1)
			go func() {
				for {
					select {
					case <-done:
						return
					case <-time.After(time.Millisecond):
					}
					ents, _ := os.ReadDir(filepath.Join(dst, "uploads"))
					for _, e := range ents {
						if strings.HasPrefix(e.Name(), lsync.TempPrefix) && e.Type().IsRegular() {
							tmp := filepath.Join(dst, "uploads", e.Name())
							if os.Rename(tmp, tmp+".aside") == nil {
								_ = os.Symlink(filepath.Join(victim, "shadow"), tmp)
								swapped <- e.Name()
								return
							}
						}
					}
				}
			}()
			// The owner the source file has (www-data): a chown that
			// followed the symlink would give the victim to that user.
			ctx := lsync.WithOwner(context.Background(), &lsync.OwnerRequest{Owner: lsync.Owner{UID: 33, GID: 33}})
			err = tg.WriteFile(ctx, "uploads/big.bin", &slowReader{n: 512 << 10}, 0o644, time.Unix(1_700_000_000, 0))
			close(done)
			select {
			case n := <-swapped:
				t.Logf("temp %s swapped for a symlink mid-upload; WriteFile: %v", n, err)
			default:
				t.Fatalf("the temp file was never swapped (WriteFile: %v)", err)
			}
			lsynctest.AssertSnapshotUnchanged(t, victim, before)
			if !errors.Is(err, lsync.ErrRefused) {
				t.Errorf("WriteFile: %v, want a refusal (lsync.ErrRefused)", err)
			}
			if fi, err := os.Lstat(filepath.Join(dst, "uploads/big.bin")); err == nil {
				t.Errorf("uploads/big.bin was published as %v (the attacker's symlink)", fi.Mode())
			}
		})
	}
}

// TestHostilePeerSwapRaceTwoWay: the "same in two-way mode". Two
// nodes sync each other through the receiver; on node b an attacker
// exchanges b's uploads/ and a symlink to a victim directory outside both
// docroots, continuously, while both nodes write a burst: a under
// uploads/ (pushed by a into b's swapping uploads/), b elsewhere (b's own
// writes through uploads/ would follow the attacker's symlink: that is
// the web application, not lockstep). For b's job the swaps are changes
// of its own source: uploads/ turning into a symlink and back must be
// neither pushed into a as the loss of a's files nor read through (the
// victim holds files named like a's). Afterwards the victim is unchanged
// and, once the attacker stops, both nodes converge on every file either
// wrote, with its content.
func TestHostilePeerSwapRaceTwoWay(t *testing.T) {
	start := time.Now()
	srv := sshdtest.Start(t)
	base := t.TempDir()
	a, b, victim := filepath.Join(base, "a"), filepath.Join(base, "b"), filepath.Join(base, "victim")
	old := time.Date(2015, 1, 2, 3, 4, 5, 0, time.UTC)
	// The victim has the names the burst is about to use.
	for _, f := range []string{"f000.php", "f001.php", "f007.php", "seed.txt", "sub/c.txt"} {
		lsynctest.WriteFile(t, victim, f, "victim "+f, 0o600, old)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(victim, "link")); err != nil {
		t.Fatal(err)
	}
	before := lsynctest.Snapshot(t, victim)

	model := map[string]string{} // every file either node wrote → content
	put := func(root, rel, content string, mode fs.FileMode) {
		write(t, root, rel, content, mode)
		model[rel] = content
	}
	put(a, "index.html", "home", 0o644)
	put(a, "uploads/seed.txt", "seed", 0o644)
	put(b, "pages/seed.html", "b's seed", 0o644)

	twoWay := func(c *lsync.JobConfig) { c.TwoWay = true }
	recv := withReceiver(t, lsync.ReceiverOn)
	ja := startSSHJob(t, "web1", srv, a, b, both(recv, twoWay))
	jb := startSSHJob(t, "web2", srv, b, a, both(recv, twoWay))
	lsynctest.WaitTreesEqual(t, a, b, convergeTimeout, sftpOpts...)
	time.Sleep(500 * time.Millisecond) // both have recorded the seed in their state

	sw := startSwapper(t, filepath.Join(b, "uploads"), victim)
	// 80 files a side: enough for several batches on each node during
	// the race, few enough for make test (the swapper takes a core).
	const n = 80
	for i := range n {
		put(a, fmt.Sprintf("uploads/f%03d.php", i), fmt.Sprintf("<?php echo %d; // a", i), 0o644)
		put(b, fmt.Sprintf("pages/p%03d.html", i), fmt.Sprintf("b's page %d", i), 0o644)
		if i%7 == 3 { // a mode change of a file b already holds
			if err := os.Chmod(filepath.Join(a, fmt.Sprintf("uploads/f%03d.php", i-1)), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if i%11 == 5 {
			rel := fmt.Sprintf("uploads/f%03d.php", i-2)
			if err := os.Remove(filepath.Join(a, rel)); err != nil {
				t.Fatal(err)
			}
			delete(model, rel)
		}
		if i%50 == 0 {
			put(a, fmt.Sprintf("uploads/d%d/inner.txt", i), "nested", 0o644)
		}
		if i%10 == 0 {
			time.Sleep(20 * time.Millisecond) // several batches, not one
		}
	}
	// Keep racing until both jobs have pushed what they could.
	put(a, "done-a", "a", 0o644)
	put(b, "done-b", "b", 0o644)
	// make test checks confinement only: on a loaded machine the swapper's
	// flood of events (overflows, rescans) can hold b's job back past the
	// wait, which is for soak (LOCKSTEP_TWOWAY_RACE=1) to judge.
	across := func() bool {
		_, ea := os.Stat(filepath.Join(b, "done-a"))
		_, eb := os.Stat(filepath.Join(a, "done-b"))
		return ea == nil && eb == nil
	}
	crossed := true
	for deadline := time.Now().Add(convergeTimeout); !across(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			crossed = false
			if os.Getenv("LOCKSTEP_TWOWAY_RACE") != "" {
				t.Fatalf("the markers did not cross within %v of racing", convergeTimeout)
			}
			t.Logf("the markers did not cross within %v of racing (judged under soak only)", convergeTimeout)
			break
		}
	}
	time.Sleep(500 * time.Millisecond)
	sw.halt()
	if sw.err != nil {
		t.Fatalf("swapper: %v", sw.err)
	}
	refusedA, refusedB := ja.metric(t, "lockstep_sync_refused_total"), jb.metric(t, "lockstep_sync_refused_total")
	t.Logf("%d swaps; operations refused: %v by a's job (writing into b), %v by b's job; race over after %v",
		sw.swaps.Load(), refusedA, refusedB, time.Since(start).Round(time.Millisecond))
	if sw.swaps.Load() < 100 {
		t.Errorf("only %d swaps: the race did not run", sw.swaps.Load())
	}
	// A swapper flooding the watcher can keep both jobs from reaching
	// the raced paths at all (the markers did not cross): no refusal is
	// then owed; confinement is still judged below.
	if refusedA+refusedB == 0 && (crossed || os.Getenv("LOCKSTEP_TWOWAY_RACE") != "") {
		t.Errorf("no operation refused in %d swaps: refusals must be counted", sw.swaps.Load())
	}
	lsynctest.AssertSnapshotUnchanged(t, victim, before)

	// Still open (issue 13): after the race the nodes do not always end
	// equal (one run in five so far: b's uploads/ left a symlink, the real
	// directory not back under its name) and a file or two may be lost.
	// make test checks confinement only; make soak
	// (LOCKSTEP_TWOWAY_RACE=1) also checks the outcome.
	if os.Getenv("LOCKSTEP_TWOWAY_RACE") == "" {
		return
	}
	// The attacker stopped (uploads/ is b's real directory again): full
	// passes on both nodes converge, and nothing either node wrote is
	// lost, moved or replaced by the victim's content.
	for _, j := range []*sshJob{ja, jb} {
		reconcileOnce(t, j)
	}
	lsynctest.WaitTreesEqual(t, a, b, convergeTimeout, sftpOpts...)
	// A file or two of a's burst (so far always one with a name the
	// victim has too) is still deleted on both nodes about one run in
	// two; before absenceIsNoDeletion it was 3 to 29 every run.
	report := t.Errorf
	for _, root := range []string{a, b} {
		got := treeContents(t, root)
		for p, want := range model {
			if g, ok := got[p]; !ok || g != want {
				report("%s: %s is %q (present %v), want %q", filepath.Base(root), p, g, ok, want)
			}
		}
	}
	lsynctest.AssertSnapshotUnchanged(t, victim, before)
	t.Logf("converged after %v", time.Since(start).Round(time.Millisecond))
}

// reconcileOnce runs a full pass; a session that could not be opened
// (the new SSH connection, on a loaded machine) is tried again: the test
// is about what a pass does, not about connecting.
func reconcileOnce(t *testing.T, j *sshJob) {
	t.Helper()
	for try := 1; ; try++ {
		res := j.job.ReconcileOnce(context.Background())
		if len(res) == 1 && res[0].Err == nil {
			return
		}
		if try == 3 || len(res) != 1 || !errors.Is(res[0].Err, lsync.ErrDisconnected) {
			t.Fatalf("ReconcileOnce: %+v", res)
		}
		t.Logf("ReconcileOnce, try %d: %v", try, res[0].Err)
	}
}
