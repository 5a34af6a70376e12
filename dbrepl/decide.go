package dbrepl

import (
	"fmt"
	"strings"
	"time"
)

// A poll is observe → decide → act. observe (observe.go) reads both nodes
// and measures lag from the heartbeat history; decide turns one pairView
// into a decision without any I/O, clock or lock, so that every rule is
// table-tested (decide_internal_test.go); act (act.go) carries the
// decision out — read_only, fence records, hooks, events — and publish
// (publish.go) turns the verdicts into the status and the metrics.
//
// decide runs its steps in order (reachability, enforcement of existing
// fences, fencing, reintroduction), each appending actions. A further check
// — repairing a broken applier, handling errant transactions beyond
// reporting them — is one more step here and, if it acts, one more
// actionKind in act.

// pairView is everything one decision depends on, captured at one instant.
type pairView struct {
	now    time.Time
	fence  FenceConfig
	active bool
	// snapshot: a one-shot status read (`repl status` without a daemon).
	// Nothing is acted on; errant transactions are reported at once, and a
	// lag is shown even when the peer's heartbeat write failed.
	snapshot bool
	obs      [2]*Observation
	addrs    [2]string // configured addresses, to match fence records
	lag      [2]lagReading
	fences   [2]*FenceRecord
	// goodSince: when each fenced node's current caught-up stretch began
	// (zero: none). Only act changes it, through holdStart and holdReset.
	goodSince [2]time.Time
	mem       pairMemory
}

// lagReading is a node's heartbeat lag behind its peer and the age of the
// newest peer heartbeat it shows; nil when unknown.
type lagReading struct {
	lag, age *time.Duration
}

// pairMemory is what one decision hands to the next.
type pairMemory struct {
	wasDown    [2]bool      // unreachable at the previous poll
	backSince  [2]time.Time // when the node answered again after being unreachable
	errantSeen [2]int       // consecutive polls showing errant transactions
}

// nodeEval is the verdict on one node.
type nodeEval struct {
	lag, age     *time.Duration
	behind       *int64
	applied      uint64
	replica      *ReplicaStatus
	errno        int
	errText      string
	failingGTID  string
	brokenNow    string // fence at once: replication stopped on an error
	lagging      string // fence: lag over max_lag
	stopped      bool   // a thread is not running
	caughtUp     bool   // qualifies for reintroduction this poll
	errant       []string
	replProblems []string
}

func (e *nodeEval) qualifies() bool { return e.brokenNow != "" || e.lagging != "" }

// actionKind is one thing act does.
type actionKind int

const (
	actEvent       actionKind = iota // emit an event (reachability)
	actRefence                       // make a fenced node found writable read-only again
	actAccept                        // forget an automatic fence lifted elsewhere
	actFence                         // fence, once a fresh read shows the peer still writable
	actSkip                          // the node qualifies but is not fenced: say so once per episode
	actEpisodeOver                   // the node no longer qualifies: a later skip is news again
	actFollow                        // inactive: record the active supervisor's fence as ours
	actNote                          // debug log of what an inactive supervisor leaves to the active one
	actHoldReset                     // not caught up: unfence_hold starts over
	actHoldStart                     // caught up: unfence_hold runs from now unless already running
	actUnfence                       // reintroduce
	actForeign                       // a fence record belongs to another server: ignored, reported
)

// action is one step of a decision, on node.
type action struct {
	kind   actionKind
	node   int
	event  string // actEvent: the event type
	reason string
}

// decision is decide's answer: the verdict on each node (for the status
// and the fence records), what to remember, and what to do, in order.
type decision struct {
	eval [2]*nodeEval
	// foreign: why node i's fence record was ignored (it belongs to
	// another server), "" when it was not.
	foreign [2]string
	mem     pairMemory
	actions []action
}

func (d *decision) add(kind actionKind, node int, reason string) {
	d.actions = append(d.actions, action{kind: kind, node: node, reason: reason})
}

// decide is the supervisor's judgement of one poll.
func decide(v pairView) decision {
	d := decision{mem: v.mem}
	for i, o := range v.obs {
		if o.Reachable && d.mem.wasDown[i] {
			d.mem.backSince[i] = o.Local
		}
	}
	for i := range v.obs {
		d.eval[i] = evaluateNode(v, d.mem, i)
	}
	debounceErrant(&d, v.snapshot)
	// A record is enforced only on the server it was written for: a
	// stale record (another cluster's, a rebuilt server's) never fences.
	for i, f := range v.fences {
		if why := f.Foreign(v.obs[i], v.addrs[i]); why != "" {
			d.foreign[i] = why
			v.fences[i] = nil
			if !v.snapshot {
				d.add(actForeign, i, why)
			}
		}
	}
	if v.snapshot {
		return d
	}
	decideReachability(v, &d)
	fences := decideEnforcement(v, &d)
	decideFencing(v, fences, &d)
	decideReintroduction(v, fences, &d)
	return d
}

// evaluateNode judges node i against its peer.
func evaluateNode(v pairView, mem pairMemory, i int) *nodeEval {
	o, p := v.obs[i], v.obs[1-i]
	e := &nodeEval{}
	if !o.Reachable || o.Err != nil {
		return e
	}
	e.replica = o.Replica(p)
	r := e.replica
	if r == nil {
		e.replProblems = append(e.replProblems, fmt.Sprintf("%s: no replication configured from %s", o.Node, p.Node))
		e.stopped = true
	} else {
		e.stopped = !r.IOOK() || !r.SQLOK()
		switch {
		case r.LastSQLErrno != 0:
			e.errno, e.errText = r.LastSQLErrno, r.LastSQLError
		case r.LastIOErrno != 0:
			e.errno, e.errText = r.LastIOErrno, r.LastIOError
		}
		if e.errno != 0 {
			e.failingGTID = FailingGTIDFromError(e.errText)
			if e.failingGTID == "" && r.LastSQLErrno != 0 && p.Reachable && o.Flavor == FlavorMariaDB {
				e.failingGTID = nextMariaGTID(o.GTIDSlavePos, p.DomainID, p.ServerID)
			}
		}
		if !r.SQLOK() && r.LastSQLErrno != 0 {
			e.brokenNow = fmt.Sprintf("replication from %s broken: SQL thread stopped on error %d: %s", p.Node, r.LastSQLErrno, r.LastSQLError)
			if e.failingGTID != "" {
				e.brokenNow += " (GTID " + e.failingGTID + ")"
			}
		} else if !r.IOOK() && r.LastIOErrno != 0 && p.Reachable && !connectErrno(r.LastIOErrno) {
			e.brokenNow = fmt.Sprintf("replication from %s broken: IO thread stopped on error %d: %s", p.Node, r.LastIOErrno, r.LastIOError)
		}
		if e.stopped {
			e.replProblems = append(e.replProblems, fmt.Sprintf("%s: replication from %s not running (io=%s sql=%s)", o.Node, p.Node, r.IORunning, r.SQLRunning))
		}
	}
	if !p.Reachable || p.Err != nil {
		return e
	}
	e.lag, e.age = v.lag[i].lag, v.lag[i].age
	if o.Flavor == FlavorMariaDB {
		if b, err := MariaDBBehind(p.GTIDBinlogPos, o.GTIDCurrentPos, p.DomainID); err == nil {
			e.behind = &b
		}
		e.applied = MariaDBAppliedIn(o.GTIDCurrentPos, p.DomainID)
		if errant, err := MariaDBErrant(o.GTIDBinlogPos, o.DomainID, p.GTIDBinlogPos, p.GTIDCurrentPos, p.DomainID); err == nil {
			e.errant = errant
		}
	} else {
		if b, err := MySQLBehind(p.GTIDExecuted, o.GTIDExecuted, p.ServerUUID); err == nil {
			e.behind = &b
		}
		e.applied = uint64(MySQLExecutedCount(o.GTIDExecuted))
		if errant, err := MySQLErrant(o.GTIDExecuted, o.ServerUUID, p.GTIDExecuted); err == nil {
			e.errant = errant
		}
	}
	// A node is not to blame for lacking what its peer wrote before it
	// went down: its receiver needs up to Connect_Retry to reconnect once
	// the peer is back. For the fence decision the lag counts from then at
	// the earliest.
	fenceLag := e.lag
	if back := mem.backSince[1-i]; e.lag != nil && !back.IsZero() {
		var retry time.Duration
		if r != nil {
			retry = r.ConnectRetry
		}
		if allowed := o.Local.Sub(back) - retry; *e.lag > allowed {
			v := max(allowed, 0)
			fenceLag = &v
		}
	}
	if fenceLag != nil && *fenceLag > v.fence.MaxLag {
		e.lagging = fmt.Sprintf("%s behind %s, over max_lag %s", e.lag.Round(time.Millisecond), p.Node, v.fence.MaxLag)
		if e.stopped && r != nil {
			e.lagging += fmt.Sprintf(" (io=%s sql=%s)", r.IORunning, r.SQLRunning)
		}
	}
	e.caughtUp = r != nil && !e.stopped && e.errno == 0 && e.lag != nil && *e.lag < v.fence.UnfenceLag
	return e
}

// debounceErrant: errant transactions count only once seen in three polls
// in a row, because one sample can race with a write the peer applies
// between the reads.
func debounceErrant(d *decision, snapshot bool) {
	for i, e := range d.eval {
		if len(e.errant) > 0 {
			d.mem.errantSeen[i]++
		} else {
			d.mem.errantSeen[i] = 0
		}
		if d.mem.errantSeen[i] < 3 && !snapshot {
			e.errant = nil
		}
	}
}

func decideReachability(v pairView, d *decision) {
	for i, o := range v.obs {
		was := d.mem.wasDown[i]
		d.mem.wasDown[i] = !o.Reachable
		switch {
		case !o.Reachable && !was:
			d.actions = append(d.actions, action{kind: actEvent, node: i, event: EventUnreachable, reason: errString(o.Err)})
		case o.Reachable && was:
			d.actions = append(d.actions, action{kind: actEvent, node: i, event: EventReachable, reason: "node answers again"})
		}
	}
}

// decideEnforcement handles fenced nodes found writable again (restarted
// with read_only=OFF from their config, or unfenced by hand behind our
// back): fenced again, unless the fence was automatic and the node has
// been reintroduced by the active supervisor. It returns the fences that
// still hold.
func decideEnforcement(v pairView, d *decision) [2]*FenceRecord {
	fences := v.fences
	for i, o := range v.obs {
		f := fences[i]
		if f == nil || !o.Reachable || o.Err != nil || o.ReadOnly {
			continue
		}
		caughtUp := d.eval[i].caughtUp
		if !f.Manual && (caughtUp || !v.active) {
			// Accept, don't flap. An active supervisor only accepts it
			// once the node has caught up.
			why := "writable again and caught up (reintroduced outside this supervisor)"
			if !caughtUp {
				why = "writable again (reintroduced by the active supervisor)"
			}
			d.add(actAccept, i, why)
			fences[i] = nil
			continue
		}
		d.add(actRefence, i, "fenced node was writable again: "+f.Reason)
		d.add(actHoldReset, i, "")
	}
	return fences
}

// decideFencing picks the nodes to fence. The last writable node is never
// fenced: not when its peer is unreachable or read-only, and when both
// qualify only the one that applied less of its peer's transactions is.
// An inactive supervisor fences nothing: it mirrors the fences the active
// one made.
func decideFencing(v pairView, fences [2]*FenceRecord, d *decision) {
	var want []int
	for i, e := range d.eval {
		if fences[i] == nil && v.obs[i].Reachable && v.obs[i].Err == nil && e.qualifies() {
			want = append(want, i)
		}
	}
	if !v.active {
		for _, i := range want {
			o := v.obs[i]
			reason := fenceReason(d.eval[i])
			if !o.ReadOnly && !o.SuperReadOnly {
				d.add(actNote, i, "inactive: would fence; the active supervisor decides: "+reason)
				continue
			}
			d.add(actFollow, i, "read-only (fenced by the active supervisor): "+reason)
		}
		want = nil
	}
	if len(want) == 2 {
		// Keep the one that applied more of its peer's transactions
		// writable; ties go to the smaller lag, then to the first node.
		keep := 0
		b0, b1 := behindOrMax(d.eval[0]), behindOrMax(d.eval[1])
		switch {
		case b1 < b0:
			keep = 1
		case b1 == b0 && lagOrMax(d.eval[1]) < lagOrMax(d.eval[0]):
			keep = 1
		}
		d.add(actSkip, keep, "both nodes behind or broken; this one applied more of its peer's transactions and stays writable")
		want = []int{1 - keep}
	}
	for _, i := range want {
		p := 1 - i
		switch {
		case !v.obs[p].Reachable:
			d.add(actSkip, i, "peer unreachable: this is the last reachable writer")
		case fences[p] != nil || v.obs[p].ReadOnly:
			d.add(actSkip, i, "peer is read-only: never fence the last writable node")
		default:
			d.add(actFence, i, fenceReason(d.eval[i]))
		}
	}
	for i, e := range d.eval {
		if !e.qualifies() {
			d.add(actEpisodeOver, i, "")
		}
	}
}

// decideReintroduction lifts an automatic fence once the node has stayed
// caught up for unfence_hold — unless it holds errant transactions: writes
// its peer never received would come back as a second history the moment
// it is writable again, so it stays fenced until `lockstep repl repair`.
func decideReintroduction(v pairView, fences [2]*FenceRecord, d *decision) {
	for i, e := range d.eval {
		f := fences[i]
		if f == nil || f.Manual {
			continue
		}
		if len(e.errant) > 0 {
			d.add(actHoldReset, i, "")
			d.add(actNote, i, fmt.Sprintf("not reintroduced: errant transactions %s (on this node only); repair with `lockstep repl repair`",
				strings.Join(e.errant, ",")))
			continue
		}
		if !v.active {
			if e.caughtUp {
				d.add(actNote, i, fmt.Sprintf("inactive: would start or continue reintroducing (lag %s); the active supervisor decides",
					e.lag.Round(time.Millisecond)))
			}
			continue
		}
		if !e.caughtUp {
			d.add(actHoldReset, i, "")
			continue
		}
		start := v.goodSince[i]
		if start.IsZero() {
			start = v.now
			d.add(actHoldStart, i, "")
		}
		if held := v.now.Sub(start); held >= v.fence.UnfenceHold {
			d.add(actUnfence, i, fmt.Sprintf("caught up: both threads running, lag %s < unfence_lag %s for %s",
				e.lag.Round(time.Millisecond), v.fence.UnfenceLag, held.Round(time.Millisecond)))
		}
	}
}

// connectErrno: errors the IO thread reports while its source is down or
// unreachable; the peer being down is never this node's fault.
func connectErrno(n int) bool {
	switch n {
	case 2003, 2005, 2006, 2013, 2026, 1045, 1129, 1130:
		return true
	}
	return false
}

// nextMariaGTID is the transaction the applier stopped at: MariaDB numbers
// a domain consecutively, so it is the slave position's successor.
func nextMariaGTID(slavePos string, domain, serverID uint32) string {
	seq := MariaDBAppliedIn(slavePos, domain)
	return fmt.Sprintf("%d-%d-%d", domain, serverID, seq+1)
}

func fenceReason(e *nodeEval) string {
	if e.brokenNow != "" {
		return e.brokenNow
	}
	return e.lagging
}

func behindOrMax(e *nodeEval) int64 {
	if e.behind == nil {
		return 1<<62 - 1
	}
	return *e.behind
}

func lagOrMax(e *nodeEval) time.Duration {
	if e.lag == nil {
		return 1<<62 - 1
	}
	return *e.lag
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
