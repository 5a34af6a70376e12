package dbrepl

import (
	"testing"
	"time"
)

// The stream lag, step by step, against a fake clock: node 0 is the source
// (domain 1), node 1 its replica.
func TestStreamLag(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := base
	clock := func() time.Time { return now }
	at := func(ms int) { now = base.Add(time.Duration(ms) * time.Millisecond) }
	mk := func(logsApplied bool) *streamLag {
		l := newStreamLag(clock)
		l.StreamStarted(0, "1-1-100")
		l.StreamStarted(1, "1-1-100,2-2-7")
		l.observed(1, &Observation{Reachable: true, Flavor: FlavorMariaDB, LogReplicaUpdates: logsApplied, GTIDBinlogPos: "1-1-100,2-2-7", GTIDCurrentPos: "1-1-100,2-2-7"})
		l.observed(0, &Observation{Reachable: true, Flavor: FlavorMariaDB, LogReplicaUpdates: logsApplied, GTIDBinlogPos: "1-1-100,2-2-7", GTIDCurrentPos: "1-1-100,2-2-7", VarsLocal: base})
		return l
	}
	want := func(l *streamLag, wantLag time.Duration, wantOK bool) {
		t.Helper()
		got, ok := l.lag(1, 1)
		if ok != wantOK || ok && got != wantLag {
			t.Fatalf("at %s: lag %s ok=%v, want %s ok=%v", now.Sub(base), got, ok, wantLag, wantOK)
		}
	}

	l := mk(true)
	at(0)
	want(l, 0, true) // caught up
	at(10)
	l.StreamGTID(0, 1, 101)
	at(30)
	l.StreamGTID(0, 1, 102)
	at(40)
	want(l, 30*time.Millisecond, true) // 101 arrived at 10ms, replica lacks it
	l.StreamGTID(1, 1, 101)
	want(l, 10*time.Millisecond, true) // now it lacks 102, from 30ms
	l.StreamGTID(1, 1, 102)
	want(l, 0, true)
	// The replica's SQL thread stops: the lag grows 1:1 from the first
	// transaction it lacks.
	at(100)
	l.StreamGTID(0, 1, 103)
	for _, ms := range []int{100, 600, 1700} {
		at(ms)
		if ms%2 == 0 {
			l.StreamGTID(0, 1, uint64(104+ms))
		}
		want(l, time.Duration(ms-100)*time.Millisecond, true)
	}
	// A poll saw the replica apply more than its stream shows (its stream
	// lags): the poll's position counts.
	l.observed(1, &Observation{Reachable: true, Flavor: FlavorMariaDB, LogReplicaUpdates: true, GTIDCurrentPos: "1-1-204"})
	want(l, 1100*time.Millisecond, true) // 704 arrived at 600ms

	// Replica stream down: unknown.
	l.StreamStopped(1)
	want(l, 0, false)
	// Reconnected, behind what the source stream has timed: the first
	// missing one is still timed.
	l.StreamStarted(1, "1-1-204,2-2-7")
	want(l, 1100*time.Millisecond, true)

	// A replica that does not log what it applies cannot be followed.
	l = mk(false)
	want(l, 0, false)

	// A replica lacking what the source had before its stream started:
	// never seen arriving, so unknown.
	l = newStreamLag(clock)
	l.StreamStarted(0, "1-1-500")
	l.StreamStarted(1, "1-1-400")
	l.observed(1, &Observation{Reachable: true, Flavor: FlavorMariaDB, LogReplicaUpdates: true, GTIDCurrentPos: "1-1-400"})
	want(l, 0, false)

	// A source stream behind what a poll read of the source is not
	// trusted once the poll is older than streamBehindAfter.
	l = mk(true)
	at(0)
	l.observed(0, &Observation{Reachable: true, Flavor: FlavorMariaDB, GTIDBinlogPos: "1-1-105", VarsLocal: now})
	want(l, 0, true)
	at(int(streamBehindAfter/time.Millisecond) + 1)
	want(l, 0, false)
	l.StreamGTID(0, 1, 105)
	want(l, 0, true)
}

// The arrivals kept are bounded: what the replica applied is dropped, and
// a replica far behind loses its timing (unknown) instead of memory
// growing without bound.
func TestStreamLagBounded(t *testing.T) {
	now := time.Unix(0, 0)
	l := newStreamLag(func() time.Time { return now })
	l.StreamStarted(0, "1-1-0")
	l.StreamStarted(1, "1-1-0")
	l.observed(1, &Observation{Reachable: true, Flavor: FlavorMariaDB, LogReplicaUpdates: true})
	for s := uint64(1); s <= 1000; s++ {
		l.StreamGTID(0, 1, s)
		l.StreamGTID(1, 1, s)
	}
	if n := len(l.nodes[0].arr[1]); n > 1 {
		t.Fatalf("%d arrivals kept for a caught-up replica", n)
	}
	for s := uint64(1001); s <= 1000+2*maxArrivals; s++ {
		l.StreamGTID(0, 1, s)
	}
	if n := len(l.nodes[0].arr[1]); n > maxArrivals {
		t.Fatalf("%d arrivals kept, bound %d", n, maxArrivals)
	}
	if _, ok := l.lag(1, 1); ok {
		t.Fatal("lag known for a replica behind the arrivals kept")
	}
}
