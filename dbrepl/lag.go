package dbrepl

import (
	"sort"
	"time"
)

// heartbeatRing remembers the heartbeats this supervisor wrote for one
// origin: their timestamp on the origin's clock and when (on our clock)
// the write had committed.
type heartbeatRing struct {
	entries []hbEntry // ascending ts
	max     int
}

type hbEntry struct {
	ts        int64 // µs, origin clock
	committed time.Time
	seq       uint64 // GTID sequence number in the origin's domain, 0 if unknown
}

func newHeartbeatRing(max int) *heartbeatRing { return &heartbeatRing{max: max} }

func (r *heartbeatRing) add(ts int64, committed time.Time, seq uint64) {
	if n := len(r.entries); n > 0 && (r.entries[n-1].ts >= ts || seq != 0 && r.entries[n-1].seq >= seq) {
		// The origin's clock or GTID sequence went backwards (restored
		// backup, reset): start over rather than mix two histories.
		r.entries = r.entries[:0]
	}
	r.entries = append(r.entries, hbEntry{ts, committed, seq})
	if len(r.entries) > r.max {
		r.entries = append(r.entries[:0], r.entries[len(r.entries)-r.max:]...)
	}
}

// LagInput is what the heartbeat lag of a replica behind its source is
// computed from.
type LagInput struct {
	// Source clock: SourceNowUS read at SourceLocal (our clock). The
	// source's clock offset to ours is derived from it, so the replica's
	// and the supervisor's clocks never enter the lag: no cross-host skew.
	SourceNowUS int64
	SourceLocal time.Time
	// SeenTS is the source's newest heartbeat visible on the replica, read
	// at ReadLocal (our clock); 0 when none is visible.
	SeenTS    int64
	ReadLocal time.Time
	// SourceOwnTS is the source's heartbeat as read on the source itself
	// (0 if unknown); a replica that sees it is caught up.
	SourceOwnTS int64
	// AppliedSeq is the replica's sequence number in the source's GTID
	// domain (MariaDB gtid_current_pos), read at AppliedLocal; 0 if
	// unknown. With it the first missing transaction is located exactly
	// between two heartbeats.
	AppliedSeq   uint64
	AppliedLocal time.Time
	// Interval is the heartbeat period, used when the successor of SeenTS
	// is not in the ring.
	Interval time.Duration
}

// lag returns the replica's lag behind the source and the age of the
// newest heartbeat it sees.
//
// The lag is the time since the first heartbeat the replica has NOT
// applied was committed on the source (everything the replica lacks is at
// most that old), measured on the source's clock. When the replica has
// every heartbeat written before its read, the lag is 0. This is exact to
// within the heartbeat transit time, where "now − newest visible
// heartbeat" (pt-heartbeat) always adds up to one interval of noise.
// ok is false when the lag cannot be known (no source clock sample).
func (r *heartbeatRing) lag(in LagInput) (lag, age time.Duration, ok bool) {
	if in.SourceLocal.IsZero() || in.ReadLocal.IsZero() {
		return 0, 0, false
	}
	// The source's clock at the moment of the replica's read.
	srcAtRead := in.SourceNowUS + in.ReadLocal.Sub(in.SourceLocal).Microseconds()
	if in.SeenTS == 0 {
		return 0, 0, false
	}
	age = time.Duration(srcAtRead-in.SeenTS) * time.Microsecond
	if in.SourceOwnTS != 0 && in.SeenTS >= in.SourceOwnTS && len(r.entries) == 0 {
		return 0, max(age, 0), true
	}
	if lag, ok := r.lagBySeq(in); ok {
		return lag, max(age, 0), true
	}
	// First heartbeat after SeenTS that had committed before the read.
	i := sort.Search(len(r.entries), func(i int) bool { return r.entries[i].ts > in.SeenTS })
	fromRing := i < len(r.entries) &&
		// When SeenTS predates the ring, the ring's first entry is its
		// successor only if no heartbeat can fit in between.
		(i > 0 || r.entries[0].ts-in.SeenTS <= in.Interval.Microseconds()*3/2)
	var successor int64
	switch {
	case fromRing:
		e := r.entries[i]
		if !e.committed.Before(in.ReadLocal) {
			return 0, max(age, 0), true
		}
		successor = e.ts
	case i == len(r.entries) && len(r.entries) > 0:
		// The replica has our newest heartbeat.
		return 0, max(age, 0), true
	default:
		// Older than the ring (or the ring is empty after a restart): the
		// next heartbeat was written about one interval later.
		successor = in.SeenTS + in.Interval.Microseconds()
		if successor > srcAtRead {
			return 0, max(age, 0), true
		}
	}
	lag = time.Duration(srcAtRead-successor) * time.Microsecond
	if lag < 0 {
		lag = 0
	}
	return lag, max(age, 0), true
}

// lagBySeq locates the replica's first missing transaction (applied+1) by
// GTID sequence between the two heartbeats around it and interpolates its
// commit time linearly by sequence number (exact when it is a heartbeat,
// and for a steady write rate in between). Without the successor
// heartbeat in the ring it gives up and the timestamp method is used.
func (r *heartbeatRing) lagBySeq(in LagInput) (time.Duration, bool) {
	if in.AppliedSeq == 0 || in.AppliedLocal.IsZero() || len(r.entries) == 0 || r.entries[0].seq == 0 {
		return 0, false
	}
	missing := in.AppliedSeq + 1
	j := sort.Search(len(r.entries), func(i int) bool { return r.entries[i].seq >= missing })
	srcAtRead := in.SourceNowUS + in.AppliedLocal.Sub(in.SourceLocal).Microseconds()
	if j == len(r.entries) {
		// The replica has every heartbeat we wrote; what it may lack is
		// younger than the newest one.
		return 0, true
	}
	next := r.entries[j]
	firstMissing := next.ts
	if j > 0 && next.seq > missing {
		prev := r.entries[j-1]
		frac := float64(missing-prev.seq) / float64(next.seq-prev.seq)
		firstMissing = prev.ts + int64(frac*float64(next.ts-prev.ts))
	} else if j == 0 && next.seq > missing {
		return 0, false // older than the ring
	}
	lag := time.Duration(srcAtRead-firstMissing) * time.Microsecond
	return max(lag, 0), true
}
