package dbrepl_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl"
)

// Stop db2's applier while db1 takes writes: db2 is fenced within
// max_lag + 2 intervals of its lag crossing max_lag, db1 never; once the
// applier runs again db2 is reintroduced after the hold.
func TestSQLThreadStoppedFencesLaggingNode(t *testing.T) {
	p := startPair(t)
	createTable(t, p, "app.t")
	db1, db2 := p.Nodes[0], p.Nodes[1]
	h := superviseHealthy(t, p, testConfig(p, t.TempDir()))

	ctx := context.Background()
	if err := db2.StopSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	w := startWriter(t, db1, "app.t", 20*time.Millisecond)

	st := h.waitFor(15*time.Second, "db2 fenced", func(st dbrepl.PairStatus) bool { return node(st, "db2").Fenced })
	fencedAfter := time.Since(stoppedAt)
	// Heartbeats committed after the stop are the first missing ones, so
	// the lag crosses max_lag about max_lag after the stop.
	if limit := testMaxLag + 2*testInterval + 300*time.Millisecond; fencedAfter > limit+testMaxLag/2 {
		t.Errorf("fenced %s after the stop; want within about max_lag + 2 intervals (%s)", fencedAfter, limit)
	}
	t.Logf("db2 fenced %s after its SQL thread stopped (max_lag %s)", fencedAfter.Round(time.Millisecond), testMaxLag)
	n2 := node(st, "db2")
	if !strings.Contains(n2.FenceReason, "max_lag") {
		t.Errorf("fence reason %q does not mention max_lag", n2.FenceReason)
	}
	if !readOnly(t, db2) {
		t.Fatal("db2 fenced but read_only is OFF")
	}
	if readOnly(t, db1) {
		t.Fatal("db1 is read-only")
	}
	if st.Verdict != dbrepl.VerdictFenced || st.FencedNode != "db2" {
		t.Errorf("verdict %q fenced %q, want fenced db2", st.Verdict, st.FencedNode)
	}
	if got := metric(t, h, "lockstep_repl_fenced", "db2"); got != 1 {
		t.Errorf("lockstep_repl_fenced{db2}=%v", got)
	}
	if got := metric(t, h, "lockstep_repl_fences_total", ""); got != 1 {
		t.Errorf("lockstep_repl_fences_total=%v", got)
	}
	// Stays fenced while the thread is stopped (no flapping).
	time.Sleep(2 * testHold)
	if !node(h.sup.Status(), "db2").Fenced {
		t.Fatal("db2 unfenced while its SQL thread is still stopped")
	}

	if err := db2.StartSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	h.waitFor(20*time.Second, "db2 reintroduced", func(st dbrepl.PairStatus) bool {
		return !node(st, "db2").Fenced && node(st, "db2").Writable
	})
	if d := time.Since(restarted); d < testHold {
		t.Errorf("db2 unfenced %s after catching up; hold is %s", d, testHold)
	}
	w.stop()
	if w.err != nil {
		t.Errorf("writer on db1 failed: %v", w.err)
	}
	if len(h.eventsOf(dbrepl.EventFence, "db1")) != 0 {
		t.Error("db1 was fenced")
	}
	if n := len(h.eventsOf(dbrepl.EventFence, "db2")); n != 1 {
		t.Errorf("db2 fenced %d times, want 1", n)
	}
	if n := len(h.eventsOf(dbrepl.EventUnfence, "db2")); n != 1 {
		t.Errorf("db2 unfenced %d times, want 1", n)
	}
	if readOnly(t, db2) {
		t.Error("db2 still read-only after unfence")
	}
}

// A stopped IO thread leaves Seconds_Behind_Master NULL (or 0), but the
// heartbeat lag still grows and db2 is fenced.
func TestIOThreadStoppedFencesByHeartbeat(t *testing.T) {
	p := startPair(t)
	db2 := p.Nodes[1]
	h := superviseHealthy(t, p, testConfig(p, t.TempDir()))
	if err := db2.StopIOThread(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := h.waitFor(15*time.Second, "db2 fenced", func(st dbrepl.PairStatus) bool { return node(st, "db2").Fenced })
	n2 := node(st, "db2")
	if n2.IORunning || !strings.Contains(n2.FenceReason, "io=No") {
		t.Errorf("db2 io_running=%v reason=%q", n2.IORunning, n2.FenceReason)
	}
	if n2.SecondsBehindMaster != nil && *n2.SecondsBehindMaster > 0 {
		t.Logf("Seconds_Behind_Master=%d", *n2.SecondsBehindMaster)
	}
	if n2.LagSeconds == nil || *n2.LagSeconds < testMaxLag.Seconds() {
		t.Errorf("lag %v, want over max_lag", n2.LagSeconds)
	}
	if node(st, "db1").Fenced || readOnly(t, p.Nodes[0]) {
		t.Error("db1 fenced")
	}
}

// A row inserted on db2 outside the binlog, then the same key on db1:
// db2's applier stops on 1062, and db2 is fenced at once with the error
// and the failing GTID.
func TestDuplicateKeyErrorFencesWithGTID(t *testing.T) {
	p := startPair(t)
	createTable(t, p, "app.dup")
	db1, db2 := p.Nodes[0], p.Nodes[1]
	h := superviseHealthy(t, p, testConfig(p, t.TempDir()))
	ctx := context.Background()

	c2, err := db2.DB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"SET SESSION sql_log_bin=0", "INSERT INTO app.dup (id, v) VALUES (1001, 'db2 only')", "SET SESSION sql_log_bin=1"} {
		if _, err := c2.ExecContext(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	c2.Close()
	c1, err := db1.DB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c1.ExecContext(ctx, "INSERT INTO app.dup (id, v) VALUES (1001, 'db1')"); err != nil {
		t.Fatal(err)
	}
	var gtid string
	if err := c1.QueryRowContext(ctx, "SELECT @@SESSION.last_gtid").Scan(&gtid); err != nil {
		t.Fatal(err)
	}
	c1.Close()
	inserted := time.Now()

	st := h.waitFor(15*time.Second, "db2 fenced on 1062", func(st dbrepl.PairStatus) bool { return node(st, "db2").Fenced })
	t.Logf("db2 fenced %s after the conflicting insert", time.Since(inserted).Round(time.Millisecond))
	n2 := node(st, "db2")
	if n2.LastErrno != 1062 {
		t.Errorf("last_errno %d (%q), want 1062", n2.LastErrno, n2.LastError)
	}
	if n2.LastErrorGTID != gtid {
		t.Errorf("failing GTID %q, want %q (db1's insert)", n2.LastErrorGTID, gtid)
	}
	if !strings.Contains(n2.FenceReason, "1062") || !strings.Contains(n2.FenceReason, gtid) {
		t.Errorf("fence reason %q lacks error code or GTID %s", n2.FenceReason, gtid)
	}
	if time.Since(inserted) > testMaxLag {
		t.Errorf("a broken applier should fence at once, not after max_lag: %s", time.Since(inserted))
	}
	if !readOnly(t, db2) || readOnly(t, db1) {
		t.Error("want db2 read-only and db1 writable")
	}
	if node(st, "db2").SQLRunning {
		t.Error("db2 sql_running reported true")
	}
}

// Kill db2's server: it is reported unreachable and db1 stays writable
// (never fenced); after a restart db2 catches up and ends unfenced.
func TestNodeDownKeepsPeerWritable(t *testing.T) {
	p := startPair(t)
	createTable(t, p, "app.t")
	db1, db2 := p.Nodes[0], p.Nodes[1]
	h := superviseHealthy(t, p, testConfig(p, t.TempDir()))
	w := startWriter(t, db1, "app.t", 20*time.Millisecond)

	if err := db2.Kill(); err != nil {
		t.Fatal(err)
	}
	st := h.waitFor(10*time.Second, "db2 unreachable", func(st dbrepl.PairStatus) bool { return !node(st, "db2").Reachable })
	if e := node(st, "db2").Error; e == "" {
		t.Error("unreachable db2 has no error text")
	}
	if st.Verdict != dbrepl.VerdictBroken {
		t.Errorf("verdict %q with db2 down, want broken", st.Verdict)
	}
	time.Sleep(3 * testMaxLag) // well past max_lag: db1 must not be fenced
	st = h.sup.Status()
	if n1 := node(st, "db1"); !n1.Writable || n1.Fenced || readOnly(t, db1) {
		t.Fatalf("db1 not writable while db2 is down: %s", describe(st))
	}
	if len(h.eventsOf(dbrepl.EventUnreachable, "db2")) != 1 {
		t.Errorf("want one unreachable event for db2, got %v", h.eventsOf(dbrepl.EventUnreachable, "db2"))
	}

	if err := db2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.waitFor(30*time.Second, "db2 back, caught up and writable", func(st dbrepl.PairStatus) bool {
		n := node(st, "db2")
		return n.Reachable && !n.Fenced && n.Writable && n.IORunning && n.SQLRunning &&
			n.LagSeconds != nil && *n.LagSeconds < 0.3
	})
	w.stop()
	if err := p.WaitSynced(context.Background(), 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if len(h.eventsOf(dbrepl.EventFence, "db1")) != 0 {
		t.Error("db1 was fenced")
	}
}

// Both directions broken and both nodes behind: exactly one stays writable.
func TestBothDirectionsBrokenKeepsOneWritable(t *testing.T) {
	p := startPair(t)
	createTable(t, p, "app.t")
	db1, db2 := p.Nodes[0], p.Nodes[1]
	h := superviseHealthy(t, p, testConfig(p, t.TempDir()))
	ctx := context.Background()
	for _, n := range p.Nodes {
		if err := n.StopSQLThread(ctx); err != nil {
			t.Fatal(err)
		}
	}
	startWriter(t, db1, "app.t", 10*time.Millisecond)
	startWriter(t, db2, "app.t", 50*time.Millisecond)
	h.waitFor(15*time.Second, "one node fenced", func(st dbrepl.PairStatus) bool {
		return node(st, "db1").Fenced || node(st, "db2").Fenced
	})
	deadline := time.Now().Add(3 * testMaxLag)
	for time.Now().Before(deadline) {
		st := h.sup.Status()
		ro1, ro2 := readOnly(t, db1), readOnly(t, db2)
		if ro1 == ro2 {
			t.Fatalf("read_only db1=%v db2=%v, want exactly one writable; %s", ro1, ro2, describe(st))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Which one is fenced depends on whose lag crosses max_lag first (the
	// choice by transactions applied, when both cross in the same poll, is
	// covered by TestNeverFenceLastWritable); the kept one says why.
	st := h.sup.Status()
	kept := "db1"
	if node(st, "db1").Fenced {
		kept = "db2"
	}
	if node(st, kept).Fenced || !node(st, kept).Writable {
		t.Errorf("%s should be the writable one: %s", kept, describe(st))
	}
	if len(h.eventsOf(dbrepl.EventSkipped, kept)) == 0 {
		t.Errorf("no fence_skipped event explaining why %s stays writable", kept)
	}
	if st.Verdict != dbrepl.VerdictFenced {
		t.Errorf("verdict %q, want fenced", st.Verdict)
	}
}

// A supervisor restarted while db2 is fenced keeps it fenced (from the
// state file) until it has caught up, and fences it again if it shows up
// writable.
func TestRestartedSupervisorKeepsFence(t *testing.T) {
	p := startPair(t)
	createTable(t, p, "app.t")
	db1, db2 := p.Nodes[0], p.Nodes[1]
	stateDir := t.TempDir()
	cfg := testConfig(p, stateDir)
	h := superviseHealthy(t, p, cfg)
	ctx := context.Background()
	if err := db2.StopSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	startWriter(t, db1, "app.t", 20*time.Millisecond)
	h.waitFor(15*time.Second, "db2 fenced", func(st dbrepl.PairStatus) bool { return node(st, "db2").Fenced })
	h.stop()

	h2 := supervise(t, p, cfg)
	h2.waitFor(5*time.Second, "db2 fenced after restart", func(st dbrepl.PairStatus) bool {
		return node(st, "db2").Fenced && node(st, "db2").Reachable
	})
	// Someone (a mariadbd restart with read_only off in its config) makes
	// db2 writable: the supervisor fences it again.
	if _, err := db2.DB.ExecContext(ctx, "SET GLOBAL read_only=OFF"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !readOnly(t, db2) {
		if time.Now().After(deadline) {
			t.Fatal("db2 not fenced again after read_only was switched off behind the supervisor")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(2 * testHold)
	if st := h2.sup.Status(); !node(st, "db2").Fenced || !readOnly(t, db2) {
		t.Fatalf("db2 unfenced while still behind: %s", describe(st))
	}
	if len(h2.eventsOf(dbrepl.EventRefence, "db2")) == 0 {
		t.Error("no refence event")
	}
	if err := db2.StartSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	h2.waitFor(20*time.Second, "db2 reintroduced", func(st dbrepl.PairStatus) bool { return !node(st, "db2").Fenced })
	if readOnly(t, db2) {
		t.Error("db2 read-only after reintroduction")
	}
	if rec, err := (dbrepl.FenceStore{Dir: stateDir}).Load("db2"); err != nil || rec != nil {
		t.Errorf("fence record left after unfence: %+v %v", rec, err)
	}
}

// A manual fence stays while replication is healthy (the automatic
// reintroduction must not lift it) until a manual unfence.
func TestManualFenceSurvivesAutoReintroduction(t *testing.T) {
	// Loose timing: runs alongside the other parallel scenarios.
	t.Parallel()
	p := startPair(t)
	db2 := p.Nodes[1]
	stateDir := t.TempDir()
	cfg := testConfig(p, stateDir)
	h := superviseHealthy(t, p, cfg)
	ctx := context.Background()

	// The CLI path: no access to the running supervisor, only the DB and
	// state_dir.
	if err := dbrepl.ManualFence(ctx, cfg, "db2", "disk replacement", nil); err != nil {
		t.Fatal(err)
	}
	h.waitFor(5*time.Second, "manual fence seen by the supervisor", func(st dbrepl.PairStatus) bool {
		n := node(st, "db2")
		return n.Fenced && n.FenceManual && n.FenceReason == "disk replacement"
	})
	time.Sleep(3 * testHold)
	st := h.sup.Status()
	if n := node(st, "db2"); !n.Fenced || !readOnly(t, db2) {
		t.Fatalf("manual fence lifted automatically: %s", describe(st))
	}
	if st.Verdict != dbrepl.VerdictFenced {
		t.Errorf("verdict %q", st.Verdict)
	}
	if len(h.eventsOf(dbrepl.EventUnfence, "db2")) != 0 {
		t.Error("unfence event while manually fenced")
	}
	if err := dbrepl.ManualUnfence(ctx, cfg, "db2", nil); err != nil {
		t.Fatal(err)
	}
	h.waitFor(5*time.Second, "unfenced", func(st dbrepl.PairStatus) bool {
		return !node(st, "db2").Fenced && node(st, "db2").Writable
	})
	if err := dbrepl.ManualFence(ctx, cfg, "db9", "x", nil); err == nil || !strings.Contains(err.Error(), "db9") {
		t.Errorf("unknown node: %v", err)
	}
	// The API path of a running supervisor.
	if err := h.sup.Fence(ctx, "db1", "api"); err != nil {
		t.Fatal(err)
	}
	if !readOnly(t, p.Nodes[0]) {
		t.Error("db1 not read-only after Fence")
	}
	if err := h.sup.Unfence(ctx, "db1"); err != nil {
		t.Fatal(err)
	}
	if readOnly(t, p.Nodes[0]) {
		t.Error("db1 read-only after Unfence")
	}
}

// Healthy pair under a sustained write load on both nodes: no fence.
func TestHealthyPairUnderLoadNeverFences(t *testing.T) {
	// Loose timing: runs alongside the other parallel scenarios.
	t.Parallel()
	p := startPair(t)
	createTable(t, p, "app.load")
	h := superviseHealthy(t, p, testConfig(p, t.TempDir()))
	var ws []*writer
	for _, n := range p.Nodes {
		for range 2 {
			ws = append(ws, startWriter(t, n, "app.load", 5*time.Millisecond))
		}
	}
	var maxLag float64
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		st := h.sup.Status()
		for _, n := range st.Nodes {
			if n.Fenced || !n.Writable {
				t.Fatalf("fenced under healthy load: %s", describe(st))
			}
			if n.LagSeconds != nil && *n.LagSeconds > maxLag {
				maxLag = *n.LagSeconds
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	total := 0
	for _, w := range ws {
		w.stop()
		if w.err != nil {
			t.Errorf("writer: %v", w.err)
		}
		total += w.n
	}
	t.Logf("%d rows written in 30s on both nodes, max observed lag %.3fs", total, maxLag)
	if n := len(h.eventsOf(dbrepl.EventFence, "")); n != 0 {
		t.Errorf("%d fences under healthy load", n)
	}
	if got := metric(t, h, "lockstep_repl_fences_total", ""); got != 0 {
		t.Errorf("fences_total=%v", got)
	}
}

// The daemon runs a supervisor on each node of the pair. Two supervisors
// (separate state dirs) must agree: db2 fenced, never both read-only, and
// one clean reintroduction without re-fence flapping.
func TestTwoSupervisorsAgree(t *testing.T) {
	p := startPair(t)
	createTable(t, p, "app.t")
	db1, db2 := p.Nodes[0], p.Nodes[1]
	h1 := supervise(t, p, testConfig(p, t.TempDir()))
	h2 := supervise(t, p, testConfig(p, t.TempDir()))
	for _, h := range []*harness{h1, h2} {
		h.waitFor(20*time.Second, "healthy pair", healthy)
	}
	ctx := context.Background()
	if err := db2.StopSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	w := startWriter(t, db1, "app.t", 20*time.Millisecond)
	bothRO := func() {
		if readOnly(t, db1) && readOnly(t, db2) {
			t.Fatalf("both nodes read-only")
		}
	}
	for !readOnly(t, db2) {
		bothRO()
		time.Sleep(20 * time.Millisecond)
	}
	h1.waitFor(5*time.Second, "h1 sees db2 fenced", func(st dbrepl.PairStatus) bool { return node(st, "db2").ReadOnly })
	if err := db2.StartSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		bothRO()
		st1, st2 := h1.sup.Status(), h2.sup.Status()
		if !node(st1, "db2").Fenced && !node(st2, "db2").Fenced && !readOnly(t, db2) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not reintroduced: %s\n%s", describe(st1), describe(st2))
		}
		time.Sleep(20 * time.Millisecond)
	}
	w.stop()
	time.Sleep(3 * testInterval)
	for i, h := range []*harness{h1, h2} {
		if n := len(h.eventsOf(dbrepl.EventRefence, "")); n != 0 {
			t.Errorf("supervisor %d re-fenced %d times", i+1, n)
		}
		if n := len(h.eventsOf(dbrepl.EventFence, "db1")); n != 0 {
			t.Errorf("supervisor %d fenced db1", i+1)
		}
	}
	if readOnly(t, db2) {
		t.Error("db2 read-only at the end")
	}
}
