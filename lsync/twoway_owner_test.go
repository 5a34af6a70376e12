package lsync_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// waitOwnerIs waits until p has owner uid:gid.
func waitOwnerIs(t *testing.T, p string, uid, gid uint32) {
	t.Helper()
	var st syscall.Stat_t
	var err error
	waitFor(t, p+" owned by "+idPair(uid, gid), func() bool {
		err = syscall.Lstat(p, &st)
		return err == nil && st.Uid == uid && st.Gid == gid
	})
}

func idPair(uid, gid uint32) string { return fmt.Sprintf("%d:%d", uid, gid) }

// assertOwner fails unless p has owner uid:gid now.
func assertOwner(t *testing.T, p string, uid, gid uint32) {
	t.Helper()
	if u, g := owner(t, p); u != uid || g != gid {
		t.Errorf("%s: owner %d:%d, want %d:%d", p, u, g, uid, gid)
	}
}

// TestTwoWayChownPropagates: in two-way sync a chown alone (content, mode
// and mtime unchanged) of a file or directory on either node reaches the
// other, live and after an outage; changed on both sides during an
// outage, the content rule's winner (equal mtimes: the node name sorting
// first, "a") keeps its owner on both; an edit on one node does not undo
// a chown on the other; and once both agree nothing moves.
func TestTwoWayChownPropagates(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	n := startTwoNodes(t)
	for _, f := range []string{"a.txt", "b.txt", "d/f.txt", "out-a.txt", "out-b.txt", "both.txt", "mixed.txt"} {
		mustWrite(t, n.a, f, "base "+f)
	}
	lsynctest.WaitTreesEqual(t, n.a, n.b, waitLimit)
	time.Sleep(300 * time.Millisecond) // both jobs have recorded the base

	// Live: a chown on a reaches b, one on b reaches a.
	must(t, os.Lchown(filepath.Join(n.a, "a.txt"), 4242, 4243))
	waitOwnerIs(t, filepath.Join(n.b, "a.txt"), 4242, 4243)
	must(t, os.Lchown(filepath.Join(n.b, "b.txt"), 4244, 4245))
	waitOwnerIs(t, filepath.Join(n.a, "b.txt"), 4244, 4245)
	must(t, os.Lchown(filepath.Join(n.b, "d"), 4246, 4247)) // a directory
	waitOwnerIs(t, filepath.Join(n.a, "d"), 4246, 4247)
	must(t, os.Lchown(filepath.Join(n.a, "d/f.txt"), 0, 4247)) // the group alone
	waitOwnerIs(t, filepath.Join(n.b, "d/f.txt"), 0, 4247)
	time.Sleep(300 * time.Millisecond)
	// The changed sides keep their owner: nothing was reverted.
	assertOwner(t, filepath.Join(n.a, "a.txt"), 4242, 4243)
	assertOwner(t, filepath.Join(n.b, "b.txt"), 4244, 4245)
	assertOwner(t, filepath.Join(n.b, "d"), 4246, 4247)

	// During an outage: one side each, and both sides on one file.
	n.cut(true)
	must(t, os.Lchown(filepath.Join(n.a, "out-a.txt"), 4242, 4242))
	must(t, os.Lchown(filepath.Join(n.b, "out-b.txt"), 4243, 4243))
	must(t, os.Lchown(filepath.Join(n.a, "both.txt"), 4244, 4244))
	must(t, os.Lchown(filepath.Join(n.b, "both.txt"), 4245, 4245))
	// A chown on a, an edit on b: b's edit lands on a without undoing
	// a's chown, which reaches b.
	must(t, os.Lchown(filepath.Join(n.a, "mixed.txt"), 4246, 4246))
	mustWrite(t, n.b, "mixed.txt", "edited on b")
	time.Sleep(200 * time.Millisecond)
	n.cut(false)
	for _, root := range []string{n.a, n.b} {
		waitOwnerIs(t, filepath.Join(root, "out-a.txt"), 4242, 4242)
		waitOwnerIs(t, filepath.Join(root, "out-b.txt"), 4243, 4243)
		waitOwnerIs(t, filepath.Join(root, "both.txt"), 4244, 4244) // a sorts first
		waitOwnerIs(t, filepath.Join(root, "mixed.txt"), 4246, 4246)
	}
	waitFor(t, "b's edit on a", func() bool { return readFile(t, filepath.Join(n.a, "mixed.txt")) == "edited on b" })
	// No conflict copy for a change of owner.
	if copies, _ := filepath.Glob(filepath.Join(n.a, "*sync-conflict*")); len(copies) != 0 {
		t.Errorf("conflict copies for a chown: %v", copies)
	}
	// Settled: the owners stay put.
	time.Sleep(500 * time.Millisecond)
	for _, root := range []string{n.a, n.b} {
		assertOwner(t, filepath.Join(root, "both.txt"), 4244, 4244)
		assertOwner(t, filepath.Join(root, "a.txt"), 4242, 4243)
		assertOwner(t, filepath.Join(root, "b.txt"), 4244, 4245)
	}
	lsynctest.AssertTreesEqual(t, n.a, n.b)
}

// TestTwoWayOwnerWithoutBaseIsLeftAlone: two nodes holding the same file
// with different owners and nothing recorded of an owner (a first run, a
// state from before owners were recorded) keep their owners: no owner is
// inferred without a base. Once a node's job has seen them agree (a full
// pass, or any change of the path there), its later chowns propagate.
func TestTwoWayOwnerWithoutBaseIsLeftAlone(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	a, b := t.TempDir(), t.TempDir()
	stamp := time.Now().Add(-time.Hour).Truncate(time.Second)
	for _, root := range []string{a, b} {
		lsynctest.WriteFile(t, root, "page.html", "same", 0o644, stamp)
	}
	must(t, os.Lchown(filepath.Join(a, "page.html"), 4242, 4242))
	must(t, os.Lchown(filepath.Join(b, "page.html"), 4243, 4243))
	n := startTwoNodesIn(t, a, b, nil)
	time.Sleep(time.Second) // both full passes ran
	assertOwner(t, filepath.Join(a, "page.html"), 4242, 4242)
	assertOwner(t, filepath.Join(b, "page.html"), 4243, 4243)

	// Made to agree by hand on b: b's job sees it, a's at its next full
	// pass; from then on the owner is merged.
	must(t, os.Lchown(filepath.Join(b, "page.html"), 4242, 4242))
	time.Sleep(300 * time.Millisecond)
	for _, res := range n.jobA.ReconcileOnce(context.Background()) {
		if res.Err != nil {
			t.Fatal(res.Err)
		}
	}
	must(t, os.Lchown(filepath.Join(a, "page.html"), 4244, 4244))
	waitOwnerIs(t, filepath.Join(n.b, "page.html"), 4244, 4244)
}

// TestTwoWayChownRefusedByPeer: a peer user that may not chown (EPERM) is
// said once, content keeps syncing both ways, and the refused chown is
// not retried on every pass.
func TestTwoWayChownRefusedByPeer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	a, b := t.TempDir(), t.TempDir()
	logs := &lockedBuffer{}
	var refusing *refusingChown
	n := startTwoNodesIn(t, a, b, func(node string, c lsync.Connector, o *lsync.JobOptions) lsync.Connector {
		if node != "a" {
			return c
		}
		o.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(logs, testLogWriter{t}), nil))
		refusing = &refusingChown{Connector: c}
		return refusing
	})
	mustWrite(t, a, "x.txt", "x")
	mustWrite(t, b, "y.txt", "y")
	lsynctest.WaitTreesEqual(t, a, b, waitLimit)
	time.Sleep(300 * time.Millisecond)

	must(t, os.Lchown(filepath.Join(a, "x.txt"), 4242, 4242))
	waitFor(t, "the refusal logged", func() bool { return strings.Contains(logs.String(), "may not change ownership") })
	mustWrite(t, a, "x.txt", "edited after the refused chown")
	mustWrite(t, b, "y.txt", "edited on b")
	lsynctest.WaitTreesEqual(t, a, b, waitLimit)
	time.Sleep(500 * time.Millisecond)
	if c := strings.Count(logs.String(), "may not change ownership"); c != 1 {
		t.Errorf("the refusal was logged %d times, want once:\n%s", c, logs)
	}
	if c := refusing.calls(); c > 2 {
		t.Errorf("a refused chown was tried %d times", c)
	}
	if st := statusOf(n.jobA, "b"); st.LastError != "" || st.LastSync.IsZero() {
		t.Errorf("a refused chown left the target failing or out of sync: %+v", st)
	}
}

// startTwoNodesIn is startTwoNodes on the given docroots; wrap may
// replace a node's connector and set its options.
func startTwoNodesIn(t *testing.T, a, b string, wrap func(node string, c lsync.Connector, o *lsync.JobOptions) lsync.Connector) *twoNodes {
	t.Helper()
	n := &twoNodes{a: a, b: b, stateA: t.TempDir(), stbB: t.TempDir()}
	job := func(src, peer, dst, state string) lsync.JobConfig {
		return lsync.JobConfig{
			Name: "docroot", Source: src, TwoWay: true, VerifyInterval: ptr(time.Duration(0)), StateDir: state,
			Targets: []lsync.TargetConfig{{Name: peer, Path: dst}},
		}
	}
	ca, cb := job(n.a, "b", n.b, n.stateA), job(n.b, "a", n.a, n.stbB)
	n.toB, n.toA = newFlaky(t, ca.Targets[0]), newFlaky(t, cb.Targets[0])
	fast := lsync.JobOptions{ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond}
	oa, ob := fast, fast
	oa.Node, oa.Registerer = "a", prometheus.NewRegistry()
	ob.Node, ob.Registerer = "b", prometheus.NewRegistry()
	var connA, connB lsync.Connector = n.toB, n.toA
	if wrap != nil {
		connA, connB = wrap("a", connA, &oa), wrap("b", connB, &ob)
	}
	n.jobA = lsynctest.StartJob(t, ca, []lsync.Connector{connA}, oa)
	n.jobB = lsynctest.StartJob(t, cb, []lsync.Connector{connB}, ob)
	return n
}

// refusingChown is a connection whose user may not chown: every Lchown
// fails with EPERM, as it does for a non-root SSH user.
type refusingChown struct {
	lsync.Connector
	mu sync.Mutex
	n  int
}

func (c *refusingChown) calls() int { c.mu.Lock(); defer c.mu.Unlock(); return c.n }

func (c *refusingChown) Connect(ctx context.Context) (lsync.Target, error) {
	t, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &refusingTarget{flakyTarget: t.(*flakyTarget), c: c}, nil
}

type refusingTarget struct {
	*flakyTarget
	c *refusingChown
}

func (t *refusingTarget) Lchown(_ context.Context, rel string, _ lsync.Owner) error {
	t.c.mu.Lock()
	t.c.n++
	t.c.mu.Unlock()
	return &os.PathError{Op: "lchown", Path: rel, Err: syscall.EPERM}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
