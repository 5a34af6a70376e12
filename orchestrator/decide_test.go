package orchestrator

import (
	"strings"
	"testing"
	"time"
)

func testCfg() ClusterConfig {
	c := ClusterConfig{Keepalive: 100 * time.Millisecond, Deadtime: 500 * time.Millisecond}
	c.SetDefaults()
	return c
}

// baseView: node b, decided, long uptime, witness configured and seen.
func baseView(role string, peers ...peerView) view {
	now := time.Now()
	return view{
		observation: observation{now: now, startedAt: now.Add(-time.Minute),
			witnessConfigured: true, witnessSeen: true, witnessNames: "tcp://w", peers: peers},
		cfg: testCfg(), self: "b", preferred: "a", role: role, decided: true,
	}
}

func alivePeer(name, role string, eligible bool) peerView {
	return peerView{name: name, heard: true, alive: true, aliveFor: time.Minute, silent: 10 * time.Millisecond,
		hb: &Heartbeat{Node: name, Role: role, Eligible: eligible}}
}

func silentPeer(name, role string, silent time.Duration) peerView {
	return peerView{name: name, heard: true, silent: silent, hb: &Heartbeat{Node: name, Role: role}}
}

func TestDecideRules(t *testing.T) {
	cfg := testCfg()
	gone := cfg.Deadtime + cfg.TakeoverMargin + time.Millisecond
	withinMargin := cfg.Deadtime + cfg.TakeoverMargin/2

	tests := []struct {
		name   string
		v      view
		want   string
		reason string
	}{
		{"election: lower-named eligible peer wins", baseView(RoleStandby, alivePeer("a", RoleStandby, true)), RoleStandby, ""},
		{"election: lower peer ineligible, we win", baseView(RoleStandby, alivePeer("a", RoleStandby, false)), RoleWriter, "election"},
		{"current writer keeps the role", baseView(RoleWriter, alivePeer("a", RoleStandby, true)), RoleWriter, ""},
		{"standby stays behind a live writer", baseView(RoleStandby, alivePeer("a", RoleWriter, false)), RoleStandby, ""},
		{"peer gone, witness seen: take over", baseView(RoleStandby, silentPeer("a", RoleWriter, gone)), RoleWriter, "silent for"},
		{"peer dead but within margin: wait", baseView(RoleStandby, silentPeer("a", RoleWriter, withinMargin)), RoleStandby, ""},
		{"peer's daemon not running (port closed), past deadtime: take over without the margin", func() view {
			p := silentPeer("a", RoleWriter, cfg.Deadtime+time.Millisecond)
			p.portClosed = true
			return baseView(RoleStandby, p)
		}(), RoleWriter, "daemon not running"},
		{"peer's port closed but within deadtime: wait (a restarting daemon keeps the role)", func() view {
			p := silentPeer("a", RoleWriter, cfg.Deadtime/2)
			p.portClosed = true
			return baseView(RoleStandby, p)
		}(), RoleStandby, ""},
		{"peer left cleanly: take over at once", func() view {
			p := alivePeer("a", RoleStandby, false)
			p.hb.Leaving = true
			return baseView(RoleStandby, p)
		}(), RoleWriter, "shut down cleanly"},
		{"isolated: no peer, no witness: fence", func() view {
			v := baseView(RoleWriter, silentPeer("a", RoleStandby, cfg.Deadtime))
			v.witnessSeen = false
			return v
		}(), RoleFenced, "isolated"},
		{"no witness configured: take over without fencing", func() view {
			v := baseView(RoleStandby, silentPeer("a", RoleWriter, gone))
			v.witnessConfigured, v.witnessSeen = false, false
			return v
		}(), RoleWriter, "no witness configured"},
		{"own database fenced: no takeover", func() view {
			v := baseView(RoleStandby, silentPeer("a", RoleWriter, gone))
			v.dbFenced = true
			return v
		}(), RoleStandby, ""},
		{"own database fenced: takeover after takeover_wait", func() view {
			v := baseView(RoleStandby, silentPeer("a", RoleWriter, gone+2*time.Second))
			v.dbFenced, v.cfg.TakeoverWait = true, time.Second
			return v
		}(), RoleWriter, "takeover_wait"},
		{"own database fenced: still inside takeover_wait", func() view {
			v := baseView(RoleStandby, silentPeer("a", RoleWriter, gone+500*time.Millisecond))
			v.dbFenced, v.cfg.TakeoverWait = true, time.Second
			return v
		}(), RoleStandby, ""},
		// Datagrams failing authentication never reach the observation (a
		// forger could send them from a dead peer's address), so a peer
		// with a wrong key looks exactly like a dead one.
		{"peer with a wrong key looks dead: takeover", baseView(RoleStandby, silentPeer("a", RoleWriter, gone)), RoleWriter, "silent"},
		{"two writers: the peer's longer tenure wins", func() view {
			v := baseView(RoleWriter, alivePeer("a", RoleWriter, false))
			v.writerSince = v.now.Add(-time.Second)
			v.peers[0].hb.WriterForMs = time.Hour.Milliseconds()
			return v
		}(), RoleStandby, "longer tenure (a)"},
		{"two writers: our tenure is longer, keep", func() view {
			v := baseView(RoleWriter, alivePeer("a", RoleWriter, false))
			v.writerSince = v.now.Add(-time.Hour)
			v.peers[0].hb.WriterForMs = time.Second.Milliseconds()
			return v
		}(), RoleWriter, ""},
		{"two writers: fenced database loses", func() view {
			v := baseView(RoleWriter, alivePeer("a", RoleWriter, false))
			v.writerSince = v.now.Add(-time.Hour)
			v.peers[0].hb.WriterForMs = time.Second.Milliseconds()
			v.dbFenced = true
			return v
		}(), RoleStandby, "fenced"},
		{"two writers: the heartbeat's age counts in the peer's tenure", func() view {
			p := alivePeer("a", RoleWriter, false)
			p.silent = 300 * time.Millisecond
			v := baseView(RoleWriter, p)
			v.writerSince = v.now.Add(-time.Second)
			v.peers[0].hb.WriterForMs = 900 // 900ms + 300ms old = 1.2s > 1s + keepalive
			return v
		}(), RoleStandby, "longer tenure (a)"},
		{"two writers: same tenure, the lower name (peer a) keeps it", func() view {
			v := baseView(RoleWriter, alivePeer("a", RoleWriter, false))
			v.writerSince = v.now.Add(-time.Second)
			v.peers[0].hb.WriterForMs = 1010
			return v
		}(), RoleStandby, "lower name (a)"},
		{"two writers: same tenure, our lower name keeps it", func() view {
			v := baseView(RoleWriter, alivePeer("c", RoleWriter, false))
			v.writerSince = v.now.Add(-time.Second)
			v.peers[0].hb.WriterForMs = 990
			return v
		}(), RoleWriter, ""},
		{"two writers: too close to order, step down even with the lower name", func() view {
			v := baseView(RoleWriter, alivePeer("c", RoleWriter, false))
			v.writerSince = v.now.Add(-time.Second)
			v.peers[0].hb.WriterForMs = 1070 // keepalive 100ms: 70ms is in the doubt band
			return v
		}(), RoleStandby, "both step down"},
		{"two writers: a peer without tenure (older version): the name decides", func() view {
			v := baseView(RoleWriter, alivePeer("a", RoleWriter, false))
			v.writerSince = v.now.Add(-time.Hour)
			return v
		}(), RoleStandby, "lower name (a)"},
		{"writer with fenced database hands over to an eligible peer", func() view {
			v := baseView(RoleWriter, alivePeer("a", RoleStandby, true))
			v.dbFenced, v.dbFencedSince = true, v.now.Add(-time.Second)
			return v
		}(), RoleStandby, "handing over"},
		{"auto_failback off: writer keeps despite preferred peer", baseView(RoleWriter, alivePeer("a", RoleStandby, true)), RoleWriter, ""},
		{"auto_failback on: hand back after failback_hold", func() view {
			v := baseView(RoleWriter, alivePeer("a", RoleStandby, true))
			v.cfg.AutoFailback, v.cfg.FailbackHold = true, 30*time.Second
			return v
		}(), RoleStandby, "auto_failback"},
		{"auto_failback on: preferred back too recently", func() view {
			v := baseView(RoleWriter, alivePeer("a", RoleStandby, true))
			v.cfg.AutoFailback, v.cfg.FailbackHold = true, 30*time.Second
			v.peers[0].aliveFor = 5 * time.Second
			return v
		}(), RoleWriter, ""},
		{"fenced node returns when the peer is back", baseView(RoleFenced, alivePeer("a", RoleWriter, false)), RoleStandby, "peer a is back"},
		{"fenced node stays fenced while isolated", func() view {
			v := baseView(RoleFenced, silentPeer("a", RoleWriter, time.Minute))
			v.witnessSeen = false
			return v
		}(), RoleFenced, ""},
		{"back from isolation via the witness only: no takeover", func() view {
			v := baseView(RoleStandby, silentPeer("a", RoleStandby, time.Minute))
			v.wasIsolated = true
			return v
		}(), RoleStandby, ""},
		{"failed resource start: hold down", func() view {
			v := baseView(RoleStandby, silentPeer("a", RoleWriter, gone))
			v.failHold = true
			return v
		}(), RoleStandby, ""},
		{"startup: wait for unheard peers", func() view {
			v := baseView(RoleStandby, peerView{name: "a", silent: 100 * time.Millisecond})
			v.decided, v.startedAt = false, v.now.Add(-100*time.Millisecond)
			return v
		}(), RoleStandby, ""},
		{"startup: nobody heard after the wait, witness seen: take over", func() view {
			v := baseView(RoleStandby, peerView{name: "a", silent: gone})
			v.decided, v.startedAt = false, v.now.Add(-gone)
			return v
		}(), RoleWriter, "never heard"},
		{"election waits for a silent ex-writer to be gone", baseView(RoleStandby,
			silentPeer("a", RoleWriter, withinMargin), alivePeer("c", RoleStandby, true)), RoleStandby, ""},

		// Eligibility from the resource monitors and track checks.
		{"ineligible writer gives the role up to an eligible peer", func() view {
			v := baseView(RoleWriter, alivePeer("a", RoleStandby, true))
			v.ineligible = "resource /etc/init.d/app failed (restart limit reached)"
			return v
		}(), RoleStandby, "restart limit reached"},
		{"ineligible writer keeps the role with no peer to take it", func() view {
			v := baseView(RoleWriter, silentPeer("a", RoleStandby, gone))
			v.ineligible = "track gw failing (exited 1)"
			return v
		}(), RoleWriter, ""},
		{"ineligible writer keeps the role while the peer is ineligible (its database fenced)", func() view {
			v := baseView(RoleWriter, alivePeer("a", RoleStandby, false))
			v.ineligible = "resource x failed"
			return v
		}(), RoleWriter, ""},
		{"ineligible writer does not hand over to a leaving peer", func() view {
			p := alivePeer("a", RoleStandby, true)
			p.hb.Leaving = true
			v := baseView(RoleWriter, p)
			v.ineligible = "resource x failed"
			return v
		}(), RoleWriter, ""},
		{"ineligible writer with a fenced database hands over to an eligible peer", func() view {
			v := baseView(RoleWriter, alivePeer("a", RoleStandby, true))
			v.ineligible, v.dbFenced = "track gw failing", true
			return v
		}(), RoleStandby, "handing the writer role over to eligible peer a"},
		{"unchecked tracks do not make a writer give up", func() view {
			v := baseView(RoleWriter, alivePeer("a", RoleStandby, true))
			v.tracksPending = "track gw not checked yet"
			return v
		}(), RoleWriter, ""},
		{"ineligible standby: peer gone, no takeover", func() view {
			v := baseView(RoleStandby, silentPeer("a", RoleWriter, gone))
			v.ineligible = "track gw failing"
			return v
		}(), RoleStandby, ""},
		{"ineligible standby: peer left cleanly, no takeover", func() view {
			p := alivePeer("a", RoleStandby, false)
			p.hb.Leaving = true
			v := baseView(RoleStandby, p)
			v.ineligible = "resource x failed"
			return v
		}(), RoleStandby, ""},
		{"ineligible standby is no election candidate", func() view {
			v := baseView(RoleStandby, alivePeer("a", RoleStandby, false))
			v.ineligible = "resource x failed"
			return v
		}(), RoleStandby, ""},
		{"unchecked tracks hold back a takeover", func() view {
			v := baseView(RoleStandby, silentPeer("a", RoleWriter, gone))
			v.tracksPending = "track gw not checked yet"
			return v
		}(), RoleStandby, ""},
		{"ineligible lower-named node: the eligible peer is elected", func() view {
			v := baseView(RoleStandby, alivePeer("c", RoleStandby, true))
			v.self, v.ineligible = "a", "resource x failed"
			return v
		}(), RoleStandby, ""},
		{"fenced node leaves the fenced role even when ineligible", func() view {
			v := baseView(RoleFenced, alivePeer("a", RoleWriter, false))
			v.ineligible = "resource x failed"
			return v
		}(), RoleStandby, "peer a is back"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := decide(tc.v)
			if d.role != tc.want {
				t.Fatalf("role %s, want %s (reason %q, waiting %q)", d.role, tc.want, d.reason, d.waiting)
			}
			if tc.reason != "" && !strings.Contains(d.reason, tc.reason) {
				t.Fatalf("reason %q does not mention %q", d.reason, tc.reason)
			}
		})
	}
}

// Both nodes evaluating the same symmetric situation agree on one writer.
// After a healed cut both writers detect the double writer in the same
// decision that resolves it, agree on who keeps the role, and whatever
// the tenures, never both keep it.
func TestDecideDoubleWriterBothSidesAgree(t *testing.T) {
	for _, tc := range []struct {
		name         string
		aFor, bFor   time.Duration
		wantKept     string
		bothStepDown bool
	}{
		{"a wrote before the cut, b took over during it", time.Hour, 5 * time.Second, "a", false},
		{"b wrote before the cut", 5 * time.Second, time.Hour, "b", false},
		{"same tenure", time.Second, time.Second, "a", false},
		{"within the doubt band", time.Second, time.Second + 70*time.Millisecond, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mk := func(self string, own, peers time.Duration, peer string) view {
				p := alivePeer(peer, RoleWriter, false)
				p.hb.WriterForMs = peers.Milliseconds()
				v := baseView(RoleWriter, p)
				v.self, v.writerSince = self, v.now.Add(-own)
				return v
			}
			da := decide(mk("a", tc.aFor, tc.bFor, "b"))
			db := decide(mk("b", tc.bFor, tc.aFor, "a"))
			if da.double == nil || db.double == nil {
				t.Fatalf("double writer not reported: a %+v, b %+v", da.double, db.double)
			}
			keep := map[string]bool{"a": da.role == RoleWriter, "b": db.role == RoleWriter}
			if keep["a"] && keep["b"] {
				t.Fatalf("both keep the writer role: %q / %q", da.double.why, db.double.why)
			}
			if tc.bothStepDown {
				if keep["a"] || keep["b"] {
					t.Fatalf("one kept the role in the doubt band: a %s, b %s", da.role, db.role)
				}
				return
			}
			if !keep[tc.wantKept] || da.double.kept != tc.wantKept || db.double.kept != tc.wantKept {
				t.Fatalf("kept: a says %s (%s), b says %s (%s); want %s", da.double.kept, da.role, db.double.kept, db.role, tc.wantKept)
			}
		})
	}
}

func TestDecideElectionAgreement(t *testing.T) {
	for _, fencedA := range []bool{false, true} {
		va := baseView(RoleStandby, alivePeer("b", RoleStandby, true))
		va.self, va.dbFenced = "a", fencedA
		vb := baseView(RoleStandby, alivePeer("a", RoleStandby, !fencedA))
		writers := 0
		for _, v := range []view{va, vb} {
			if decide(v).role == RoleWriter {
				writers++
			}
		}
		if writers != 1 {
			t.Fatalf("fencedA=%v: %d writers elected", fencedA, writers)
		}
	}
}

// The role stays; decide also says when to lift our own database fence.
func TestDecideUnfence(t *testing.T) {
	tests := []struct {
		name string
		v    view
		want bool
	}{
		{"self-fenced, peer back for a while: lift", func() view {
			v := baseView(RoleStandby, alivePeer("a", RoleWriter, false))
			v.selfFenced = true
			return v
		}(), true},
		{"our fence from before a restart, peer back: lift", func() view {
			v := baseView(RoleStandby, alivePeer("a", RoleWriter, false))
			v.dbFenced, v.dbReason = true, selfFencePrefix+"isolated"
			return v
		}(), true},
		{"someone else's fence: keep", func() view {
			v := baseView(RoleStandby, alivePeer("a", RoleWriter, false))
			v.dbFenced, v.dbReason = true, "lag 7s over max_lag 5s"
			return v
		}(), false},
		{"peer back only a moment ago: keep", func() view {
			v := baseView(RoleStandby, alivePeer("a", RoleWriter, false))
			v.selfFenced, v.peers[0].aliveFor = true, v.cfg.Keepalive
			return v
		}(), false},
		{"witness back but no peer: keep", func() view {
			v := baseView(RoleStandby, silentPeer("a", RoleWriter, time.Minute))
			v.selfFenced, v.wasIsolated = true, true
			return v
		}(), false},
		{"still fenced: keep", func() view {
			v := baseView(RoleFenced, silentPeer("a", RoleWriter, time.Minute))
			v.selfFenced, v.witnessSeen = true, false
			return v
		}(), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := decide(tc.v)
			if d.unfence != tc.want {
				t.Fatalf("unfence %v, want %v (role %s, reason %q)", d.unfence, tc.want, d.role, d.reason)
			}
		})
	}
}

func TestEligible(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name     string
		s        roleSnapshot
		dbFenced bool
		want     bool
	}{
		{"standby", roleSnapshot{role: RoleStandby}, false, true},
		{"writer", roleSnapshot{role: RoleWriter}, false, false},
		{"fenced", roleSnapshot{role: RoleFenced}, false, false},
		{"draining", roleSnapshot{role: RoleStandby, draining: true}, false, false},
		{"leaving", roleSnapshot{role: RoleStandby, leaving: true}, false, false},
		{"database fenced", roleSnapshot{role: RoleStandby}, true, false},
		{"holding down after a failed start", roleSnapshot{role: RoleStandby, failHoldUntil: now.Add(time.Second)}, false, false},
		{"hold-down over", roleSnapshot{role: RoleStandby, failHoldUntil: now}, false, true},
		{"resource failure or failing track", roleSnapshot{role: RoleStandby, ineligible: "track gw failing"}, false, false},
	}
	for _, tc := range tests {
		if got := eligible(tc.s, tc.dbFenced, now); got != tc.want {
			t.Errorf("%s: eligible %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFailBackoff(t *testing.T) {
	deadtime := time.Second
	for _, tc := range []struct{ prev, want time.Duration }{
		{0, 2 * time.Second},
		{2 * time.Second, 4 * time.Second},
		{40 * time.Second, time.Minute},
		{time.Minute, time.Minute},
	} {
		if got := failBackoff(tc.prev, deadtime); got != tc.want {
			t.Errorf("after %s: %s, want %s", tc.prev, got, tc.want)
		}
	}
}

// The waiting message names what keeps a standby from taking over, or an
// ineligible writer from handing over.
func TestDecideIneligibleSaysWhy(t *testing.T) {
	cfg := testCfg()
	v := baseView(RoleStandby, silentPeer("a", RoleWriter, cfg.Deadtime+cfg.TakeoverMargin+time.Millisecond))
	v.ineligible = "track gw failing (exited 1)"
	if d := decide(v); d.role != RoleStandby || !strings.Contains(d.waiting, "track gw failing") {
		t.Fatalf("role %s waiting %q", d.role, d.waiting)
	}
	v.ineligible, v.tracksPending = "", "track gw not checked yet"
	if d := decide(v); d.role != RoleStandby || !strings.Contains(d.waiting, "not checked yet") {
		t.Fatalf("role %s waiting %q", d.role, d.waiting)
	}
	w := baseView(RoleWriter, alivePeer("a", RoleStandby, false))
	w.ineligible = "resource x failed"
	if d := decide(w); d.role != RoleWriter || !strings.Contains(d.waiting, "no eligible peer") {
		t.Fatalf("writer: role %s waiting %q", d.role, d.waiting)
	}
}

// unreleasedPeer: a live standby whose step-down could not stop what it
// lists; it announces itself not eligible (its heartbeat says so).
func unreleasedPeer(name string, res ...string) peerView {
	p := alivePeer(name, RoleStandby, false)
	p.hb.Unreleased = res
	return p
}

// Never two writers: a peer that reports resources it could not stop
// blocks our takeover while it is alive, and while it is silent but not
// yet gone; a dead peer's stale claim blocks nothing once it is gone
// (see peerUnreleased for why the existing rules make that safe).
func TestDecideUnreleasedRelease(t *testing.T) {
	cfg := testCfg()
	gone := cfg.Deadtime + cfg.TakeoverMargin + time.Millisecond
	withinMargin := cfg.Deadtime + cfg.TakeoverMargin/2
	withUnreleased := func(p peerView, res ...string) peerView {
		p.hb.Unreleased = res
		return p
	}
	lead := func(v view) view {
		v.arbiter = arbiterView{configured: true, tried: true, connected: true, leader: true, leaderName: v.self, term: 7,
			validFor: time.Second, renewEvery: 100 * time.Millisecond}
		return v
	}
	tests := []struct {
		name    string
		v       view
		want    string
		waiting string // substring of d.waiting when the role stays
	}{
		{"live peer with an unreleased VIP: no election", baseView(RoleStandby, unreleasedPeer("a", "10.0.0.10/24@eth0")),
			RoleStandby, "peer a has not released 10.0.0.10/24@eth0"},
		{"same peer once its stop succeeded: elected", baseView(RoleStandby, alivePeer("a", RoleStandby, false)), RoleWriter, ""},
		{"live lower-named standby we would outrank anyway: still blocked", func() view {
			v := baseView(RoleStandby, unreleasedPeer("c", "/etc/init.d/app"))
			v.self = "a"
			return v
		}(), RoleStandby, "peer c has not released"},
		{"a goodbye listing unreleased resources is no clean exit", func() view {
			p := unreleasedPeer("a", "/etc/init.d/app")
			p.hb.Leaving = true
			return baseView(RoleStandby, p)
		}(), RoleStandby, "has not released"},
		{"silent peer with an unreleased claim, within the margin: wait", baseView(RoleStandby,
			withUnreleased(silentPeer("a", RoleStandby, withinMargin), "/etc/init.d/app")), RoleStandby, "waiting until it is gone"},
		{"silent peer with an unreleased claim, gone: take over (rule 6)", baseView(RoleStandby,
			withUnreleased(silentPeer("a", RoleStandby, gone), "/etc/init.d/app")), RoleWriter, ""},
		{"silent claim with its port closed past deadtime: take over", func() view {
			p := withUnreleased(silentPeer("a", RoleStandby, cfg.Deadtime+time.Millisecond), "/etc/init.d/app")
			p.portClosed = true
			return baseView(RoleStandby, p)
		}(), RoleWriter, ""},
		{"silent unreleased peer blocks the election among the others", baseView(RoleStandby,
			withUnreleased(silentPeer("a", RoleStandby, withinMargin), "/etc/init.d/app"), alivePeer("c", RoleStandby, true)),
			RoleStandby, "last reported /etc/init.d/app not released"},
		{"our own release incomplete: no takeover even with every peer gone", func() view {
			v := baseView(RoleStandby, silentPeer("a", RoleWriter, gone))
			v.unreleased = "/etc/init.d/app"
			return v
		}(), RoleStandby, "release incomplete: /etc/init.d/app may still be up on this node"},
		{"our own release incomplete: no election", func() view {
			v := baseView(RoleStandby, alivePeer("c", RoleStandby, true))
			v.self, v.unreleased = "a", "/etc/init.d/app"
			return v
		}(), RoleStandby, "release incomplete"},
		{"the writer keeps its role beside a releasing peer", baseView(RoleWriter, unreleasedPeer("a", "/etc/init.d/app")), RoleWriter, ""},
		{"isolation still fences a node whose release is incomplete", func() view {
			v := baseView(RoleStandby, silentPeer("a", RoleStandby, time.Minute))
			v.unreleased, v.witnessSeen = "/etc/init.d/app", false
			return v
		}(), RoleFenced, ""},
		{"arbiter: won the election, peer still releasing: wait", lead(baseView(RoleStandby, unreleasedPeer("a", "/etc/init.d/app"))),
			RoleStandby, "won the etcd election but peer a has not released"},
		{"arbiter: won the election, our own release incomplete: wait", func() view {
			v := lead(baseView(RoleStandby, alivePeer("a", RoleStandby, false)))
			v.unreleased = "/etc/init.d/app"
			return v
		}(), RoleStandby, "release incomplete"},
		{"arbiter: won, the releasing peer is gone: take over", lead(baseView(RoleStandby,
			withUnreleased(silentPeer("a", RoleStandby, gone), "/etc/init.d/app"))), RoleWriter, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := decide(tc.v)
			if d.role != tc.want {
				t.Fatalf("role %s, want %s (reason %q, waiting %q)", d.role, tc.want, d.reason, d.waiting)
			}
			if tc.waiting != "" && !strings.Contains(d.waiting, tc.waiting) {
				t.Fatalf("waiting %q does not mention %q", d.waiting, tc.waiting)
			}
		})
	}
}

// The release retry's escalation fences our database; the fence is not
// lifted while the release is incomplete, however long the peer is back.
func TestDecideKeepsReleaseFence(t *testing.T) {
	v := baseView(RoleStandby, alivePeer("a", RoleWriter, false))
	v.selfFenced, v.unreleased = true, "/etc/init.d/app"
	if d := decide(v); d.unfence {
		t.Fatal("own fence lifted while the release is incomplete")
	}
	v.unreleased = ""
	if d := decide(v); !d.unfence {
		t.Fatal("own fence kept after the release completed and the peer is back")
	}
	s := roleSnapshot{role: RoleStandby, release: &ReleaseStatus{Resources: []string{"x"}}}
	if eligible(s, false, time.Now()) {
		t.Fatal("a node whose release is incomplete announces itself eligible")
	}
}
