package dbrepl_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
)

// neverBothReadOnly fails the test when both nodes are read-only.
func neverBothReadOnly(t *testing.T, p *mariadbpair.Pair) {
	t.Helper()
	if readOnly(t, p.Nodes[0]) && readOnly(t, p.Nodes[1]) {
		t.Fatal("both nodes read-only: no writable database left")
	}
}

// An inactive supervisor observes but never fences on lag; once told it is
// active it fences. The other (inactive) supervisor mirrors the fence in its
// status without acting. Handing the role over while the fenced node has
// caught up: the old decider no longer reintroduces it, the new one does,
// after unfence_hold counted from its activation.
func TestOnlyActiveSupervisorFences(t *testing.T) {
	p := startPair(t)
	createTable(t, p, "app.t")
	db1, db2 := p.Nodes[0], p.Nodes[1]
	h1 := supervise(t, p, testConfig(p, t.TempDir()))
	h2 := supervise(t, p, testConfig(p, t.TempDir()))
	h1.sup.SetActive(false)
	h2.sup.SetActive(false)
	if h1.sup.Active() || h2.sup.Active() {
		t.Fatal("SetActive(false) not reflected by Active")
	}
	for _, h := range []*harness{h1, h2} {
		h.waitFor(20*time.Second, "healthy pair", healthy)
		h.waitFor(5*time.Second, "status says observer", func(st dbrepl.PairStatus) bool { return st.Observer })
		if got := metric(t, h, "lockstep_repl_active", ""); got != 0 {
			t.Errorf("lockstep_repl_active=%v while inactive", got)
		}
	}
	ctx := context.Background()
	if err := db2.StopSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	w := startWriter(t, db1, "app.t", 20*time.Millisecond)

	// Well over max_lag on both supervisors' view, and still writable.
	overLag := func(st dbrepl.PairStatus) bool {
		l := node(st, "db2").LagSeconds
		return l != nil && *l > 2*testMaxLag.Seconds()
	}
	h1.waitFor(15*time.Second, "db2 lag over 2×max_lag (h1)", overLag)
	h2.waitFor(5*time.Second, "db2 lag over 2×max_lag (h2)", overLag)
	time.Sleep(3 * testInterval)
	if readOnly(t, db2) || readOnly(t, db1) {
		t.Fatal("an inactive supervisor changed read_only")
	}
	for i, h := range []*harness{h1, h2} {
		if n := len(h.eventsOf(dbrepl.EventFence, "")); n != 0 {
			t.Fatalf("inactive supervisor %d emitted %d fence events", i+1, n)
		}
		if node(h.sup.Status(), "db2").Fenced {
			t.Fatalf("inactive supervisor %d reports db2 fenced while it is writable", i+1)
		}
	}

	activated := time.Now()
	h1.sup.SetActive(true)
	for !readOnly(t, db2) {
		neverBothReadOnly(t, p)
		if time.Since(activated) > 10*time.Second {
			t.Fatalf("active supervisor did not fence db2: %s", describe(h1.sup.Status()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("db2 fenced %s after activation", time.Since(activated).Round(time.Millisecond))
	if got := metric(t, h1, "lockstep_repl_active", ""); got != 1 {
		t.Errorf("lockstep_repl_active=%v after SetActive(true)", got)
	}
	h1.waitFor(5*time.Second, "status no longer observer", func(st dbrepl.PairStatus) bool { return !st.Observer })
	st2 := h2.waitFor(5*time.Second, "h2 mirrors db2's fence", func(st dbrepl.PairStatus) bool { return node(st, "db2").Fenced })
	if r := node(st2, "db2").FenceReason; !strings.Contains(r, "active supervisor") {
		t.Errorf("mirrored fence reason %q does not name the active supervisor", r)
	}
	if got := metric(t, h1, "lockstep_repl_fences_total", ""); got != 1 {
		t.Errorf("active supervisor fences_total=%v, want 1", got)
	}
	if got := metric(t, h2, "lockstep_repl_fences_total", ""); got != 0 {
		t.Errorf("inactive supervisor fences_total=%v, want 0", got)
	}

	// Hand over: h1 steps down, db2 catches up, nobody reintroduces it.
	h1.sup.SetActive(false)
	if err := db2.StartSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	w.stop()
	caughtUp := func(st dbrepl.PairStatus) bool {
		l := node(st, "db2").LagSeconds
		return l != nil && *l < 0.3 && node(st, "db2").SQLRunning
	}
	h2.waitFor(20*time.Second, "db2 caught up", caughtUp)
	time.Sleep(3 * testHold)
	if !readOnly(t, db2) {
		t.Fatal("db2 reintroduced although no supervisor is active")
	}
	for i, h := range []*harness{h1, h2} {
		if !node(h.sup.Status(), "db2").Fenced {
			t.Fatalf("supervisor %d forgot db2's fence while inactive", i+1)
		}
	}

	activated = time.Now()
	h2.sup.SetActive(true)
	for readOnly(t, db2) {
		neverBothReadOnly(t, p)
		if time.Since(activated) > 15*time.Second {
			t.Fatalf("newly active supervisor did not reintroduce db2: %s", describe(h2.sup.Status()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(activated)
	t.Logf("db2 reintroduced %s after the hand-over (unfence_hold %s)", took.Round(time.Millisecond), testHold)
	if took < testHold {
		t.Errorf("reintroduced %s after activation; unfence_hold %s must count from activation", took, testHold)
	}
	h1.waitFor(5*time.Second, "h1 accepts the reintroduction", func(st dbrepl.PairStatus) bool { return !node(st, "db2").Fenced })
	if n := len(h1.eventsOf(dbrepl.EventUnfence, "db2")); n != 1 {
		t.Errorf("h1 unfence events for db2: %d, want 1", n)
	}
	for i, h := range []*harness{h1, h2} {
		if n := len(h.eventsOf(dbrepl.EventRefence, "")); n != 0 {
			t.Errorf("supervisor %d re-fenced %d times", i+1, n)
		}
		if n := len(h.eventsOf(dbrepl.EventFence, "db1")); n != 0 {
			t.Errorf("supervisor %d fenced db1", i+1)
		}
	}
}

// Replication broken both ways makes both nodes qualify in the same few
// polls, the case where two deciders could each fence a different node.
// With one active supervisor exactly one node is read-only throughout, and
// the inactive one never changes read_only.
func TestOneActiveSupervisorBothBrokenKeepsOneWritable(t *testing.T) {
	p := startPair(t)
	createTable(t, p, "app.t")
	db1, db2 := p.Nodes[0], p.Nodes[1]
	active := supervise(t, p, testConfig(p, t.TempDir()))
	observer := supervise(t, p, testConfig(p, t.TempDir()))
	observer.sup.SetActive(false)
	for _, h := range []*harness{active, observer} {
		h.waitFor(20*time.Second, "healthy pair", healthy)
	}
	ctx := context.Background()
	for _, n := range p.Nodes {
		if err := n.StopSQLThread(ctx); err != nil {
			t.Fatal(err)
		}
	}
	startWriter(t, db1, "app.t", 10*time.Millisecond)
	startWriter(t, db2, "app.t", 10*time.Millisecond)
	for !readOnly(t, db1) && !readOnly(t, db2) {
		time.Sleep(20 * time.Millisecond)
		if st := active.sup.Status(); node(st, "db1").LagSeconds != nil && *node(st, "db1").LagSeconds > 10*testMaxLag.Seconds() {
			t.Fatalf("nothing fenced: %s", describe(st))
		}
	}
	deadline := time.Now().Add(3 * testMaxLag)
	for time.Now().Before(deadline) {
		ro1, ro2 := readOnly(t, db1), readOnly(t, db2)
		if ro1 == ro2 {
			t.Fatalf("read_only db1=%v db2=%v, want exactly one writable; %s", ro1, ro2, describe(active.sup.Status()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	fenced := "db2"
	if readOnly(t, db1) {
		fenced = "db1"
	}
	observer.waitFor(5*time.Second, "observer mirrors the fence", func(st dbrepl.PairStatus) bool { return node(st, fenced).Fenced })
	if got := metric(t, observer, "lockstep_repl_fences_total", ""); got != 0 {
		t.Errorf("inactive supervisor fences_total=%v, want 0", got)
	}
	for _, ev := range observer.eventsOf(dbrepl.EventFence, "") {
		if ev.Node != fenced || !strings.Contains(ev.Reason, "active supervisor") {
			t.Errorf("inactive supervisor fence event not a mirror of the active one's: %+v", ev)
		}
	}
	if n := len(observer.eventsOf(dbrepl.EventSkipped, "")); n != 0 {
		t.Errorf("inactive supervisor emitted %d fence_skipped events", n)
	}
	if n := len(active.eventsOf(dbrepl.EventFence, "")); n != 1 {
		t.Errorf("active supervisor fenced %d times, want 1", n)
	}
}
