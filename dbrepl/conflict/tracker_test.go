package conflict

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

// Node 0 is server 1 in domain 1, node 1 is server 2 in domain 2.
var servers = [2]uint32{1, 2}

type sim struct {
	t   *Tracker
	seq [2]uint64
	now time.Time
}

func newSim(window time.Duration, maxKeys int) *sim {
	return &sim{t: NewTracker(window, maxKeys, 16), now: time.Unix(1_700_000_000, 0)}
}

// write executes a write on node n (its own binlog) and returns its GTID.
func (s *sim) write(n int, key string) (GTID, bool) {
	s.seq[n]++
	g := GTID{Domain: uint32(n + 1), Server: servers[n], Seq: s.seq[n]}
	s.t.Seen(n, g)
	_, ok := s.t.Record(Write{Schema: "app", Table: "t", Key: key, Node: n, Origin: n, GTID: g, At: s.now}, servers[n], s.now)
	return g, ok
}

// replicate makes node n apply g (it shows up in n's binlog).
func (s *sim) replicate(n int, g GTID, key string) bool {
	s.t.Seen(n, g)
	_, ok := s.t.Record(Write{Schema: "app", Table: "t", Key: key, Node: n, Origin: 1 - n, GTID: g, At: s.now}, servers[n], s.now)
	return ok
}

func TestConcurrentWritesConflict(t *testing.T) {
	s := newSim(10*time.Second, 100)
	g1, ok := s.write(0, "id=7")
	if ok {
		t.Fatal("a single write conflicted")
	}
	// db2 writes the same key before applying db1's write.
	g2, ok := s.write(1, "id=7")
	if !ok {
		t.Fatal("concurrent writes of one key were not flagged")
	}
	// Both replicate afterwards: no second report for the same pair.
	if s.replicate(1, g1, "id=7") || s.replicate(0, g2, "id=7") {
		t.Fatal("replicated copies flagged again")
	}
	c, _ := s.t.Record(Write{Schema: "app", Table: "t", Key: "id=7", Node: 1, Origin: 1, GTID: g2, At: s.now}, servers[1], s.now)
	if c.PrimaryKey != "" {
		t.Fatal("a replayed event (reconnect) was flagged again")
	}
}

func TestConflictReportsBothGTIDs(t *testing.T) {
	s := newSim(10*time.Second, 100)
	// The order in which the two binlogs are read must not matter.
	s.seq = [2]uint64{40, 9}
	g2 := GTID{2, 2, 10}
	s.t.Seen(1, g2)
	if _, ok := s.t.Record(Write{Schema: "app", Table: "t", Key: "id=1", Node: 1, Origin: 1, GTID: g2, At: s.now}, 2, s.now); ok {
		t.Fatal("flagged early")
	}
	g1 := GTID{1, 1, 41}
	s.t.Seen(0, g1)
	c, ok := s.t.Record(Write{Schema: "app", Table: "t", Key: "id=1", Node: 0, Origin: 0, GTID: g1, At: s.now}, 1, s.now)
	if !ok {
		t.Fatal("not flagged")
	}
	if c.GTIDs[0] != "1-1-41" || c.GTIDs[1] != "2-2-10" || c.Schema != "app" || c.Table != "t" || c.PrimaryKey != "id=1" {
		t.Fatalf("conflict = %+v", c)
	}
}

func TestOrderedWritesDoNotConflict(t *testing.T) {
	s := newSim(10*time.Second, 100)
	g1, _ := s.write(0, "id=7")
	s.replicate(1, g1, "id=7")
	// db2 changes the row after it applied db1's change: normal traffic.
	if _, ok := s.write(1, "id=7"); ok {
		t.Fatal("a write made after applying the peer's write was flagged")
	}
	// Unrelated keys never conflict.
	s.write(0, "id=1")
	if _, ok := s.write(1, "id=2"); ok {
		t.Fatal("different keys flagged")
	}
}

func TestWritesOutsideWindowDoNotConflict(t *testing.T) {
	s := newSim(time.Second, 100)
	s.write(0, "id=7")
	s.now = s.now.Add(5 * time.Second)
	if _, ok := s.write(1, "id=7"); ok {
		t.Fatal("writes 5s apart flagged with a 1s window")
	}
}

// TestMemoryStaysFlat writes 10x more distinct keys in the second phase
// and checks the window and the heap do not grow with it.
func TestMemoryStaysFlat(t *testing.T) {
	const maxKeys = 2000
	s := newSim(time.Hour, maxKeys)
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	load := func(n int) {
		for i := 0; i < n; i++ {
			// Every key unique, several tables, both origins.
			key := fmt.Sprintf("id=%d", s.seq[0]+s.seq[1])
			s.t.Seen(0, GTID{1, 1, s.seq[0] + 1})
			s.seq[0]++
			s.t.Record(Write{Schema: "app", Table: fmt.Sprint("t", i%4), Key: key, Node: 0, Origin: 0,
				GTID: GTID{1, 1, s.seq[0]}, At: s.now}, 1, s.now)
		}
	}
	load(10_000)
	h1, e1 := heap(), s.t.Entries()
	load(100_000)
	h2, e2 := heap(), s.t.Entries()
	t.Logf("after 10k writes: %d keys, heap %d KiB; after 110k: %d keys, heap %d KiB", e1, h1>>10, e2, h2>>10)
	if e1 > 4*maxKeys || e2 > 4*maxKeys {
		t.Fatalf("window holds %d / %d keys, bound is %d", e1, e2, 4*maxKeys)
	}
	if h2 > h1+4<<20 {
		t.Fatalf("heap grew from %d to %d bytes over 10x more writes", h1, h2)
	}
}

func TestWindowExpiresByAge(t *testing.T) {
	s := newSim(time.Second, 1000)
	for i := range 100 {
		s.write(0, fmt.Sprint("id=", i))
	}
	if s.t.Entries() != 100 {
		t.Fatalf("entries = %d", s.t.Entries())
	}
	s.now = s.now.Add(3 * time.Second)
	s.write(0, "id=new")
	if got := s.t.Entries(); got != 1 {
		t.Fatalf("entries after expiry = %d, want 1", got)
	}
}

func TestTableBound(t *testing.T) {
	tr := NewTracker(time.Hour, 10, 3)
	now := time.Unix(1, 0)
	for i := range 10 {
		tr.Seen(0, GTID{1, 1, uint64(i + 1)})
		tr.Record(Write{Schema: "s", Table: fmt.Sprint("t", i), Key: "id=1", Node: 0, Origin: 0, GTID: GTID{1, 1, uint64(i + 1)}, At: now}, 1, now.Add(time.Duration(i)))
	}
	if len(tr.tables) != 3 || tr.Entries() != 3 {
		t.Fatalf("tables=%d entries=%d, want 3/3", len(tr.tables), tr.Entries())
	}
}
