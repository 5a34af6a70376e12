package dbrepl

import (
	"context"
	"strings"
	"testing"
	"time"
)

// offlineSupervisor has connections that are never used successfully:
// every DB action fails, which the tests use to see whether one was tried.
func offlineSupervisor(t *testing.T) *Supervisor {
	t.Helper()
	cfg := Config{
		Interval: 100 * time.Millisecond,
		StateDir: t.TempDir(),
		Fence:    FenceConfig{MaxLag: time.Second, UnfenceLag: 300 * time.Millisecond, UnfenceHold: time.Second},
		Nodes: []NodeConfig{
			{Name: "db1", DSN: "u:p@tcp(127.0.0.1:1)/"},
			{Name: "db2", DSN: "u:p@tcp(127.0.0.1:1)/"},
		},
	}
	s, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.closeNodes)
	return s
}

func mariaObs(name string, id uint32, ro bool, io, sql string, errno int) *Observation {
	return &Observation{
		Node: name, Reachable: true, Flavor: FlavorMariaDB, ServerID: id, DomainID: id, ReadOnly: ro,
		AutoIncInc: 2, AutoIncOff: int(id), Local: time.Now(),
		GTIDBinlogPos: "1-1-10,2-2-10", GTIDCurrentPos: "1-1-10,2-2-10", GTIDSlavePos: "1-1-10,2-2-10",
		Replicas: []ReplicaStatus{{SourceServerID: 3 - id, IORunning: io, SQLRunning: sql, LastSQLErrno: errno,
			LastSQLError: "Duplicate entry"}},
		HeartbeatTS: map[string]int64{},
	}
}

func TestVerdicts(t *testing.T) {
	s := offlineSupervisor(t)
	check := func(want string, obs [2]*Observation) {
		t.Helper()
		s.publish(obs, s.evaluate(obs, true))
		if got := s.Status().Verdict; got != want {
			t.Errorf("verdict %q, want %q; problems %q", got, want, s.Status().Problems)
		}
	}
	check(VerdictHealthy, [2]*Observation{mariaObs("db1", 1, false, "Yes", "Yes", 0), mariaObs("db2", 2, false, "Yes", "Yes", 0)})
	check(VerdictBroken, [2]*Observation{mariaObs("db1", 1, false, "Yes", "Yes", 0), mariaObs("db2", 2, false, "Yes", "No", 1062)})
	check(VerdictSplitBrain, [2]*Observation{mariaObs("db1", 1, false, "Yes", "No", 0), mariaObs("db2", 2, false, "No", "Yes", 0)})
	down := &Observation{Node: "db2", Local: time.Now()}
	check(VerdictBroken, [2]*Observation{mariaObs("db1", 1, false, "Yes", "Yes", 0), down})
	collide := mariaObs("db2", 2, false, "Yes", "Yes", 0)
	collide.AutoIncOff = 3
	check(VerdictDegraded, [2]*Observation{mariaObs("db1", 1, false, "Yes", "Yes", 0), collide})
	s.fences[1] = &FenceRecord{Node: "db2", Reason: "x"}
	check(VerdictFenced, [2]*Observation{mariaObs("db1", 1, false, "Yes", "Yes", 0), mariaObs("db2", 2, true, "Yes", "No", 1062)})
	if st := s.Status(); st.FencedNode != "db2" || !st.Nodes[1].Fenced || st.Nodes[1].LastErrorGTID != "1-1-11" {
		t.Errorf("fenced status: %+v", st.Nodes[1])
	}
}

// The detector never fences the last writable node, nor a node whose peer
// is unreachable. Its connections are dead, so an attempted fence shows up
// as a fence_failed event.
func TestNeverFenceLastWritable(t *testing.T) {
	s := offlineSupervisor(t)
	ctx := context.Background()
	run := func(obs [2]*Observation) []Event {
		ev := s.evaluate(obs, false)
		s.act(ctx, obs, ev)
		var out []Event
		for {
			select {
			case e := <-s.events:
				out = append(out, e)
			default:
				return out
			}
		}
	}
	// db2 broken, db1 read-only (fenced by hand elsewhere): db2 is the last writer.
	evs := run([2]*Observation{mariaObs("db1", 1, true, "Yes", "Yes", 0), mariaObs("db2", 2, false, "Yes", "No", 1062)})
	if len(evs) != 1 || evs[0].Type != EventSkipped || evs[0].Node != "db2" {
		t.Errorf("events %+v, want one fence_skipped for db2", evs)
	}
	// Reported once per episode.
	if evs := run([2]*Observation{mariaObs("db1", 1, true, "Yes", "Yes", 0), mariaObs("db2", 2, false, "Yes", "No", 1062)}); len(evs) != 0 {
		t.Errorf("repeated events %+v", evs)
	}
	// Peer unreachable: no fence of the survivor.
	s2 := offlineSupervisor(t)
	s = s2
	evs = run([2]*Observation{{Node: "db1", Local: time.Now()}, mariaObs("db2", 2, false, "Yes", "No", 1062)})
	for _, e := range evs {
		if e.Type == EventFenceFailed || e.Type == EventFence {
			t.Errorf("tried to fence the survivor: %+v", e)
		}
	}
	// Both broken: only one fence is attempted (the one further behind).
	s3 := offlineSupervisor(t)
	s = s3
	a, b := mariaObs("db1", 1, false, "Yes", "No", 1062), mariaObs("db2", 2, false, "Yes", "No", 1062)
	a.GTIDCurrentPos, b.GTIDBinlogPos = "1-1-10,2-2-5", "1-1-10,2-2-10" // db1 is 5 behind db2
	b.GTIDCurrentPos, a.GTIDBinlogPos = "1-1-9,2-2-10", "1-1-10,2-2-10" // db2 is 1 behind db1
	evs = run([2]*Observation{a, b})
	// db2 is kept; db1 is the one chosen (its fence then stops at the
	// fresh read_only check of db2, which the dead connection fails).
	var kept, chosen []string
	for _, e := range evs {
		switch {
		case e.Type == EventSkipped && strings.HasPrefix(e.Reason, "both nodes"):
			kept = append(kept, e.Node)
		case e.Type == EventSkipped && strings.Contains(e.Reason, "read_only unknown"), e.Type == EventFenceFailed:
			chosen = append(chosen, e.Node)
		}
	}
	if len(kept) != 1 || kept[0] != "db2" || len(chosen) != 1 || chosen[0] != "db1" {
		t.Errorf("kept %v chosen %v, want db2 kept and db1 (further behind) chosen; events %+v", kept, chosen, evs)
	}
}
