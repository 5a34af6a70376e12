package orchestrator

import (
	"fmt"
	"time"
)

// decideArbiter replaces rules 1 and 3-7 of decideRole when an arbiter is
// configured: the writer is whoever holds the etcd election with a lease
// valid beyond the demotion deadline, and nobody else. Heartbeats and
// witnesses still feed /status, the startup wait and the handover of a
// writer whose database is fenced, but they never make a writer:
//
//	A1. A writer that is not the leader any more leaves the role: fenced
//	    when its lease is not renewed in time (cut off from etcd, quorum
//	    lost: it may be cut off from its clients too, and etcd grants the
//	    election to another node once the lease expires), standby when the
//	    lease is fine but the election key is gone (it resigned).
//	A2. Startup: no decision until the arbiter answered once (or
//	    deadtime + margin passed) and every peer was heard (or that wait
//	    passed).
//	A3. A fenced node returns to standby once etcd answers again.
//	A4. A writer hands over when an eligible peer waits (it stops
//	    campaigning and resigns; the peer wins) and it is ineligible (a
//	    resource it could not recover, a failing track: rule 5's
//	    eligibility) or its database is fenced. An ineligible writer with
//	    no eligible peer keeps the role, as in rule 5.
//	A5. A standby that won the election takes over when eligible: not
//	    ineligible, no track unchecked, database not fenced, no hold
//	    after a failed start, no release incomplete here or on a peer
//	    (releaseBlocks). (campaignEligible keeps such a node out of the
//	    election in the first place; this covers the race.)
func decideArbiter(v view) decision {
	d := decision{role: v.role, decided: v.decided}
	a, cfg := v.arbiter, v.cfg
	uptime := v.now.Sub(v.startedAt)

	// A1.
	if v.role == RoleWriter && !a.leader {
		d.decided = true
		if a.connected && a.validFor > 0 {
			d.role = RoleStandby
			d.reason = fmt.Sprintf("etcd arbiter: this node no longer holds the election (leader %s)", orNone(a.leaderName))
			return d
		}
		d.role = RoleFenced
		d.reason = fmt.Sprintf("etcd arbiter: lease not renewed in time (%s): demoting before etcd can grant the election to another node", orNone(a.lastErr))
		return d
	}

	// A2.
	if !d.decided {
		wait := cfg.Deadtime + cfg.TakeoverMargin
		heardAll := true
		for _, p := range v.peers {
			heardAll = heardAll && p.heard
		}
		if uptime < wait && (!a.tried || !heardAll) {
			return d
		}
		d.decided = true
	}

	// A3.
	if v.role == RoleFenced {
		if a.connected {
			d.role = RoleStandby
			d.reason = fmt.Sprintf("etcd arbiter reachable again (leader %s)", orNone(a.leaderName))
		}
		return d
	}

	// A4.
	if v.role == RoleWriter {
		if v.ineligible != "" {
			if name, ok := eligibleStandby(v.peers); ok {
				d.role = RoleStandby
				d.reason = fmt.Sprintf("not eligible: %s; handing the etcd election over to eligible peer %s", v.ineligible, name)
				return d
			}
			d.waiting = "not eligible: " + v.ineligible + "; no eligible peer to hand the etcd election to, keeping the writer role"
			return d
		}
		if v.dbFenced && v.now.Sub(v.dbFencedSince) >= cfg.Deadtime {
			if name, ok := eligibleStandby(v.peers); ok {
				d.role = RoleStandby
				d.reason = fmt.Sprintf("own database fenced for %s while peer %s is eligible; handing the etcd election over",
					v.now.Sub(v.dbFencedSince).Round(time.Millisecond), name)
				return d
			}
		}
		return d
	}

	// A5.
	if a.leader {
		if v.dbFenced || v.failHold {
			d.waiting = "won the etcd election but not eligible (database fenced or holding down after a failed start): resigning"
			return d
		}
		if v.ineligible != "" {
			d.waiting = "won the etcd election but not eligible: " + v.ineligible + ": resigning"
			return d
		}
		if v.tracksPending != "" {
			d.waiting = "won the etcd election but not eligible yet: " + v.tracksPending + ": resigning"
			return d
		}
		if why, blocked := releaseBlocks(v); blocked {
			// Holding the election meanwhile is harmless: the releasing
			// node does not campaign (its heartbeat says not eligible).
			d.waiting = "won the etcd election but " + why
			return d
		}
		if a.validFor < 2*a.renewEvery {
			// Renewals are late: taking over now could mean demoting
			// right after.
			d.waiting = fmt.Sprintf("won the etcd election but the lease is valid for only %s: waiting for a renewal", a.validFor.Round(time.Millisecond))
			return d
		}
		d.role = RoleWriter
		d.reason = fmt.Sprintf("etcd arbiter: won the election (term %d, lease valid for %s more)", a.term, a.validFor.Round(time.Millisecond))
		return d
	}
	if !a.connected && a.tried {
		d.waiting = "etcd arbiter unreachable: " + orNone(a.lastErr)
	}
	return d
}

// campaignEligible: the role loop lets the arbiter campaign only for a
// standby that may take over now (eligible: which includes no failed
// resource and no failing track), whose tracks have all been checked
// (tracksPending == ""), and whose database the supervisor reports
// reachable, not fenced (so caught up: it fences a lagging node until it
// has caught up) and without errant transactions. A writer keeps
// campaigning (holding) until it leaves the role; an ineligible one
// leaves it through A4.
func campaignEligible(s roleSnapshot, tracksPending string, db dbObservation, hasDB bool, now time.Time) bool {
	if s.role == RoleWriter {
		return !s.draining && !s.leaving
	}
	if !eligible(s, db.fenced, now) || !s.decided || tracksPending != "" {
		return false
	}
	return !hasDB || (db.unreachable == "" && db.observed && len(db.errant) == 0)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
