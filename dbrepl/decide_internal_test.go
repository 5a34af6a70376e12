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
		s.step(context.Background(), obs, true)
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
		s.step(ctx, obs, false)
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

// decide is pure: each case is a view of the pair and the actions it
// yields, in order (actEpisodeOver left out, see TestDecideEpisodes).
func TestDecide(t *testing.T) {
	now := time.Now()
	dur := func(d time.Duration) *time.Duration { return &d }
	lagOf := func(d time.Duration) lagReading { return lagReading{lag: dur(d), age: dur(d)} }
	ok := func(name string, id uint32) *Observation { return mariaObs(name, id, false, "Yes", "Yes", 0) }
	readOnly := func(o *Observation) *Observation { o.ReadOnly = true; return o }
	broken := func(name string, id uint32) *Observation { return mariaObs(name, id, false, "Yes", "No", 1062) }
	down := func(name string) *Observation { return &Observation{Node: name, Local: now} }
	auto := func(node string) *FenceRecord { return &FenceRecord{Node: node, Reason: "lagging"} }
	manual := func(node string) *FenceRecord { return &FenceRecord{Node: node, Reason: "by hand", Manual: true} }
	base := func(a, b *Observation) pairView {
		return pairView{
			now:    now,
			fence:  FenceConfig{MaxLag: time.Second, UnfenceLag: 300 * time.Millisecond, UnfenceHold: time.Second},
			active: true,
			obs:    [2]*Observation{a, b},
		}
	}
	type tc struct {
		name string
		view pairView
		want []string // "kind node: reason fragment"
	}
	var cases []tc
	add := func(name string, v pairView, want ...string) { cases = append(cases, tc{name, v, want}) }

	add("healthy pair: nothing to do", base(ok("db1", 1), ok("db2", 2)))
	add("broken applier is fenced at once", base(ok("db1", 1), broken("db2", 2)),
		"fence db2: SQL thread stopped on error 1062: Duplicate entry (GTID 1-1-11)")
	add("never the last writable node", base(readOnly(ok("db1", 1)), broken("db2", 2)),
		"skip db2: peer is read-only")
	v := base(ok("db1", 1), broken("db2", 2))
	v.fences[0] = manual("db1")
	v.obs[0].ReadOnly = true
	add("never the last writable node: peer fenced", v, "skip db2: peer is read-only")
	add("peer unreachable: no fence of the survivor", base(down("db1"), broken("db2", 2)),
		"event db1: unreachable", "skip db2: peer unreachable")
	v = base(ok("db1", 1), ok("db2", 2))
	v.mem.wasDown[0] = true
	add("a node answering again is an event", v, "event db1: reachable")
	v = base(ok("db1", 1), ok("db2", 2))
	v.lag[1] = lagOf(2 * time.Second)
	add("lag over max_lag is fenced", v, "fence db2: 2s behind db1, over max_lag 1s")
	v = base(ok("db1", 1), ok("db2", 2))
	v.lag[1] = lagOf(2 * time.Second)
	v.mem.wasDown[0] = true
	v.obs[1].Local = v.obs[0].Local.Add(500 * time.Millisecond)
	add("lag counts only from the peer's return", v, "event db1: reachable")
	a, b := broken("db1", 1), broken("db2", 2)
	a.GTIDCurrentPos, b.GTIDBinlogPos = "1-1-10,2-2-5", "1-1-10,2-2-10"
	b.GTIDCurrentPos, a.GTIDBinlogPos = "1-1-9,2-2-10", "1-1-10,2-2-10"
	add("both broken: the one further behind is fenced", base(a, b),
		"skip db2: both nodes behind or broken", "fence db1: SQL thread stopped")
	v = base(ok("db1", 1), broken("db2", 2))
	v.active = false
	add("inactive: a writable qualifying node is left to the active supervisor", v, "note db2: inactive: would fence")
	v = base(ok("db1", 1), readOnly(broken("db2", 2)))
	v.active = false
	add("inactive: a node the active supervisor fenced is recorded", v, "follow db2: read-only (fenced by the active supervisor)")
	v = base(ok("db1", 1), readOnly(ok("db2", 2)))
	v.fences[1] = auto("db2")
	v.lag[1] = lagOf(100 * time.Millisecond)
	add("caught up: unfence_hold starts", v, "holdstart db2: ")
	v = base(ok("db1", 1), readOnly(ok("db2", 2)))
	v.fences[1] = auto("db2")
	v.lag[1] = lagOf(100 * time.Millisecond)
	v.goodSince[1] = now.Add(-2 * time.Second)
	add("caught up for unfence_hold: reintroduced", v, "unfence db2: caught up: both threads running, lag 100ms < unfence_lag 300ms for 2s")
	v = base(ok("db1", 1), readOnly(ok("db2", 2)))
	v.fences[1] = auto("db2")
	v.lag[1] = lagOf(100 * time.Millisecond)
	v.goodSince[1] = now.Add(-2 * time.Second)
	v.obs[1].GTIDBinlogPos = "1-1-10,2-2-10,2-2-11,9-2-3" // a domain db1 never saw
	v.mem.errantSeen[1] = 3                               // seen in the polls before
	add("errant transactions block reintroduction", v, "holdreset db2: ", "note db2: not reintroduced: errant transactions")
	v = base(ok("db1", 1), readOnly(ok("db2", 2)))
	v.fences[1] = auto("db2")
	v.lag[1] = lagOf(time.Second)
	v.goodSince[1] = now.Add(-2 * time.Second)
	add("not caught up: unfence_hold starts over", v, "holdreset db2: ")
	v = base(ok("db1", 1), readOnly(ok("db2", 2)))
	v.fences[1] = manual("db2")
	v.lag[1] = lagOf(100 * time.Millisecond)
	add("a manual fence is never lifted automatically", v)
	v = base(ok("db1", 1), ok("db2", 2))
	v.fences[1] = manual("db2")
	add("a manually fenced node found writable is fenced again", v,
		"refence db2: fenced node was writable again: by hand", "holdreset db2: ")
	v = base(ok("db1", 1), ok("db2", 2))
	v.fences[1] = auto("db2")
	v.lag[1] = lagOf(100 * time.Millisecond)
	add("an automatic fence lifted elsewhere once caught up is accepted", v,
		"accept db2: writable again and caught up")
	v = base(ok("db1", 1), ok("db2", 2))
	v.fences[1] = auto("db2")
	v.active = false
	add("inactive: an automatic fence lifted by the active supervisor is accepted", v,
		"accept db2: writable again (reintroduced by the active supervisor)")
	v = base(ok("db1", 1), broken("db2", 2))
	v.snapshot = true
	add("a snapshot acts on nothing", v)

	for _, c := range cases {
		d := decide(c.view)
		var got []string
		for _, a := range d.actions {
			if a.kind != actEpisodeOver {
				got = append(got, describeAction(c.view, a))
			}
		}
		match := len(got) == len(c.want)
		for i := 0; match && i < len(got); i++ {
			kind, frag, _ := strings.Cut(c.want[i], ": ")
			match = strings.HasPrefix(got[i], kind+": ") && strings.Contains(got[i], frag)
		}
		if !match {
			t.Errorf("%s:\n got  %q\n want %q", c.name, got, c.want)
		}
	}
}

func describeAction(v pairView, a action) string {
	kind := map[actionKind]string{
		actEvent: "event", actRefence: "refence", actAccept: "accept", actFence: "fence", actSkip: "skip",
		actEpisodeOver: "episodeover", actFollow: "follow", actNote: "note", actHoldReset: "holdreset",
		actHoldStart: "holdstart", actUnfence: "unfence",
	}[a.kind]
	reason := a.reason
	if a.kind == actEvent {
		reason = a.event + " " + reason
	}
	return kind + " " + v.obs[a.node].Node + ": " + reason
}

// A skipped fence is reported once per episode: the episode ends when the
// node no longer qualifies.
func TestDecideEpisodes(t *testing.T) {
	v := pairView{now: time.Now(), fence: FenceConfig{MaxLag: time.Second, UnfenceLag: time.Second, UnfenceHold: time.Second}, active: true}
	v.obs = [2]*Observation{mariaObs("db1", 1, true, "Yes", "Yes", 0), mariaObs("db2", 2, false, "Yes", "No", 1062)}
	over := func(d decision) (out []int) {
		for _, a := range d.actions {
			if a.kind == actEpisodeOver {
				out = append(out, a.node)
			}
		}
		return out
	}
	if got := over(decide(v)); len(got) != 1 || got[0] != 0 {
		t.Errorf("episode over for %v, want db1 only (db2 still qualifies)", got)
	}
	v.obs[1] = mariaObs("db2", 2, false, "Yes", "Yes", 0)
	if got := over(decide(v)); len(got) != 2 {
		t.Errorf("episode over for %v, want both", got)
	}
}

// Errant transactions are reported once seen in three polls in a row,
// except by a one-shot snapshot.
func TestDecideErrantDebounce(t *testing.T) {
	a, b := mariaObs("db1", 1, false, "Yes", "Yes", 0), mariaObs("db2", 2, false, "Yes", "Yes", 0)
	a.GTIDBinlogPos = "1-1-10,2-2-10,3-3-5" // a domain db2 never saw
	v := pairView{now: time.Now(), fence: FenceConfig{MaxLag: time.Second, UnfenceLag: time.Second, UnfenceHold: time.Second}, active: true, obs: [2]*Observation{a, b}}
	for poll := 1; poll <= 3; poll++ {
		d := decide(v)
		if reported := len(d.eval[0].errant) > 0; reported != (poll == 3) {
			t.Errorf("poll %d: errant reported = %v", poll, reported)
		}
		v.mem = d.mem
	}
	v.mem = pairMemory{}
	v.snapshot = true
	if d := decide(v); len(d.eval[0].errant) == 0 {
		t.Error("snapshot: errant transactions not reported")
	}
}
