package dbrepl_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl"
)

// TestForeignFenceRecordIgnored: a fence record left in state_dir by
// another cluster's db2 (another server_id) must not fence this pair's
// db2; it is reported in the status instead. A record the supervisor
// writes itself carries the server's identity, and a manual fence binds
// the record too.
func TestForeignFenceRecordIgnored(t *testing.T) {
	p := startPair(t)
	stateDir := t.TempDir()
	store := dbrepl.FenceStore{Dir: stateDir}
	foreign := &dbrepl.FenceRecord{Node: "db2", Reason: "lagging (other cluster)", Since: time.Now().UTC(),
		ServerID: 4242, Address: "10.9.9.9:3306", GTIDCurrentPos: "0-4242-100"}
	if err := store.Save(foreign); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(p, stateDir)
	h := supervise(t, p, cfg)
	st := h.waitFor(10*time.Second, "foreign record reported", func(st dbrepl.PairStatus) bool {
		return node(st, "db2").FenceRecordIgnored != ""
	})
	n := node(st, "db2")
	if n.Fenced || !strings.Contains(n.FenceRecordIgnored, "server_id 4242") {
		t.Fatalf("db2 status with a foreign record: %+v", n)
	}
	if !strings.Contains(strings.Join(st.Problems, "\n"), "belongs to another server") {
		t.Errorf("problems do not report the ignored record: %v", st.Problems)
	}
	time.Sleep(5 * testInterval)
	if readOnly(t, p.Nodes[1]) {
		t.Fatal("db2 was fenced on the strength of another server's record")
	}
	if len(h.eventsOf(dbrepl.EventRefence, "db2")) != 0 || len(h.eventsOf(dbrepl.EventFence, "db2")) != 0 {
		t.Error("fence events for a foreign record")
	}
	h.stop()

	// A manual fence replaces it with a record bound to this db2.
	ctx := context.Background()
	if err := dbrepl.ManualFence(ctx, cfg, "db2", "maintenance", testLogger(t)); err != nil {
		t.Fatal(err)
	}
	rec, err := store.Load("db2")
	if err != nil || rec == nil {
		t.Fatalf("record after manual fence: %v %v", rec, err)
	}
	if rec.ServerID == 0 || rec.Address != p.Nodes[1].Addr() || rec.GTIDCurrentPos == "" {
		t.Fatalf("manual fence record not bound to the server: %+v", rec)
	}
	h2 := supervise(t, p, cfg)
	st = h2.waitFor(10*time.Second, "db2 fenced by its own record", func(st dbrepl.PairStatus) bool { return node(st, "db2").Fenced })
	if node(st, "db2").FenceRecordIgnored != "" {
		t.Errorf("own record reported as foreign: %+v", node(st, "db2"))
	}
	// Record and server disagree when read_only is lifted behind the
	// supervisor's back (it fences again right after; the status of a
	// snapshot read shows the disagreement).
	h2.stop()
	if _, err := p.Nodes[1].DB.ExecContext(ctx, "SET GLOBAL read_only=OFF"); err != nil {
		t.Fatal(err)
	}
	snap, err := dbrepl.Snapshot(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if d := node(snap, "db2").FenceDisagrees; !strings.Contains(d, "read_only=OFF") {
		t.Errorf("snapshot does not say record and server disagree: %+v", node(snap, "db2"))
	}
	if err := dbrepl.ManualUnfence(ctx, cfg, "db2", testLogger(t)); err != nil {
		t.Fatal(err)
	}
}
