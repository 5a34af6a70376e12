package dbrepl

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestHeartbeatLag(t *testing.T) {
	base := time.Unix(1_700_000_000, 0)
	const us = int64(1_000_000)
	src0 := int64(1_700_000_000) * us // the source's clock equals ours + 0
	interval := 100 * time.Millisecond
	r := newHeartbeatRing(16)
	// Heartbeats at 0, 100, ..., 900ms, each committed 1ms after its ts.
	for i := int64(0); i < 10; i++ {
		r.add(src0+i*100_000, base.Add(time.Duration(i)*interval+time.Millisecond), 0)
	}
	in := LagInput{SourceNowUS: src0 + 950_000, SourceLocal: base.Add(950 * time.Millisecond), Interval: interval}

	// Replica has the newest heartbeat: lag 0, age 50ms.
	in.SeenTS, in.ReadLocal = src0+900_000, base.Add(950*time.Millisecond)
	if lag, age, ok := r.lag(in); !ok || lag != 0 || age != 50*time.Millisecond {
		t.Errorf("caught up: lag %s age %s ok %v", lag, age, ok)
	}
	in.SeenTS = src0 + 500_000 // missing 600ms..900ms: first missing committed at 600ms
	lag, _, ok := r.lag(in)
	if !ok || lag != 350*time.Millisecond {
		t.Errorf("behind: lag %s ok %v, want 350ms", lag, ok)
	}
	// The source's clock runs 2s ahead of ours: only its own clock is used,
	// so the lag is the same.
	const skew = 2 * us
	skewed := newHeartbeatRing(16)
	for _, e := range r.entries {
		skewed.add(e.ts+skew, e.committed, 0)
	}
	sk := in
	sk.SourceNowUS, sk.SeenTS = in.SourceNowUS+skew, in.SeenTS+skew
	if lag, _, _ := skewed.lag(sk); lag != 350*time.Millisecond {
		t.Errorf("skewed source clock: lag %s, want 350ms", lag)
	}
	// The successor was written but not yet committed when the replica read.
	in.SeenTS, in.ReadLocal = src0+800_000, base.Add(900*time.Millisecond+500*time.Microsecond)
	if lag, _, _ := r.lag(in); lag != 0 {
		t.Errorf("successor not committed at read: lag %s, want 0", lag)
	}
	// Older than the ring: one interval after what it saw.
	in.SeenTS, in.ReadLocal = src0-5*us, base.Add(950*time.Millisecond)
	if lag, _, _ := r.lag(in); lag != 5*time.Second+850*time.Millisecond {
		t.Errorf("predates ring: lag %s", lag)
	}
	// Nothing visible: unknown, never 0.
	in.SeenTS = 0
	if _, _, ok := r.lag(in); ok {
		t.Error("lag known without a visible heartbeat")
	}
	// Empty ring (fresh supervisor, status snapshot): the source's own row
	// says the replica is caught up.
	empty := newHeartbeatRing(4)
	in.SeenTS, in.SourceOwnTS = src0+900_000, src0+900_000
	if lag, _, ok := empty.lag(in); !ok || lag != 0 {
		t.Errorf("snapshot caught up: %s %v", lag, ok)
	}
}

func TestFenceStoreAtomicRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := FenceStore{Dir: dir}
	if r, err := s.Load("db2"); r != nil || err != nil {
		t.Fatalf("missing record: %v %v", r, err)
	}
	rec := &FenceRecord{Node: "db2", Reason: "lag", Manual: true, Since: time.Now().UTC().Truncate(time.Second)}
	if err := s.Save(rec); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load("db2")
	if err != nil || got.Reason != "lag" || !got.Manual || !got.Since.Equal(rec.Since) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temp files left: %v", entries)
	}
	if err := os.WriteFile(s.path("db1"), []byte("{half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load("db1"); err == nil {
		t.Error("corrupt record accepted")
	}
	if err := s.Remove("db2"); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.Load("db2"); r != nil {
		t.Error("record survived Remove")
	}
}

func TestAutoIncrementCollision(t *testing.T) {
	o := func(inc, off int) *Observation {
		return &Observation{Node: "n", Reachable: true, AutoIncInc: inc, AutoIncOff: off}
	}
	for _, c := range []struct {
		a, b    *Observation
		collide bool
	}{
		{o(2, 1), o(2, 2), false},
		{o(1, 1), o(1, 1), true},
		{o(2, 1), o(2, 3), true},
		{o(2, 1), o(3, 2), true},
		{o(10, 3), o(10, 7), false},
	} {
		if got := autoIncrementCollision([2]*Observation{c.a, c.b}) != ""; got != c.collide {
			t.Errorf("%d/%d vs %d/%d: collide=%v", c.a.AutoIncInc, c.a.AutoIncOff, c.b.AutoIncInc, c.b.AutoIncOff, got)
		}
	}
}

func TestHeartbeatLagByGTIDSequence(t *testing.T) {
	base := time.Unix(1_700_000_000, 0)
	src0 := base.UnixMicro()
	r := newHeartbeatRing(8)
	for i := int64(0); i < 3; i++ { // heartbeats are seq 10, 20, 30 at 0, 100, 200ms
		r.add(src0+i*100_000, base.Add(time.Duration(i)*100*time.Millisecond), uint64(10+10*i))
	}
	in := LagInput{SourceNowUS: src0 + 300_000, SourceLocal: base.Add(300 * time.Millisecond),
		SeenTS: src0, ReadLocal: base.Add(300 * time.Millisecond), AppliedLocal: base.Add(300 * time.Millisecond),
		Interval: 100 * time.Millisecond}
	for _, c := range []struct {
		applied uint64
		want    time.Duration
	}{
		{14, 250 * time.Millisecond}, // first missing (15) halfway between 10 and 20
		{19, 200 * time.Millisecond}, // first missing is the heartbeat at 100ms
		{29, 100 * time.Millisecond},
		{30, 0},
		{45, 0},
	} {
		in.AppliedSeq = c.applied
		if lag, _, ok := r.lag(in); !ok || lag != c.want {
			t.Errorf("applied %d: lag %s ok %v, want %s", c.applied, lag, ok, c.want)
		}
	}
	// Sequence going backwards (a reset origin) restarts the ring.
	r.add(src0+400_000, base.Add(400*time.Millisecond), 3)
	if len(r.entries) != 1 {
		t.Errorf("ring kept %d entries across a GTID reset", len(r.entries))
	}
}
