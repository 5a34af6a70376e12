package conflict

import (
	"container/list"
	"fmt"
	"sync"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl"
)

const pruneEvery = 100 * time.Millisecond

// Write is one row change as decoded from a node's binlog.
type Write struct {
	Schema, Table string
	// Key identifies the row: "col=value[,col=value]" of the primary key.
	Key string
	// Node is the index (0/1) of the node whose binlog the event was read
	// from; Origin is the index of the node that executed the write, -1
	// when the event's server_id belongs to neither node.
	Node, Origin int
	GTID         GTID
	At           time.Time
}

// GTID is a MariaDB global transaction id.
type GTID struct {
	Domain, Server uint32
	Seq            uint64
}

func (g GTID) String() string { return fmt.Sprintf("%d-%d-%d", g.Domain, g.Server, g.Seq) }

// localWrite is a write as executed on its origin, with what that origin
// had applied from its peer at that moment: the happened-before relation.
type localWrite struct {
	gtid GTID
	at   time.Time
	// peerSeen is, per peer domain, the highest peer sequence number the
	// origin had applied when it executed this write.
	peerSeen map[uint32]uint64
}

type keyEntry struct {
	key     string
	last    time.Time
	writes  [2]*localWrite
	flagged map[[2]GTID]bool
}

type tableWindow struct {
	keys map[string]*list.Element // of *keyEntry
	lru  *list.List               // oldest first
}

// Tracker decides which writes conflict. It keeps, per table, the last
// write of each origin per key, in a window bounded by age and by count,
// so memory does not grow with the write rate.
//
// Two writes to a key conflict when neither origin had applied the
// other's write before making its own (they were concurrent with respect
// to replication) and they happened within Window of each other. A write
// on db2 of a row db1 changed a second earlier, after db2 applied it, is
// ordinary master-master traffic, not a conflict.
type Tracker struct {
	mu        sync.Mutex
	window    time.Duration
	maxKeys   int
	maxTables int
	tables    map[[2]string]*tableWindow
	entries   int
	lastPrune time.Time
	// seen is, per stream (node), the highest sequence applied per
	// (domain, server) as read so far from that node's binlog.
	seen [2]map[[2]uint32]uint64
}

// NewTracker makes a tracker; window, maxKeys and maxTables must be > 0.
func NewTracker(window time.Duration, maxKeys, maxTables int) *Tracker {
	return &Tracker{
		window: window, maxKeys: maxKeys, maxTables: maxTables,
		tables: map[[2]string]*tableWindow{},
		seen:   [2]map[[2]uint32]uint64{{}, {}},
	}
}

// Seen records that node's binlog contains g (at its start position or
// as it is read), before any write of that transaction is recorded.
func (t *Tracker) Seen(node int, g GTID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := [2]uint32{g.Domain, g.Server}
	if g.Seq > t.seen[node][k] {
		t.seen[node][k] = g.Seq
	}
}

// Entries is the number of keys held, for tests and metrics.
func (t *Tracker) Entries() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.entries
}

// Record adds a write and returns the conflict it creates, if any.
// ownServer is the server_id of node w.Node: every other server seen in
// that node's binlog is its peer.
func (t *Tracker) Record(w Write, ownServer uint32, now time.Time) (dbrepl.Conflict, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.prune(now)
	// Only the copy in the origin's own binlog says what the origin had
	// seen when it wrote; the replicated copy adds nothing.
	if w.Origin < 0 || w.Origin != w.Node {
		return dbrepl.Conflict{}, false
	}
	peer := 1 - w.Origin
	lw := &localWrite{gtid: w.GTID, at: w.At, peerSeen: map[uint32]uint64{}}
	for k, seq := range t.seen[w.Node] {
		if k[1] != ownServer {
			lw.peerSeen[k[0]] = seq
		}
	}

	tk := [2]string{w.Schema, w.Table}
	tw := t.tables[tk]
	if tw == nil {
		if len(t.tables) >= t.maxTables {
			t.evictOldestTable()
		}
		tw = &tableWindow{keys: map[string]*list.Element{}, lru: list.New()}
		t.tables[tk] = tw
	}
	var e *keyEntry
	if el, ok := tw.keys[w.Key]; ok {
		e = el.Value.(*keyEntry)
		tw.lru.MoveToBack(el)
	} else {
		e = &keyEntry{key: w.Key}
		tw.keys[w.Key] = tw.lru.PushBack(e)
		t.entries++
		for tw.lru.Len() > t.maxKeys {
			t.removeFront(tw)
		}
	}
	e.last = now
	e.writes[w.Origin] = lw

	other := e.writes[peer]
	if other == nil || !concurrent(lw, other) || absDur(lw.at.Sub(other.at)) > t.window {
		return dbrepl.Conflict{}, false
	}
	pair := [2]GTID{lw.gtid, other.gtid}
	if w.Origin == 1 {
		pair = [2]GTID{other.gtid, lw.gtid}
	}
	if e.flagged[pair] {
		return dbrepl.Conflict{}, false // replayed after a reconnect
	}
	if e.flagged == nil {
		e.flagged = map[[2]GTID]bool{}
	}
	e.flagged[pair] = true
	first, last := other.at, lw.at
	if last.Before(first) {
		first, last = last, first
	}
	return dbrepl.Conflict{
		Schema: w.Schema, Table: w.Table, PrimaryKey: w.Key,
		GTIDs:     []string{pair[0].String(), pair[1].String()},
		FirstSeen: first, LastSeen: last,
	}, true
}

// concurrent reports whether neither write had been applied on the other
// write's origin when that one was made.
func concurrent(a, b *localWrite) bool {
	aSawB := a.peerSeen[b.gtid.Domain] >= b.gtid.Seq
	bSawA := b.peerSeen[a.gtid.Domain] >= a.gtid.Seq
	return !aSawB && !bSawA
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func (t *Tracker) prune(now time.Time) {
	// Expiry is checked at most every pruneEvery: a full sweep per write
	// would cost O(tables) on the hot path, and the count bound holds
	// regardless.
	if now.Sub(t.lastPrune) < pruneEvery {
		return
	}
	t.lastPrune = now
	cutoff := now.Add(-t.window)
	for k, tw := range t.tables {
		for tw.lru.Len() > 0 && tw.lru.Front().Value.(*keyEntry).last.Before(cutoff) {
			t.removeFront(tw)
		}
		if tw.lru.Len() == 0 {
			delete(t.tables, k)
		}
	}
}

func (t *Tracker) removeFront(tw *tableWindow) {
	el := tw.lru.Front()
	delete(tw.keys, el.Value.(*keyEntry).key)
	tw.lru.Remove(el)
	t.entries--
}

func (t *Tracker) evictOldestTable() {
	var oldest [2]string
	var at time.Time
	found := false
	for k, tw := range t.tables {
		if f := tw.lru.Front(); f != nil {
			if l := f.Value.(*keyEntry).last; !found || l.Before(at) {
				oldest, at, found = k, l, true
			}
		}
	}
	if found {
		t.entries -= t.tables[oldest].lru.Len()
		delete(t.tables, oldest)
	}
}
