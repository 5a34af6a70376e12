package orchestrator

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// isolate cuts a off from b and from its witness.
func isolate(tc *testCluster) {
	tc.relays["a->b"].cut.Store(true)
	tc.relays["b->a"].cut.Store(true)
	tc.nodes["a"].witness.stop()
}

func (r *testRepl) setFenceErr(err error, clearOnKill bool, killErr error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fenceErr, r.clearOnKill, r.killErr = err, clearOnKill, killErr
}

// TestSelfFenceRetriesThenKillsClients: read_only is refused (a long
// transaction holds a lock) until the client sessions are killed. The
// isolated writer reports the failed fence loudly, retries with backoff,
// escalates after escalate_after, and then verifies the fence.
func TestSelfFenceRetriesThenKillsClients(t *testing.T) {
	escalate := 600 * time.Millisecond
	tc := startCluster(t, clusterOpts{relays: true, margin: 800 * time.Millisecond,
		configure: func(_, _ string, cc *ClusterConfig) { cc.SelfFence.EscalateAfter = escalate }})
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	a.repl.setFenceErr(errors.New("Lock wait timeout exceeded"), true, nil)
	isolate(tc)
	cut := time.Now()

	waitFor(t, 5*time.Second, "a fenced, self-fence reported failing", func() bool {
		st := a.daemon.role.Status()
		return st.Role == RoleFenced && st.SelfFence != nil && !st.SelfFence.Holding
	})
	code, body := getText(t, a, "/health")
	if code != 503 || !strings.Contains(body, "SELF-FENCE NOT HOLDING") || !strings.Contains(body, "Lock wait timeout") {
		t.Fatalf("health while the self-fence fails: %d %q", code, body)
	}
	if got := agent(t, a); got != AgentMaint+"\n" {
		t.Fatalf("agent %q", got)
	}
	if v := metricValue(t, a.daemon.metrics.selfFenceFailing); v != 1 {
		t.Fatalf("lockstep_self_fence_failing %v", v)
	}
	waitFor(t, 5*time.Second, "the self-fence to hold", func() bool {
		st := a.daemon.role.Status()
		return st.SelfFence != nil && st.SelfFence.Holding
	})
	held := time.Since(cut)
	st := a.daemon.role.Status()
	t.Logf("self-fence held %s after the cut, %d attempts, escalated %v", held.Round(time.Millisecond), st.SelfFence.Attempts, st.SelfFence.Escalated)
	if held < escalate {
		t.Fatalf("held after %s, before escalate_after %s", held, escalate)
	}
	calls := a.repl.fenceCalls()
	k := slices.Index(calls, "kill db1")
	if k < 2 || calls[k+1] != "db1" || calls[0] != "fail db1" {
		t.Fatalf("a's database calls %v: want failed fences, the kill, then the fence", calls)
	}
	if !slices.Contains(st.SelfFence.Escalated, "killed 3 client sessions") {
		t.Fatalf("escalation %v", st.SelfFence.Escalated)
	}
	if v := metricValue(t, a.daemon.metrics.selfFenceFailing); v != 0 {
		t.Fatalf("lockstep_self_fence_failing %v after the fence held", v)
	}
	if v := metricValue(t, a.daemon.metrics.selfFenceAttempts.WithLabelValues("error")); v < 2 {
		t.Fatalf("failed attempts counted %v", v)
	}
	eventTime(t, a, "SELF-FENCE NOT HOLDING")
	eventTime(t, a, "self-fence holds after")
	if code, body := getText(t, a, "/health"); code != 503 || strings.Contains(body, "NOT HOLDING") {
		t.Fatalf("health once fenced: %d %q", code, body)
	}
	waitFor(t, 5*time.Second, "b writer", func() bool { return len(b.held()) == 2 })
}

// TestSelfFenceStopsUnreachableDatabase: the database cannot be reached
// at all (read_only and KILL both fail); the escalation stops it with
// self_fence.stop_database and verifies it stopped.
func TestSelfFenceStopsUnreachableDatabase(t *testing.T) {
	var dbScript, dbLog string
	tc := startCluster(t, clusterOpts{relays: true, margin: 800 * time.Millisecond,
		configure: func(node, dir string, cc *ClusterConfig) {
			cc.SelfFence.EscalateAfter = 300 * time.Millisecond
			if node == "a" {
				dbLog = filepath.Join(dir, "db.calls")
				dbScript = lsbScript(t, dir, "mariadb", dbLog, "")
				if err := os.WriteFile(dbScript+".running", nil, 0o644); err != nil {
					t.Fatal(err)
				}
				cc.SelfFence.StopDatabase = dbScript
			}
		}})
	a := tc.nodes["a"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	unreachable := errors.New("dial tcp 10.0.0.1:3306: connect: connection refused")
	a.repl.setFenceErr(unreachable, false, unreachable)
	isolate(tc)
	waitFor(t, 10*time.Second, "the self-fence to hold by stopping the database", func() bool {
		st := a.daemon.role.Status()
		return st.SelfFence != nil && st.SelfFence.Holding
	})
	st := a.daemon.role.Status()
	if !slices.Contains(st.SelfFence.Escalated, "stopped the database with "+dbScript) {
		t.Fatalf("escalation %v", st.SelfFence.Escalated)
	}
	if got := readLines(t, dbLog); !slices.Equal(got, []string{"mariadb_stop", "mariadb_status"}) {
		t.Fatalf("database script calls %v", got)
	}
	if _, err := os.Stat(dbScript + ".running"); !os.IsNotExist(err) {
		t.Fatal("database still running")
	}
}

// TestSelfFenceReportsUntilItHolds: nothing works and there is nothing to
// escalate to: the failure is reported again at every retry and stays in
// /status and /health; when the peer is back the retries stop.
func TestSelfFenceReportsUntilItHolds(t *testing.T) {
	tc := startCluster(t, clusterOpts{relays: true, margin: 800 * time.Millisecond,
		configure: func(_, _ string, cc *ClusterConfig) { cc.SelfFence.EscalateAfter = 200 * time.Millisecond }})
	a := tc.nodes["a"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	gone := errors.New("server has gone away")
	a.repl.setFenceErr(gone, false, gone)
	isolate(tc)
	waitFor(t, 10*time.Second, "several reported attempts", func() bool {
		st := a.daemon.role.Status()
		return st.SelfFence != nil && st.SelfFence.Attempts >= 4
	})
	st := a.daemon.role.Status()
	if st.SelfFence.Holding || !strings.Contains(st.SelfFence.LastError, "server has gone away") || len(a.held()) != 0 {
		t.Fatalf("self-fence %+v, held %v", st.SelfFence, a.held())
	}
	reports := 0
	for _, e := range a.daemon.events.List() {
		if strings.Contains(e.Message, "SELF-FENCE NOT HOLDING") {
			reports++
		}
	}
	if reports < 3 {
		t.Fatalf("%d reports of the failing self-fence:\n%s", reports, dumpEvents(a))
	}
	var doc Status
	getJSON(t, a, "/status", &doc)
	if doc.SelfFence == nil || doc.SelfFence.Holding || doc.Health.OK || !strings.Contains(doc.Health.Reason, "may still be writable") {
		t.Fatalf("/status %+v %+v", doc.SelfFence, doc.Health)
	}

	// The link returns: a leaves the fenced role and stops retrying.
	tc.relays["a->b"].cut.Store(false)
	tc.relays["b->a"].cut.Store(false)
	waitFor(t, 5*time.Second, "a standby", func() bool { return a.role() == RoleStandby })
	if st := a.daemon.role.Status(); st.SelfFence != nil {
		t.Fatalf("self-fence status kept after leaving the fenced role: %+v", st.SelfFence)
	}
	if v := metricValue(t, a.daemon.metrics.selfFenceFailing); v != 0 {
		t.Fatalf("lockstep_self_fence_failing %v", v)
	}
	eventTime(t, a, "self-fence retries ended")
}
