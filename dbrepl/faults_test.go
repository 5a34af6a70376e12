package dbrepl_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl"
)

// Wrong password, a missing grant and a dead port each give a clear error
// for that node only; the supervisor keeps running and watching the other
// node, and never leaks a password.
func TestBadCredentialsPrivilegesAndDeadPort(t *testing.T) {
	p := startPair(t)
	ctx := context.Background()
	for _, n := range p.Nodes {
		c, err := n.DB.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{
			"SET SESSION sql_log_bin=0",
			"CREATE USER 'weak'@'%' IDENTIFIED BY 'weakpw-secret'",
			"GRANT BINLOG MONITOR ON *.* TO 'weak'@'%'",
			"GRANT CREATE, INSERT, UPDATE, SELECT, DELETE ON lockstep.* TO 'weak'@'%'",
		} {
			if _, err := c.ExecContext(ctx, s); err != nil {
				t.Fatal(err)
			}
		}
		c.Close()
	}
	db1, db2 := p.Nodes[0], p.Nodes[1]
	goroutines := runtime.NumGoroutine()
	cfg := testConfig(p, t.TempDir())
	cfg.Nodes[0].DSN = fmt.Sprintf("weak:weakpw-secret@tcp(%s)/", db1.Addr())
	cfg.Nodes[1].DSN = fmt.Sprintf("lockstep:wrong-secret@tcp(%s)/", db2.Addr())
	h := supervise(t, p, cfg)
	st := h.waitFor(10*time.Second, "both nodes report errors", func(st dbrepl.PairStatus) bool {
		return node(st, "db1").Error != "" && node(st, "db2").Error != ""
	})
	n1, n2 := node(st, "db1"), node(st, "db2")
	if !n1.Reachable || !strings.Contains(n1.Error, "missing privilege SLAVE MONITOR") || !strings.Contains(n1.Error, "db1") {
		t.Errorf("db1 (no SLAVE MONITOR): reachable=%v error=%q", n1.Reachable, n1.Error)
	}
	if !strings.Contains(n2.Error, "access denied") || !strings.Contains(n2.Error, "db2") {
		t.Errorf("db2 (wrong password): %q", n2.Error)
	}
	b, _ := json.Marshal(st)
	for _, secret := range []string{"weakpw-secret", "wrong-secret", p.MonitorPassword} {
		if strings.Contains(string(b), secret) {
			t.Errorf("status leaks a password: %s", b)
		}
	}
	if len(h.eventsOf(dbrepl.EventFence, "")) != 0 || readOnly(t, db1) || readOnly(t, db2) {
		t.Error("fenced on credential errors")
	}
	h.stop()
	// A stopped supervisor leaves no goroutine behind.
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > goroutines; {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after stop, %d before:\n%s", runtime.NumGoroutine(), goroutines, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A dead port: db2 unreachable, db1 fully observed.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	cfg = testConfig(p, t.TempDir())
	cfg.Nodes[1].DSN = fmt.Sprintf("lockstep:%s@tcp(%s)/", p.MonitorPassword, dead)
	h = supervise(t, p, cfg)
	st = h.waitFor(10*time.Second, "db1 observed, db2 unreachable", func(st dbrepl.PairStatus) bool {
		n1 := node(st, "db1")
		return n1.Reachable && n1.Error == "" && n1.GTIDBinlogPos != "" && !node(st, "db2").Reachable
	})
	if e := node(st, "db2").Error; !strings.Contains(e, "db2") || !strings.Contains(e, "refused") {
		t.Errorf("dead port error %q", e)
	}
	if node(st, "db1").LagSeconds != nil {
		t.Error("db1 lag reported although its peer cannot be read")
	}
	if st.Verdict != dbrepl.VerdictBroken {
		t.Errorf("verdict %q", st.Verdict)
	}
}

// Hooks get the event in their environment, a hanging hook is killed at
// its timeout without stalling the poll loop, and kill_connections ends
// client sessions (but not replication) on fence.
func TestFenceHooksAndKillConnections(t *testing.T) {
	p := startPair(t)
	createTable(t, p, "app.t")
	db1, db2 := p.Nodes[0], p.Nodes[1]
	dir := t.TempDir()
	logFile := filepath.Join(dir, "hook.log")
	onFence := filepath.Join(dir, "on-fence")
	onUnfence := filepath.Join(dir, "on-unfence")
	if err := os.WriteFile(onFence, []byte("#!/bin/sh\nenv | grep ^LOCKSTEP_ | sort >> "+logFile+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Hangs far past its timeout.
	if err := os.WriteFile(onUnfence, []byte("#!/bin/sh\necho unfence-start >> "+logFile+"\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(p, filepath.Join(dir, "state"))
	cfg.Hooks.OnFence, cfg.Hooks.OnUnfence, cfg.Hooks.Timeout = onFence, onUnfence, 500*time.Millisecond
	cfg.Fence.KillConnections = true
	h := superviseHealthy(t, p, cfg)
	ctx := context.Background()

	client, err := db2.DB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var clientID int64
	if err := client.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&clientID); err != nil {
		t.Fatal(err)
	}
	if err := db2.StopSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	startWriter(t, db1, "app.t", 20*time.Millisecond)
	h.waitFor(15*time.Second, "db2 fenced", func(st dbrepl.PairStatus) bool { return node(st, "db2").Fenced })

	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(logFile)
		if strings.Contains(string(b), "LOCKSTEP_EVENT=fence") {
			for _, want := range []string{"LOCKSTEP_NODE=db2", "LOCKSTEP_PEER=db1", "LOCKSTEP_MANUAL=false", "LOCKSTEP_REASON="} {
				if !strings.Contains(string(b), want) {
					t.Errorf("hook env lacks %s:\n%s", want, b)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("on_fence hook did not run; log: %q", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var n int
	if err := db2.DB.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID=?", clientID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Error("client session survived the fence with kill_connections")
	}
	if st, err := db2.Replication(ctx); err != nil || st.IORunning != "Yes" {
		t.Errorf("replication IO thread killed by the fence: %+v %v", st, err)
	}

	if err := db2.StartSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	h.waitFor(20*time.Second, "db2 reintroduced", func(st dbrepl.PairStatus) bool { return !node(st, "db2").Fenced })
	// The poll loop keeps running while the hanging hook waits for its
	// timeout: status timestamps advance.
	t0 := h.sup.Status().GeneratedAt
	time.Sleep(5 * testInterval)
	if !h.sup.Status().GeneratedAt.After(t0) {
		t.Fatal("poll loop stalled behind the hook")
	}
	b, _ := os.ReadFile(logFile)
	if !strings.Contains(string(b), "unfence-start") {
		t.Errorf("on_unfence did not start: %q", b)
	}
}
