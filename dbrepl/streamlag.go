package dbrepl

import (
	"sort"
	"sync"
	"time"
)

// Stream lag: the lag of each node between two polls, from the binlog
// streams the conflict detector already reads, so that the databases are
// asked once per interval (1 s) while the lag stays as fresh and as exact
// as polling four times a second gave (issue 17).
//
// Each node's binlog shows, as they happen, its own transactions and —
// with log_slave_updates, which a master-master pair needs anyway for a
// third node or a backup replica — the ones it applied from its peer,
// under the peer's GTID. So the replica B lacks exactly the transactions
// of A's domain seen on A's stream with a sequence number above the
// highest one seen on B's stream, and B's lag is the time since the first
// of them arrived on A's stream: a pure in-memory computation, no query.
//
// The reading is given up (and the heartbeat lag of the last poll used)
// whenever it cannot be trusted: either stream disconnected, the replica
// not logging what it applies, a replica lacking transactions committed
// before the source's stream started (we never saw them arrive), or a
// source stream that a poll found behind the source's own binlog.

// GTIDStream receives the GTIDs a binlog reader of each node (0 or 1, in
// the order of the config's nodes) sees, as they arrive.
type GTIDStream interface {
	// StreamStarted: the reader of node streams again; binlogPos is the
	// node's gtid_binlog_pos read when it connected.
	StreamStarted(node int, binlogPos string)
	StreamGTID(node int, domain uint32, seq uint64)
	StreamStopped(node int)
}

// GTIDStreamSource is a ConflictSource that can feed a GTIDStream; the
// supervisor then derives the lag between polls from it. Set before Run.
type GTIDStreamSource interface {
	SetGTIDStream(GTIDStream)
}

const (
	// streamLagTick is how often the stream lag is recomputed (memory
	// only) and published.
	streamLagTick = 100 * time.Millisecond
	// maxArrivals bounds the arrival times kept per node and domain (a
	// replica further behind than that reads the heartbeat lag).
	maxArrivals = 1 << 16
	// streamBehindAfter: a source stream still short of the position a
	// poll read this long ago is behind, and its lag reading is not used.
	streamBehindAfter = 500 * time.Millisecond
)

type arrival struct {
	seq uint64
	at  time.Time
}

type streamNode struct {
	connected bool
	base      map[uint32]uint64    // per domain: gtid_binlog_pos when the stream started
	max       map[uint32]uint64    // per domain: highest seq seen (stream or poll)
	arr       map[uint32][]arrival // per domain: seqs above base, ascending, with arrival time
	// From the last poll: whether the node logs what it applies, and its
	// own binlog position per domain with when it was read.
	logsApplied bool
	polled      map[uint32]uint64
	polledAt    time.Time
}

// streamLag is fed by the binlog readers and read by the poll loop.
type streamLag struct {
	mu    sync.Mutex
	now   func() time.Time
	nodes [2]streamNode
}

func newStreamLag(now func() time.Time) *streamLag {
	l := &streamLag{now: now}
	for i := range l.nodes {
		l.nodes[i] = streamNode{base: map[uint32]uint64{}, max: map[uint32]uint64{}, arr: map[uint32][]arrival{}}
	}
	return l
}

func (l *streamLag) StreamStarted(node int, binlogPos string) {
	seqs := domainSeqs(binlogPos)
	l.mu.Lock()
	defer l.mu.Unlock()
	n := &l.nodes[node]
	// What happened while disconnected arrives again now, with the wrong
	// arrival time: only transactions after the current position are timed.
	n.connected = true
	n.base = seqs
	n.arr = map[uint32][]arrival{}
	for d, s := range seqs {
		n.max[d] = max(n.max[d], s)
	}
}

func (l *streamLag) StreamStopped(node int) {
	l.mu.Lock()
	l.nodes[node].connected = false
	l.mu.Unlock()
}

func (l *streamLag) StreamGTID(node int, domain uint32, seq uint64) {
	at := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	n := &l.nodes[node]
	if seq > n.max[domain] {
		n.max[domain] = seq
	}
	a := n.arr[domain]
	if seq <= n.base[domain] || len(a) > 0 && seq <= a[len(a)-1].seq {
		return
	}
	// Drop what the peer has already applied: it can no longer be the
	// first transaction the peer lacks.
	peerHas := l.nodes[1-node].max[domain]
	if i := sort.Search(len(a), func(i int) bool { return a[i].seq > peerHas }); i > 0 {
		a = append(a[:0], a[i:]...)
	}
	if len(a) >= maxArrivals {
		// The peer is far behind: forget the oldest half, and with it
		// the ability to time what it lacks from before.
		half := len(a) / 2
		n.base[domain] = a[half-1].seq
		a = append(a[:0], a[half:]...)
	}
	n.arr[domain] = append(a, arrival{seq, at})
}

// observed takes what a poll read of node: whether it logs what it
// applies, its binlog position, and what it applied (which also covers a
// replica stream that lags behind the server).
func (l *streamLag) observed(node int, o *Observation) {
	if o == nil || !o.Reachable || o.Err != nil || o.Flavor != FlavorMariaDB {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	n := &l.nodes[node]
	n.logsApplied = o.LogReplicaUpdates
	n.polled = domainSeqs(o.GTIDBinlogPos)
	n.polledAt = o.VarsLocal
	for d, s := range domainSeqs(o.GTIDCurrentPos) {
		n.max[d] = max(n.max[d], s)
	}
}

// lag is node's lag behind its peer's domain, as of now; ok is false when
// the streams cannot tell (see the top of this file).
func (l *streamLag) lag(node int, domain uint32) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	rep, src := &l.nodes[node], &l.nodes[1-node]
	if !rep.connected || !src.connected || !rep.logsApplied {
		return 0, false
	}
	has := rep.max[domain]
	if has < src.base[domain] {
		return 0, false
	}
	if p := src.polled[domain]; p > src.max[domain] && now.Sub(src.polledAt) > streamBehindAfter {
		return 0, false
	}
	a := src.arr[domain]
	i := sort.Search(len(a), func(i int) bool { return a[i].seq > has })
	if i == len(a) {
		return 0, true
	}
	return max(now.Sub(a[i].at), 0), true
}

// domainSeqs maps each domain of a MariaDB GTID list to its sequence
// number (the list holds one GTID per domain: the newest).
func domainSeqs(pos string) map[uint32]uint64 {
	out := map[uint32]uint64{}
	set, err := mariaPos(pos)
	if err != nil {
		return out
	}
	for d, g := range set.Sets {
		if g != nil {
			out[d] = g.SequenceNumber
		}
	}
	return out
}

// refreshStreamLag publishes the stream lag of each node between polls
// and reports whether a node not yet seen over max_lag has crossed it
// (then the caller polls at once, and the poll decides). A scrape of the
// metrics refreshes only the gauge (status false): the status keeps what
// the lag tick saw, which is what tells a new crossing.
func (s *Supervisor) refreshStreamLag(status bool) (pollNow bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	obs := s.obs
	for i := range obs {
		o, p := obs[i], obs[1-i]
		if o == nil || p == nil || !o.Reachable || o.Err != nil || !p.Reachable || p.Err != nil || p.Flavor != FlavorMariaDB {
			continue
		}
		lag, ok := s.stream.lag(i, p.DomainID)
		if !ok || i >= len(s.status.Nodes) {
			continue
		}
		v := lag.Seconds()
		s.metrics.lag.WithLabelValues(o.Node).Set(v)
		if !status {
			continue
		}
		ns := &s.status.Nodes[i]
		if lag > s.cfg.Fence.MaxLag && !ns.Fenced && (ns.LagSeconds == nil || *ns.LagSeconds <= s.cfg.Fence.MaxLag.Seconds()) {
			pollNow = true
		}
		ns.LagSeconds = &v
	}
	return pollNow
}
