package dbrepl_test

import (
	"context"
	"database/sql"
	"math"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/dbrepl/conflict"
	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
)

// globalStatus reads a SHOW GLOBAL STATUS counter.
func globalStatus(t *testing.T, db *sql.DB, name string) float64 {
	t.Helper()
	var k string
	var v float64
	if err := db.QueryRow("SHOW GLOBAL STATUS LIKE ?", name).Scan(&k, &v); err != nil {
		t.Fatalf("SHOW GLOBAL STATUS LIKE %s: %v", name, err)
	}
	return v
}

// binlogSeq is the node's sequence number in its own GTID domain: on an
// idle pair, the count of heartbeat transactions it wrote.
func binlogSeq(t *testing.T, n *mariadbpair.Node) uint64 {
	t.Helper()
	var pos string
	var domain uint32
	if err := n.DB.QueryRow("SELECT @@gtid_binlog_pos, @@gtid_domain_id").Scan(&pos, &domain); err != nil {
		t.Fatal(err)
	}
	return dbrepl.MariaDBAppliedIn(pos, domain)
}

// Issue 17: at the defaults, watching an idle pair costs each node at most
// 5 statements and 1 heartbeat write a second, and the lag stays within
// 0.2 s of the truth between polls (followed on the binlog streams).
func TestWatchingCost(t *testing.T) {
	p := startPair(t)
	cfg := testConfig(p, t.TempDir())
	cfg.Interval = dbrepl.DefaultInterval
	cfg.Fence.MaxLag = 3 * time.Second
	cfg.Fence.UnfenceLag = 500 * time.Millisecond
	src, err := conflict.SourcesFrom(cfg)
	if err != nil {
		t.Fatal(err)
	}
	det, err := conflict.New(cfg.Conflicts, src, nil, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	h := superviseWith(t, p, cfg, det)
	h.waitFor(30*time.Second, "healthy pair", healthy)
	time.Sleep(2 * time.Second) // past the start-up statements

	const window = 10 * time.Second
	var q0, s0 [2]float64
	for i, n := range p.Nodes {
		q0[i] = globalStatus(t, n.DB, "Questions")
		s0[i] = float64(binlogSeq(t, n))
	}
	time.Sleep(window)
	for i, n := range p.Nodes {
		// Our own reads (the status read, the GTID read) are subtracted.
		q := (globalStatus(t, n.DB, "Questions") - q0[i] - 2) / window.Seconds()
		w := (float64(binlogSeq(t, n)) - s0[i]) / window.Seconds()
		t.Logf("%s: %.2f statements/s, %.2f heartbeat writes/s", n.Name, q, w)
		if q > 5 {
			t.Errorf("%s: %.2f statements/s while watching, goal ≤ 5", n.Name, q)
		}
		if w > 1.1 {
			t.Errorf("%s: %.2f heartbeat writes/s, goal ≤ 1", n.Name, w)
		}
	}

	// db2's applier stops at T: its true lag at t is t − T. Read between
	// polls, the supervisor's figure stays within 0.2 s of it.
	db1, db2 := p.Nodes[0], p.Nodes[1]
	ctx := context.Background()
	for _, q := range []string{"CREATE DATABASE watchcost", "CREATE TABLE watchcost.ticks (id INT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6))"} {
		if _, err := db1.DB.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	wctx, stopWriter := context.WithCancel(ctx)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-tk.C:
				_, _ = db1.DB.ExecContext(wctx, "INSERT INTO watchcost.ticks (at) VALUES (NOW(6))")
			}
		}
	}()
	defer func() { stopWriter(); <-writerDone }()
	if err := db2.WaitReplicating(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	t0 := time.Now()
	if err := db2.StopSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	tStop := t0.Add(time.Since(t0) / 2)
	var worst float64
	for _, after := range []time.Duration{700 * time.Millisecond, 1300 * time.Millisecond, 2100 * time.Millisecond} {
		time.Sleep(time.Until(tStop.Add(after)))
		st := h.sup.Status()
		at := time.Now()
		got := st.Nodes[1].LagSeconds
		if got == nil {
			t.Fatalf("lag of db2 unknown %s after its applier stopped", after)
		}
		e := *got - at.Sub(tStop).Seconds()
		t.Logf("%s after the stop: lag %.3fs, error %+.3fs", after, *got, e)
		worst = max(worst, math.Abs(e))
		// The gauge is brought up to date when scraped.
		g, at := gatheredLag(t, h, "db2"), time.Now()
		if e := g - at.Sub(tStop).Seconds(); math.Abs(e) > 0.1 {
			t.Errorf("%s after the stop: scraped lag %.3fs, error %+.3fs, want within 0.1s", after, g, e)
		}
	}
	if worst > 0.2 {
		t.Errorf("lag error up to %.3fs, goal ≤ 0.2s", worst)
	}
	// Crossing max_lag polls at once: the fence follows within 0.5 s.
	crossing := tStop.Add(cfg.Fence.MaxLag)
	deadline := crossing.Add(5 * time.Second)
	for !readOnly(t, db2) {
		if time.Now().After(deadline) {
			t.Fatalf("db2 not fenced 5 s after crossing max_lag")
		}
		time.Sleep(5 * time.Millisecond)
	}
	delay := time.Since(crossing)
	t.Logf("fenced %s after crossing max_lag", delay.Round(time.Millisecond))
	if delay > 500*time.Millisecond {
		t.Errorf("fenced %s after crossing max_lag at a 1 s interval, goal ≤ 0.5 s", delay)
	}
	if err := db2.StartSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
}

// gatheredLag scrapes lockstep_repl_lag_seconds of node from the
// supervisor's registry.
func gatheredLag(t *testing.T, h *harness, node string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "lockstep_repl_lag_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "node" && l.GetValue() == node {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("lockstep_repl_lag_seconds{node=%q} not gathered", node)
	return 0
}
