package orchestrator

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Roles. Exactly one node of the cluster is the writer and holds the
// resources; a fenced node has made its database read-only and takes no
// traffic.
const (
	RoleWriter  = "writer"
	RoleStandby = "standby"
	RoleFenced  = "fenced"
)

// observation is what this node's sources saw at one instant: the inputs
// of a role decision that do not come from our own role state. Each field
// group has one source, which keeps its own state under its own lock (or
// none) and is asked for a copy once per decision; decide never sees a
// lock. Today's sources:
//
//   - heartbeats (observer: peers, lastHeard, startedAt),
//   - witnesses (observer's probers: the witness* fields),
//   - the replication supervisor (Database: the db* fields),
//   - the resource monitors and track checks (monitor.go, track.go: the
//     eligibility fields),
//   - the quorum arbiter (arbiter.go: the arbiter field group), filled by
//     its own goroutine and copied once per decision; when configured,
//     decideArbiter (arbiter_decide.go) replaces rules 1 and 3-7.
type observation struct {
	now time.Time

	// Heartbeats.
	startedAt time.Time // we listen for heartbeats since then
	lastHeard time.Time // newest valid heartbeat from any peer
	peers     []peerView

	// Witnesses.
	witnessConfigured bool
	witnessSeen       bool
	witnessNames      string

	// Our own database, as the replication supervisor reports it.
	dbFenced bool
	dbReason string

	// Eligibility. ineligible: why this node must not hold the writer
	// role (a resource failure not cleared, a failing track); a writer
	// hands the role to an eligible peer, a standby does not take it.
	// tracksPending: tracks not checked yet, which only hold back a
	// takeover. They apply with an arbiter too (arbiter_decide.go's A4 and
	// A5, and campaignEligible).
	ineligible    string
	tracksPending string

	// The quorum arbiter (arbiter.go; zero when none is configured).
	arbiter arbiterView
}

// view is everything a role decision depends on, captured at one instant
// so that decide is a pure function (and unit-testable): the observation
// plus this node's own role state, which only the role loop changes.
type view struct {
	observation
	cfg       ClusterConfig
	self      string
	preferred string // lowest configured name: cold-start winner and auto_failback home
	role      string
	decided   bool

	writerSince   time.Time
	dbFencedSince time.Time
	failHold      bool // a recent failed acquisition makes us ineligible
	// wasIsolated: we fenced ourselves and have not heard a peer since.
	// The peer has probably taken over meanwhile, so seeing the witness
	// again is no reason to take over from a peer we still cannot hear.
	wasIsolated bool
	selfFenced  bool // our database carries our own self-fence
	// unreleased names our resources whose stop failed ("" = none): they
	// may still be up here, so we neither take the writer role (which
	// would start the group again on top of a half-stopped one) nor lift
	// our self-fence while the release retry goes on.
	unreleased string
}

type peerView struct {
	name     string
	heard    bool // a valid heartbeat since we started
	silent   time.Duration
	alive    bool
	aliveFor time.Duration
	hb       *Heartbeat
	// portClosed: since its last valid heartbeat, the peer's host answered
	// one of ours with ICMP port unreachable: its daemon is not running
	// (crashed, killed, stopped without its goodbye).
	portClosed bool
}

// leaving: the peer said goodbye after releasing everything. A goodbye
// that still lists unreleased resources is no clean exit (our shutdown
// does not send one, see RoleManager.shutdown): the peer is then treated
// like one that died, see peerUnreleased.
func (p peerView) leaving() bool { return p.hb != nil && p.hb.Leaving && len(p.hb.Unreleased) == 0 }

// unreleased: the peer's last heartbeat listed resources whose stop
// failed.
func (p peerView) unreleased() bool { return p.hb != nil && len(p.hb.Unreleased) > 0 }

// gone: a peer we may take over from, because it said it left (after
// releasing its resources) or was silent for deadtime + margin, by which
// time an isolated writer has fenced itself. The margin is only there for
// that fence: a peer whose host reports its heartbeat port closed has no
// daemon that could fence, so waiting longer protects nothing and deadtime
// alone applies. (Deadtime still applies: a daemon restarting within it
// does not lose the role.)
func (p peerView) gone(cfg ClusterConfig) bool {
	return p.leaving() || p.silent >= cfg.Deadtime+cfg.TakeoverMargin || p.portClosed && p.silent >= cfg.Deadtime
}

type decision struct {
	role    string
	reason  string
	decided bool
	// waiting explains why a takeover is held back (logged once).
	waiting string
	// unfence: lift our own self-fence of the database (the role stays).
	unfence bool
	// double: we and a live peer both hold the writer role (a cut healed,
	// heartbeat mode): who keeps it and why. The role loop raises the
	// alert; role says whether we stepped down.
	double *doubleWriter
}

// doubleWriter is one detected double writer and its resolution.
type doubleWriter struct {
	peer string
	kept string // the node that keeps the writer role
	why  string
}

// decide computes the role this node should have. Rules, in order:
//  1. Isolation: no peer alive and no witness reachable → fenced.
//  2. Startup: no decision until every peer was heard or deadtime+margin passed.
//  3. A fenced node returns to standby once a peer or a witness is back.
//  4. Another live writer: a standby stays standby; two writers (a healed
//     cut) are reported (decision.double) and resolve by (database not
//     fenced, longer tenure, lower name): see resolveDoubleWriter.
//  5. A writer keeps the role unless it is ineligible (a resource it could
//     not recover, a failing track) or its database is fenced while an
//     eligible peer waits, or auto_failback hands it to the preferred node.
//  6. A standby whose peers are all gone takes over when eligible: no
//     failed resource or failing or unchecked track, no resource of its
//     own left unreleased, no peer that reports (or, silent but not gone
//     yet, last reported) unreleased resources (see peerUnreleased), its
//     database is not fenced (or takeover_wait expired), and it has
//     heard a peer since it last fenced itself.
//  7. Live peers, no writer: the lowest-named eligible node takes over.
//
// When the role stays, it also says whether to lift our own database
// self-fence (see ownFenceLiftable).
func decide(v view) decision {
	d := decideRole(v)
	d.unfence = d.role == v.role && ownFenceLiftable(v)
	return d
}

// ownFenceLiftable: our own fence (maybe from before a restart) is lifted
// only once a peer is back for a moment; the witness alone is not enough,
// the peer's database may be the writable one.
func ownFenceLiftable(v view) bool {
	if v.unreleased != "" {
		// The release retry fenced it on purpose (escalation): whatever
		// is still running here must not write.
		return false
	}
	if v.role == RoleFenced || !v.selfFenced && !(v.dbFenced && strings.HasPrefix(v.dbReason, selfFencePrefix)) {
		return false
	}
	for _, p := range v.peers {
		if p.alive && p.aliveFor >= 2*v.cfg.Keepalive {
			return true
		}
	}
	return false
}

// eligible is what this node announces in its heartbeat: it may take the
// writer role now.
func eligible(s roleSnapshot, dbFenced bool, now time.Time) bool {
	return s.role == RoleStandby && !s.draining && !s.leaving && !dbFenced && !now.Before(s.failHoldUntil) && s.ineligible == "" && s.release == nil
}

// failBackoff is how long a node whose resource start failed stays
// ineligible: twice the previous hold, at least 2 x deadtime, at most a
// minute, so a broken resource does not bounce the role between nodes.
func failBackoff(prev, deadtime time.Duration) time.Duration {
	return min(max(2*prev, 2*deadtime), time.Minute)
}

// allPeersDead: no peer alive that has not left.
func (o observation) allPeersDead() bool {
	for _, p := range o.peers {
		if p.alive && !p.leaving() {
			return false
		}
	}
	return true
}

// isolated is rule 1's condition on the observation alone: no peer and no
// witness. A recovery running on the role loop watches it too, so that a
// restart in progress does not delay the self-fence.
func (o observation) isolated() bool {
	return o.allPeersDead() && o.witnessConfigured && !o.witnessSeen
}

func decideRole(v view) decision {
	if v.arbiter.configured {
		return decideArbiter(v)
	}
	d := decision{role: v.role, decided: v.decided}
	cfg := v.cfg
	allDead := v.allPeersDead()
	uptime := v.now.Sub(v.startedAt)

	// 1. Isolation. Not during the first deadtime: witnesses have not been
	// probed yet and peers not heard.
	if v.isolated() && (uptime >= cfg.Deadtime || v.role == RoleWriter) {
		d.decided = true
		if v.role != RoleFenced {
			d.role = RoleFenced
			d.reason = fmt.Sprintf("isolated: no valid heartbeat from %s and no witness reachable (%s)", peerSilence(v.peers), v.witnessNames)
		}
		return d
	}

	// 2. Startup wait.
	if !d.decided {
		heardAll := true
		for _, p := range v.peers {
			if !p.heard {
				heardAll = false
			}
		}
		if !heardAll && uptime < cfg.Deadtime+cfg.TakeoverMargin {
			return d
		}
		d.decided = true
	}

	// 3. Leaving the fenced role.
	if v.role == RoleFenced {
		for _, p := range v.peers {
			if p.alive && p.aliveFor >= 2*cfg.Keepalive {
				d.role, d.reason = RoleStandby, fmt.Sprintf("no longer isolated: peer %s is back", p.name)
				return d
			}
		}
		if v.witnessSeen {
			d.role, d.reason = RoleStandby, fmt.Sprintf("no longer isolated: witness reachable (%s)", v.witnessNames)
		}
		return d
	}

	// 4. Another live writer.
	for _, p := range v.peers {
		if !p.alive || p.leaving() || p.hb.Role != RoleWriter {
			continue
		}
		if v.role != RoleWriter {
			d.reason = fmt.Sprintf("peer %s is the writer", p.name)
			return d
		}
		kept, why := resolveDoubleWriter(p, v)
		d.double = &doubleWriter{peer: p.name, kept: kept, why: why}
		if kept != v.self {
			d.role = RoleStandby
			d.reason = fmt.Sprintf("DOUBLE WRITER: peer %s also holds the writer role; %s: stepping down", p.name, why)
			return d
		}
	}

	// 5. Writer keeps the role unless it should hand over. An ineligible
	// writer hands over only to a peer that may take the role: with none
	// (dead, or its database fenced), nobody would serve after a release
	// either, and releasing would also stop the replication supervisor's
	// decisions, the only way a lagging peer is reintroduced and becomes
	// eligible. /health drains it meanwhile.
	if v.role == RoleWriter {
		if v.ineligible != "" {
			if name, ok := eligibleStandby(v.peers); ok {
				d.role = RoleStandby
				d.reason = fmt.Sprintf("not eligible: %s; handing the writer role over to eligible peer %s", v.ineligible, name)
				return d
			}
			d.waiting = "not eligible: " + v.ineligible + "; no eligible peer to hand the writer role to, keeping it"
			return d
		}
		if v.dbFenced && v.now.Sub(v.dbFencedSince) >= cfg.Deadtime {
			if name, ok := eligibleStandby(v.peers); ok {
				d.role = RoleStandby
				d.reason = fmt.Sprintf("own database fenced for %s while peer %s is eligible; handing over the writer role",
					v.now.Sub(v.dbFencedSince).Round(time.Millisecond), name)
				return d
			}
		}
		if cfg.AutoFailback && v.self != v.preferred {
			for _, p := range v.peers {
				if p.name == v.preferred && p.alive && !p.leaving() && p.aliveFor >= cfg.FailbackHold &&
					p.hb.Eligible && p.hb.Role == RoleStandby {
					d.role = RoleStandby
					d.reason = fmt.Sprintf("auto_failback: preferred node %s has been back for %s (failback_hold %s)",
						p.name, p.aliveFor.Round(time.Millisecond), cfg.FailbackHold)
					return d
				}
			}
		}
		return d
	}

	// Standby from here on.
	if v.failHold {
		d.waiting = "not eligible: holding down after a failed resource start"
		return d
	}
	if v.ineligible != "" {
		d.waiting = "not eligible: " + v.ineligible
		return d
	}
	if v.tracksPending != "" {
		d.waiting = "not eligible yet: " + v.tracksPending
		return d
	}
	if why, blocked := releaseBlocks(v); blocked {
		d.waiting = why
		return d
	}

	// 6. Every peer gone.
	if allDead {
		var waitingFor []string
		goneFor := time.Duration(1<<62 - 1)
		for _, p := range v.peers {
			if !p.gone(cfg) {
				waitingFor = append(waitingFor, p.name)
			}
			if !p.leaving() {
				goneFor = min(goneFor, p.silent-cfg.Deadtime-cfg.TakeoverMargin)
			}
		}
		if len(waitingFor) > 0 {
			return d // within the margin that lets an isolated writer fence first
		}
		if v.wasIsolated {
			d.waiting = fmt.Sprintf("was isolated and has not heard any peer since (%s): not taking over, the peer has probably done so; restart this daemon to override", peerSilence(v.peers))
			return d
		}
		witness := "no witness configured"
		if v.witnessConfigured {
			witness = "witness reachable (" + v.witnessNames + ")"
		}
		if v.dbFenced {
			if cfg.TakeoverWait <= 0 || goneFor < cfg.TakeoverWait {
				d.waiting = "peers gone but own database is fenced: waiting for it to catch up"
				if cfg.TakeoverWait > 0 {
					d.waiting += fmt.Sprintf(" (takeover_wait %s)", cfg.TakeoverWait)
				}
				return d
			}
			d.role = RoleWriter
			d.reason = fmt.Sprintf("%s; %s; own database still fenced after takeover_wait %s, taking over anyway",
				peerSilence(v.peers), witness, cfg.TakeoverWait)
			return d
		}
		d.role = RoleWriter
		d.reason = fmt.Sprintf("%s; %s; own database not fenced", peerSilence(v.peers), witness)
		return d
	}

	// 7. Election among live nodes. A silent peer that last claimed the
	// writer role may still be fencing itself: wait until it is gone.
	for _, p := range v.peers {
		if !p.alive && !p.gone(cfg) && p.hb != nil && p.hb.Role == RoleWriter {
			return d
		}
	}
	if v.dbFenced {
		return d
	}
	candidates := []string{v.self}
	for _, p := range v.peers {
		if p.alive && !p.leaving() && p.hb.Eligible && p.hb.Role == RoleStandby && !p.hb.Draining {
			candidates = append(candidates, p.name)
		}
	}
	slices.Sort(candidates)
	if candidates[0] == v.self {
		d.role = RoleWriter
		d.reason = fmt.Sprintf("election: no writer among live nodes; %s is the lowest-named eligible node (candidates %s)",
			v.self, strings.Join(candidates, ", "))
	}
	return d
}

// resolveDoubleWriter names who keeps the writer role ("": nobody) while live
// peer p holds it too: after a node↔node cut in heartbeat mode, when both
// reached the witness, the standby took over and the writer kept the
// role. Both nodes evaluate it on the same data, in order:
//
//  1. A writable database beats a fenced one.
//  2. The longer tenure keeps the role: the writer from before the cut
//     holds every write acknowledged before it, while the node that took
//     over may have missed the last ones (asynchronous replication), so
//     it must not go on writing on a possibly stale database. Tenures are
//     durations on each node's monotonic clock (the peer's from its
//     heartbeat plus that heartbeat's age), never wall-clock instants.
//     After a cut they differ by at least deadtime.
//  3. Tenures within keepalive/2 of each other (two nodes elected at the
//     same moment): the lower name keeps the role.
//
// Between keepalive/2 and keepalive neither keeps the role: each side
// measures the difference with an error of a few milliseconds, so near a
// threshold the two could disagree, and in doubt both stepping down (and
// the election re-electing one) is safe where both keeping is not.
//
// The loser's writes during the cut are not lost: they stay in its
// binlog as errant transactions, which block its reintroduction and are
// listed by `repl status` for `repl repair`.
func resolveDoubleWriter(p peerView, v view) (kept, why string) {
	if p.hb.DBFenced != v.dbFenced {
		if v.dbFenced {
			return p.name, fmt.Sprintf("our database is fenced, %s's is not: %s keeps the role", p.name, p.name)
		}
		return v.self, fmt.Sprintf("%s's database is fenced, ours is not: %s keeps the role", p.name, v.self)
	}
	if p.hb.WriterForMs > 0 && !v.writerSince.IsZero() {
		ours := v.now.Sub(v.writerSince)
		theirs := time.Duration(p.hb.WriterForMs)*time.Millisecond + p.silent
		diff := ours - theirs
		tenures := fmt.Sprintf("writer for %s here, %s on %s", ours.Round(time.Millisecond), theirs.Round(time.Millisecond), p.name)
		band := v.cfg.Keepalive
		switch {
		case diff > band:
			return v.self, tenures + ": the longer tenure (" + v.self + ") keeps the role"
		case diff < -band:
			return p.name, tenures + ": the longer tenure (" + p.name + ") keeps the role"
		case diff > band/2 || diff < -band/2:
			return "", tenures + ": too close to order safely, both step down and the election picks one"
		}
		if v.self < p.name {
			return v.self, tenures + ": same tenure, the lower name (" + v.self + ") keeps the role"
		}
		return p.name, tenures + ": same tenure, the lower name (" + p.name + ") keeps the role"
	}
	// A peer of an older version announces no tenure: the name decides.
	if v.self < p.name {
		return v.self, "the lower name (" + v.self + ") keeps the role"
	}
	return p.name, "the lower name (" + p.name + ") keeps the role"
}

// releaseBlocks says why a standby must not take the writer role because
// a release is incomplete, ours or a peer's.
func releaseBlocks(v view) (string, bool) {
	if v.unreleased != "" {
		return "release incomplete: " + v.unreleased + " may still be up on this node (stop failed): not taking the writer role until a retried stop succeeds", true
	}
	return peerUnreleased(v)
}

// peerUnreleased: the first rule is never two writers, so a peer whose
// stop of a resource failed blocks our takeover for as long as it is
// alive and says so: its VIP or service may still be up, and ours would
// be a second one. It retries the stop and tells us when it is done (its
// next heartbeat lists nothing).
//
// A peer that went silent blocks only until it is gone (deadtime +
// takeover_margin, or deadtime with its heartbeat port closed), exactly
// like a silent writer in rule 7, and from then on the usual rules apply.
// Waiting longer would block failover forever on a dead node's stale
// claim without protecting anything the existing rules do not already
// protect:
//
//   - isolated (no peer, no witness): rule 1 fenced it at deadtime; its
//     self-fence releases the group again and the fencer keeps retrying
//     with escalation, counting an unreleased resource as "not holding"
//     (selffence.go, verify), loud in /status, /health and metrics;
//   - cut from us only, witness still reachable: the same situation as a
//     writer behind such a cut, which we take over from too (heartbeat
//     mode without an arbiter cannot tell it from a dead peer); the cut's
//     double holder is reported when it heals;
//   - daemon dead (crash, kill, port closed): nobody retries its stop any
//     more; what it left behind is what a crashed writer leaves behind,
//     and its next start stops it (ReleaseLeftovers) before doing anything.
//
// The same applies with an arbiter (decideArbiter, A5): the releasing
// node does not campaign, and a silent one is waited for until gone.
func peerUnreleased(v view) (string, bool) {
	for _, p := range v.peers {
		if !p.unreleased() {
			continue
		}
		list := strings.Join(p.hb.Unreleased, ", ")
		switch {
		case p.alive:
			return fmt.Sprintf("peer %s has not released %s (its stop failed; it retries): not taking the writer role while it may still hold them", p.name, list), true
		case !p.gone(v.cfg):
			return fmt.Sprintf("peer %s, silent for %s, last reported %s not released: waiting until it is gone (deadtime + takeover_margin)", p.name, p.silent.Round(time.Millisecond), list), true
		}
	}
	return "", false
}

// eligibleStandby names a live standby that may take the writer role
// (the one a writer that should not keep it hands over to).
func eligibleStandby(peers []peerView) (string, bool) {
	for _, p := range peers {
		if p.alive && !p.leaving() && p.hb.Eligible && p.hb.Role == RoleStandby {
			return p.name, true
		}
	}
	return "", false
}

func peerSilence(peers []peerView) string {
	var parts []string
	for _, p := range peers {
		switch {
		case p.leaving():
			parts = append(parts, p.name+" shut down cleanly")
		case !p.heard:
			parts = append(parts, fmt.Sprintf("%s never heard (%s)", p.name, p.silent.Round(time.Millisecond)))
		case p.portClosed:
			parts = append(parts, fmt.Sprintf("%s silent for %s, its daemon not running (heartbeat port closed)", p.name, p.silent.Round(time.Millisecond)))
		default:
			parts = append(parts, fmt.Sprintf("%s silent for %s", p.name, p.silent.Round(time.Millisecond)))
		}
	}
	return "peer " + strings.Join(parts, ", ")
}
