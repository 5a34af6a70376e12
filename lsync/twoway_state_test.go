package lsync_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// twoNodes runs the two mirror jobs of a two-node, two-way setup with a
// sync state each, through connectors that can be cut.
type twoNodes struct {
	a, b         string // docroots of node a and node b
	toB, toA     *flakyConnector
	jobA, jobB   *lsync.Job
	stateA, stbB string
}

func startTwoNodes(t *testing.T, opts ...func(*lsync.JobConfig)) *twoNodes {
	t.Helper()
	n := &twoNodes{a: t.TempDir(), b: t.TempDir(), stateA: t.TempDir(), stbB: t.TempDir()}
	job := func(src, peer, dst, state string) lsync.JobConfig {
		return lsync.JobConfig{
			Name: "docroot", Source: src, TwoWay: true, VerifyInterval: ptr(time.Duration(0)), StateDir: state,
			Targets: []lsync.TargetConfig{{Name: peer, Path: dst}},
		}
	}
	ca, cb := job(n.a, "b", n.b, n.stateA), job(n.b, "a", n.a, n.stbB)
	for _, o := range opts {
		o(&ca)
		o(&cb)
	}
	n.toB, n.toA = newFlaky(t, ca.Targets[0]), newFlaky(t, cb.Targets[0])
	fast := lsync.JobOptions{ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond}
	oa, ob := fast, fast
	oa.Node, oa.Registerer = "a", prometheus.NewRegistry()
	ob.Node, ob.Registerer = "b", prometheus.NewRegistry()
	n.jobA = lsynctest.StartJob(t, ca, []lsync.Connector{n.toB}, oa)
	n.jobB = lsynctest.StartJob(t, cb, []lsync.Connector{n.toA}, ob)
	return n
}

// cut takes the link between the nodes down (both directions) or up.
func (n *twoNodes) cut(down bool) {
	n.toB.down.Store(down)
	n.toA.down.Store(down)
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestTwoWayOutageIsAThreeWayMerge: changes made on both nodes while the
// link between them is down are merged against what both last held, not
// by comparing clocks: a deletion on one side propagates (it does not
// come back), a renamed directory ends up renamed on both (not doubled),
// an edit beats a deletion, and two edits of one file both survive — the
// winner at the path, the other as a conflict copy on both nodes —
// whatever the nodes' clocks say.
func TestTwoWayOutageIsAThreeWayMerge(t *testing.T) {
	n := startTwoNodes(t)
	for _, f := range []string{"deleted-on-a.txt", "both-edit.txt", "deleted-a-edited-b.txt", "dir/one.txt", "dir/two.txt"} {
		mustWrite(t, n.a, f, "base "+f)
	}
	lsynctest.WaitTreesEqual(t, n.a, n.b, waitLimit)
	time.Sleep(300 * time.Millisecond) // both jobs have recorded the base

	n.cut(true) // every operation fails from now on, like a dead link
	must(t, os.Remove(filepath.Join(n.a, "deleted-on-a.txt")))
	must(t, os.Rename(filepath.Join(n.a, "dir"), filepath.Join(n.a, "renamed-dir")))
	must(t, os.Remove(filepath.Join(n.a, "deleted-a-edited-b.txt")))
	mustWrite(t, n.b, "deleted-a-edited-b.txt", "edited on b during the outage")
	// Two edits of one file; node b's clock runs an hour behind, so its
	// (later) edit carries the older mtime.
	lsynctest.WriteFile(t, n.a, "both-edit.txt", "edited on a", 0o644, time.Now().Add(-time.Minute))
	lsynctest.WriteFile(t, n.b, "both-edit.txt", "edited on b, whose clock is behind", 0o644, time.Now().Add(-time.Hour))
	mustWrite(t, n.b, "new-on-b.txt", "b")
	time.Sleep(200 * time.Millisecond)
	n.cut(false)

	lsynctest.WaitTreesEqual(t, n.a, n.b, waitLimit, lsynctest.NoModTimes())
	time.Sleep(500 * time.Millisecond)
	lsynctest.AssertTreesEqual(t, n.a, n.b, lsynctest.NoModTimes())
	for _, gone := range []string{"deleted-on-a.txt", "dir"} {
		if _, err := os.Lstat(filepath.Join(n.a, gone)); err == nil {
			t.Errorf("%s came back", gone)
		}
	}
	if got := readFile(t, filepath.Join(n.a, "renamed-dir", "two.txt")); got != "base dir/two.txt" {
		t.Errorf("renamed-dir/two.txt = %q", got)
	}
	if got := readFile(t, filepath.Join(n.a, "deleted-a-edited-b.txt")); got != "edited on b during the outage" {
		t.Errorf("the edit lost to a deletion: %q", got)
	}
	// Both edits survive: a's is newer (b's clock is behind).
	if got := readFile(t, filepath.Join(n.a, "both-edit.txt")); got != "edited on a" {
		t.Errorf("both-edit.txt = %q, want a's (newer) edit", got)
	}
	copies, _ := filepath.Glob(filepath.Join(n.a, "both-edit.sync-conflict-*-b.txt"))
	if len(copies) != 1 || readFile(t, copies[0]) != "edited on b, whose clock is behind" {
		t.Errorf("conflict copy of b's edit: %v", copies)
	}
	if got := readFile(t, filepath.Join(n.b, "new-on-b.txt")); got != "b" {
		t.Errorf("new-on-b.txt = %q", got)
	}
	if st := statusOf(n.jobA, "b"); st.StatePath == "" || st.StateEntries == 0 {
		t.Errorf("status shows no sync state: %+v", st)
	}
}

// TestTwoWayChecksumTellsSameStampedEditsApart: two different edits of
// one size carrying the same mtime (saved within one tick of the file
// clock) pass for one version by their metadata; with checksum: true both
// survive, the node name sorting first at the path.
func TestTwoWayChecksumTellsSameStampedEditsApart(t *testing.T) {
	n := startTwoNodes(t, func(c *lsync.JobConfig) { c.Checksum = true })
	mustWrite(t, n.a, "page.html", "base")
	lsynctest.WaitTreesEqual(t, n.a, n.b, waitLimit)
	time.Sleep(300 * time.Millisecond) // both jobs have recorded the base

	n.cut(true)
	stamp := time.Now().Truncate(time.Second)
	lsynctest.WriteFile(t, n.a, "page.html", "edit by a", 0o644, stamp)
	lsynctest.WriteFile(t, n.b, "page.html", "edit by b", 0o644, stamp)
	time.Sleep(200 * time.Millisecond)
	n.cut(false)

	lsynctest.WaitTreesEqual(t, n.a, n.b, waitLimit)
	if got := readFile(t, filepath.Join(n.a, "page.html")); got != "edit by a" {
		t.Errorf("page.html = %q, want a's edit (a sorts first)", got)
	}
	copies, _ := filepath.Glob(filepath.Join(n.a, "page.sync-conflict-*-b.html"))
	if len(copies) != 1 || readFile(t, copies[0]) != "edit by b" {
		t.Errorf("conflict copy of b's edit: %v", copies)
	}
}

// TestConflictName follows Syncthing's convention.
func TestConflictName(t *testing.T) {
	at := time.Date(2026, 12, 3, 9, 8, 7, 0, time.UTC)
	for rel, want := range map[string]string{
		"a/b/report.pdf": "a/b/report.sync-conflict-20261203-090807-web2.pdf",
		"README":         "README.sync-conflict-20261203-090807-web2",
		".htaccess":      ".htaccess.sync-conflict-20261203-090807-web2",
		"x.tar.gz":       "x.tar.sync-conflict-20261203-090807-web2.gz",
	} {
		if got := lsync.ConflictName(rel, "web2", at); got != want {
			t.Errorf("ConflictName(%q) = %q, want %q", rel, got, want)
		}
	}
	if !strings.Contains(lsync.ConflictName("f", "n", at.In(time.FixedZone("x", 3600))), "090807") {
		t.Error("conflict names are not in UTC")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestTwoWayTornLandingIsNotAnEdit: a host that loses power moments after
// a file landed can come back with the file's rename and mtime on disk
// but not its data (an empty file with the landed version's exact
// mtime). That is no edit of the user's: it must not replace the good
// copy on the other node, and the other node puts its version back.
func TestTwoWayTornLandingIsNotAnEdit(t *testing.T) {
	n := startTwoNodes(t)
	mustWrite(t, n.a, "uploads/photo.jpg", "the photo's bytes")
	mustWrite(t, n.a, "edited.txt", "base")
	mustWrite(t, n.a, "app.log", "line 1\n")
	lsynctest.WaitTreesEqual(t, n.a, n.b, waitLimit)
	time.Sleep(300 * time.Millisecond) // both jobs have recorded the base

	n.cut(true)
	// Not torn: on a, where app.log's version was made, a second write
	// within the same tick of the file clock keeps the mtime; it is an
	// edit, and b gets it.
	logPath := filepath.Join(n.a, "app.log")
	fi, err := os.Stat(logPath)
	must(t, err)
	f, err := os.OpenFile(logPath, os.O_APPEND|os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteString("line 2\n")
	must(t, err)
	must(t, f.Close())
	must(t, os.Chtimes(logPath, fi.ModTime(), fi.ModTime()))
	// The crash on b: its copies lost their data, kept their mtimes.
	for _, f := range []string{"uploads/photo.jpg", "edited.txt"} {
		p := filepath.Join(n.b, f)
		fi, err := os.Stat(p)
		must(t, err)
		must(t, os.Truncate(p, 0))
		must(t, os.Chtimes(p, fi.ModTime(), fi.ModTime()))
	}
	// Meanwhile a's user edits one of them: the edit wins as usual.
	lsynctest.WriteFile(t, n.a, "edited.txt", "edited on a", 0o644, time.Now().Add(time.Second))
	time.Sleep(200 * time.Millisecond)
	n.cut(false)

	lsynctest.WaitTreesEqual(t, n.a, n.b, waitLimit)
	time.Sleep(500 * time.Millisecond)
	lsynctest.AssertTreesEqual(t, n.a, n.b)
	if got := readFile(t, filepath.Join(n.a, "uploads/photo.jpg")); got != "the photo's bytes" {
		t.Errorf("a's photo.jpg = %q: the torn copy replaced the good one", got)
	}
	if got := readFile(t, filepath.Join(n.b, "app.log")); got != "line 1\nline 2\n" {
		t.Errorf("b's app.log = %q: a same-tick write on the node that made the version was taken for a torn file", got)
	}
	if got := readFile(t, filepath.Join(n.b, "edited.txt")); got != "edited on a" {
		t.Errorf("b's edited.txt = %q", got)
	}
	if copies, _ := filepath.Glob(filepath.Join(n.a, "*.sync-conflict-*")); len(copies) != 0 {
		t.Errorf("conflict copies of a torn file: %v", copies)
	}
}
