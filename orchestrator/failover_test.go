package orchestrator

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

func starts(lines []string) []string {
	var out []string
	for _, l := range lines {
		if strings.HasSuffix(l, "_start") || strings.HasSuffix(l, "_stop") {
			out = append(out, l)
		}
	}
	return out
}

func TestClusterElectionAndCrashFailover(t *testing.T) {
	tc := startCluster(t, clusterOpts{})
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer holding both resources", func() bool { return len(a.held()) == 2 })
	if b.role() != RoleStandby || len(b.held()) != 0 {
		t.Fatalf("b: role %s held %v", b.role(), b.held())
	}
	if got := strings.Join(starts(readLines(t, a.calls)), " "); got != "r1_start r2_start" {
		t.Fatalf("a calls %q", got)
	}
	if !strings.Contains(a.reason(), "election") {
		t.Fatalf("a's reason %q", a.reason())
	}
	if a.repl.active.Load() != 1 || b.repl.active.Load() == 1 {
		t.Fatalf("repl active: a=%d b=%d", a.repl.active.Load(), b.repl.active.Load())
	}

	cfg := a.cfg()
	killed := time.Now()
	a.stop(errCrash)
	el := waitFor(t, 5*time.Second, "b holding both resources", func() bool { return len(b.held()) == 2 })
	took := time.Since(killed)
	t.Logf("failover (writer killed -> survivor holds resources): %s (keepalive %s, deadtime %s, margin %s)",
		took.Round(time.Millisecond), cfg.Keepalive, cfg.Deadtime, cfg.TakeoverMargin)
	_ = el
	// A crashed daemon's port is closed: its host answers b's heartbeats
	// with port unreachable, no daemon is left to fence, so b waits
	// deadtime (never less than deadtime - one keepalive after the crash)
	// but not the margin (TestClusterPartitionSelfFencesBeforeTakeover
	// covers the margin for a live, isolated writer).
	if took < cfg.Deadtime-cfg.Keepalive {
		t.Fatalf("took over after %s, before deadtime-keepalive", took)
	}
	if took >= cfg.Deadtime+cfg.TakeoverMargin+cfg.Keepalive {
		t.Errorf("took over after %s: the margin was waited for although a's daemon is gone", took)
	}
	reason := b.reason()
	if !strings.Contains(reason, "a silent for") || !strings.Contains(reason, "daemon not running") || !strings.Contains(reason, "witness reachable") {
		t.Fatalf("b's takeover reason %q", reason)
	}
	if n := metricValue(t, b.daemon.metrics.heartbeatLosses.WithLabelValues("a")); n != 1 {
		t.Fatalf("heartbeat losses %v", n)
	}
}

func TestClusterGracefulShutdownHandsOver(t *testing.T) {
	// r1's stop is slow so that the drain state is observable.
	tc := startCluster(t, clusterOpts{scripts: map[string][]string{"a": {`[ "$1" = stop ] && sleep 0.6`}}})
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })

	stopped := make(chan struct{})
	go func() { a.stop(nil); close(stopped) }()
	waitFor(t, 2*time.Second, "a draining", func() bool { return agent(t, a) == AgentDrain+"\n" })
	if code, body := getText(t, a, "/health"); code != 503 || !strings.Contains(body, "draining") {
		t.Fatalf("health while draining: %d %q", code, body)
	}
	if b.role() != RoleStandby {
		t.Fatal("b took over while a was still releasing")
	}
	<-stopped
	start := time.Now()
	waitFor(t, 5*time.Second, "b writer", func() bool { return len(b.held()) == 2 })
	cfg := b.cfg()
	if el := time.Since(start); el > cfg.Deadtime {
		t.Fatalf("takeover after a clean shutdown took %s; the leaving heartbeat should make it immediate", el)
	}
	if got := strings.Join(starts(readLines(t, a.calls)), " "); got != "r1_start r2_start r2_stop r1_stop" {
		t.Fatalf("a calls %q", got)
	}
	if !strings.Contains(b.reason(), "shut down cleanly") {
		t.Fatalf("reason %q", b.reason())
	}
}

func TestClusterPartitionSelfFencesBeforeTakeover(t *testing.T) {
	// The margin must cover one keepalive plus the isolated writer's fence
	// and release (two script stops); see the timing argument in doc.go.
	// Generous here so that the ordering, not CI's CPU contention, is tested.
	tc := startCluster(t, clusterOpts{relays: true, margin: 800 * time.Millisecond})
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	if code, _ := getText(t, a, "/health"); code != 200 || agent(t, a) != AgentUp+"\n" {
		t.Fatal("writer not healthy")
	}

	// Cut a off: its link to b and to its witness.
	tc.relays["a->b"].cut.Store(true)
	tc.relays["b->a"].cut.Store(true)
	a.witness.stop()
	cut := time.Now()

	// Sample: never both holding resources.
	both := 0
	waitFor(t, 5*time.Second, "a fenced and b writer", func() bool {
		if len(a.held()) > 0 && len(b.held()) > 0 {
			both++
		}
		return a.role() == RoleFenced && len(a.held()) == 0 && len(b.held()) == 2
	})
	fencedAt := eventTime(t, a, "role writer -> fenced")
	releasedAt := eventTime(t, a, "stopped "+a.daemon.role.act.group.Load().resources[0].Name())
	tookAt := eventTime(t, b, "role standby -> writer")
	t.Logf("a fenced %s and released %s after the cut; b took over %s after the cut",
		fencedAt.Sub(cut).Round(time.Millisecond), releasedAt.Sub(cut).Round(time.Millisecond), tookAt.Sub(cut).Round(time.Millisecond))
	if both > 0 {
		t.Fatalf("both nodes held resources in %d samples", both)
	}
	if !releasedAt.Before(tookAt) {
		t.Fatalf("a released at %s, b took over at %s: not fenced first", releasedAt, tookAt)
	}
	cfg := a.cfg()
	// Within deadtime, plus slack for CI's CPU contention.
	if d := fencedAt.Sub(cut); d > cfg.Deadtime+3*cfg.Keepalive {
		t.Fatalf("self-fence %s after the cut, want about deadtime %s", d, cfg.Deadtime)
	}
	if calls := a.repl.fenceCalls(); !slices.Equal(calls, []string{"db1"}) {
		t.Fatalf("a fenced databases %v, want [db1]", calls)
	}
	if got := strings.Join(starts(readLines(t, a.calls)), " "); got != "r1_start r2_start r2_stop r1_stop" {
		t.Fatalf("a calls %q", got)
	}
	if code, body := getText(t, a, "/health"); code != 503 || !strings.Contains(body, "isolated") {
		t.Fatalf("fenced health: %d %q", code, body)
	}
	if got := agent(t, a); got != AgentMaint+"\n" {
		t.Fatalf("fenced agent %q", got)
	}
	var st Status
	getJSON(t, a, "/status", &st)
	if st.Role != RoleFenced || st.Health.OK || st.Witnesses[0].Reachable || st.Peers[0].Alive {
		t.Fatalf("fenced status %+v", st)
	}
	_, metrics := getText(t, a, "/metrics")
	for _, want := range []string{`lockstep_role{role="fenced"} 1`, "lockstep_fenced 1", "lockstep_healthy 0", `lockstep_witness_up{witness=`,
		`lockstep_heartbeat_losses_total{peer="b"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("metrics lack %q", want)
		}
	}

	// The witness comes back first: a leaves the fenced role but must not
	// take over from b, which it still cannot hear.
	a.witness.start(t)
	waitFor(t, 5*time.Second, "a standby", func() bool { return a.role() == RoleStandby })
	eventTime(t, a, "was isolated and has not heard any peer since")
	time.Sleep(cfg.Deadtime + cfg.TakeoverMargin)
	if a.role() != RoleStandby || len(a.held()) != 0 {
		t.Fatalf("a (%s) took over from a peer it cannot hear", a.role())
	}
	if !strings.Contains(a.reason(), "no longer isolated: witness reachable") {
		t.Fatalf("reason %q", a.reason())
	}

	// Heal the link: one writer, b.
	tc.relays["a->b"].cut.Store(false)
	tc.relays["b->a"].cut.Store(false)
	waitFor(t, 5*time.Second, "a hears b", func() bool {
		var st Status
		getJSON(t, a, "/status", &st)
		return st.Peers[0].Alive
	})
	time.Sleep(3 * cfg.Keepalive)
	if w := tc.writers(); !slices.Equal(w, []string{"b"}) {
		t.Fatalf("writers after heal %v", w)
	}
	if calls := a.repl.fenceCalls(); !slices.Equal(calls, []string{"db1", "unfence db1"}) {
		t.Fatalf("a's fence calls after heal %v", calls)
	}
	waitFor(t, 2*time.Second, "a healthy again", func() bool { code, _ := getText(t, a, "/health"); return code == 200 })
}

func TestClusterNoTakeoverWhileOwnDatabaseFenced(t *testing.T) {
	wait := 1500 * time.Millisecond
	tc := startCluster(t, clusterOpts{takeoverWait: wait})
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	b.repl.setFenced("db2", true)
	waitFor(t, 2*time.Second, "b unhealthy", func() bool { code, _ := getText(t, b, "/health"); return code == 503 })
	if got := agent(t, b); got != AgentDown+"\n" {
		t.Fatalf("agent for a fenced database %q", got)
	}
	_, body := getText(t, b, "/health")
	if !strings.Contains(body, "database db2 fenced") {
		t.Fatalf("health body %q", body)
	}
	cfg := b.cfg()
	killed := time.Now()
	a.stop(errCrash)
	time.Sleep(cfg.Deadtime + cfg.TakeoverMargin + 300*time.Millisecond)
	if b.role() != RoleStandby {
		t.Fatalf("b took over with a fenced database before takeover_wait: %s", b.reason())
	}
	eventTime(t, b, "own database is fenced: waiting for it to catch up")
	waitFor(t, 5*time.Second, "b writer after takeover_wait", func() bool { return len(b.held()) == 2 })
	if el := time.Since(killed); el < cfg.Deadtime+cfg.TakeoverMargin+wait-cfg.Keepalive {
		t.Fatalf("took over after %s, before takeover_wait", el)
	}
	if !strings.Contains(b.reason(), "takeover_wait") {
		t.Fatalf("reason %q", b.reason())
	}
}

func TestClusterResourceFailureHandsOver(t *testing.T) {
	tc := startCluster(t, clusterOpts{
		scripts:         map[string][]string{"a": {"", `[ "$1" = start ] && sleep 30`}},
		resourceTimeout: 500 * time.Millisecond,
	})
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 10*time.Second, "b writer after a's resource hung", func() bool { return len(b.held()) == 2 })
	// A later release (e.g. a false isolation under CI load) may stop the
	// group again; stop is idempotent. No second start, though.
	if got := strings.Join(starts(readLines(t, a.calls)), " "); !strings.HasPrefix(got, "r1_start r2_start r2_stop r1_stop") ||
		strings.Count(got, "start") != 2 {
		t.Fatalf("a calls %q", got)
	}
	eventTime(t, a, "timed out")
	if a.role() != RoleStandby || !strings.Contains(a.reason(), "resource start failed") {
		t.Fatalf("a: %s %q", a.role(), a.reason())
	}
	var st Status
	getJSON(t, a, "/status", &st)
	if st.Resources[1].State != ResourceFailed || !strings.Contains(st.Resources[1].LastError, "timed out") {
		t.Fatalf("a resources %+v", st.Resources)
	}
}

func TestClusterWrongKeyReported(t *testing.T) {
	tc := startCluster(t, clusterOpts{wrongKey: "b"})
	a, b := tc.nodes["a"], tc.nodes["b"]
	cfg := a.cfg()
	time.Sleep(cfg.Deadtime + cfg.TakeoverMargin + 500*time.Millisecond)
	for _, n := range []*testNode{a, b} {
		at := eventTime(t, n, "failed authentication")
		_ = at
		var msg string
		for _, e := range n.daemon.events.List() {
			if strings.Contains(e.Message, "failed authentication") {
				msg = e.Message
			}
		}
		if !strings.HasPrefix(msg, "heartbeat from 127.0.0.1:") || !strings.Contains(msg, "check cluster.key_file on both nodes") {
			t.Fatalf("node %s: unclear message %q", n.name, msg)
		}
		if strings.Contains(msg, testSecret) {
			t.Fatal("secret in the log")
		}
		if v := metricValue(t, n.daemon.metrics.heartbeatRejected.WithLabelValues(rejectAuth)); v < 2 {
			t.Fatalf("node %s: auth rejections %v", n.name, v)
		}
		// Unauthenticated datagrams change no belief: they cannot be told
		// from a forger's, so the peer is not alive and nothing is
		// attributed to it.
		for _, p := range n.daemon.role.Status().Peers {
			if p.Alive || len(p.Rejected) > 0 {
				t.Fatalf("node %s: peer %s alive=%t rejected=%v from unauthenticated datagrams", n.name, p.Name, p.Alive, p.Rejected)
			}
		}
	}
}

func TestClusterForgedAndReplayedHeartbeatsIgnored(t *testing.T) {
	tc := startCluster(t, clusterOpts{relays: true})
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	waitFor(t, 5*time.Second, "b's heartbeats captured", func() bool { return len(tc.relays["b->a"].captured()) >= 6 })
	captured := tc.relays["b->a"].captured()
	attacker, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	aAddr, _ := net.ResolveUDPAddr("udp", a.daemon.role.self.Address)
	send := func(p []byte) {
		if _, err := attacker.WriteToUDP(p, aAddr); err != nil {
			t.Fatal(err)
		}
	}
	// Replays of b's genuine datagrams.
	for _, p := range captured[:5] {
		send(p)
	}
	// Forged: b's datagram claiming b is the writer, MAC not updated.
	forged := []byte(strings.Replace(string(captured[len(captured)-1]), `"role":"standby"`, `"role":"writer"`, 1))
	send(forged)
	// Validly signed but ancient (e.g. recorded long ago).
	old, _ := encodeHeartbeat(a.daemon.role.obs.key, &Heartbeat{Node: "b", Boot: 12345, Seq: 1, Time: time.Now().Add(-time.Hour).UnixNano(), Role: RoleWriter})
	send(old)
	// a's own datagram reflected back to it.
	own := tc.relays["a->b"].captured()
	send(own[len(own)-1])

	reject := a.daemon.metrics.heartbeatRejected
	waitFor(t, 2*time.Second, "rejections counted", func() bool {
		return metricValue(t, reject.WithLabelValues(rejectReplay)) >= 5 && metricValue(t, reject.WithLabelValues(rejectAuth)) >= 1 &&
			metricValue(t, reject.WithLabelValues(rejectStale)) >= 1 && metricValue(t, reject.WithLabelValues(rejectUnknown)) >= 1
	})
	// The event follows the counter; wait for it.
	for _, s := range []string{"replayed heartbeat", "failed authentication", "stale heartbeat", "claims to come from this node"} {
		waitFor(t, 2*time.Second, "event "+s+" in\n"+dumpEvents(a), func() bool { return strings.Contains(dumpEvents(a), s) })
	}
	time.Sleep(2 * a.cfg().Keepalive)
	if a.role() != RoleWriter || b.role() != RoleStandby {
		t.Fatalf("roles changed by forged traffic: a %s b %s", a.role(), b.role())
	}
	var st Status
	getJSON(t, a, "/status", &st)
	if st.Peers[0].Rejected[rejectReplay] < 5 {
		t.Fatalf("peer rejections %+v", st.Peers[0].Rejected)
	}
}

func TestStatusHealthMetricsPerRole(t *testing.T) {
	tc := startCluster(t, clusterOpts{})
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	waitFor(t, 2*time.Second, "b sees a as writer", func() bool {
		var st Status
		getJSON(t, b, "/status", &st)
		return len(st.Peers) == 1 && st.Peers[0].Role == RoleWriter && st.Peers[0].Alive
	})

	for _, n := range []*testNode{a, b} {
		code, body := getText(t, n, "/health")
		if code != 200 || !strings.HasPrefix(body, "OK "+n.role()) {
			t.Fatalf("%s health %d %q", n.name, code, body)
		}
		if got := agent(t, n); got != AgentUp+"\n" {
			t.Fatalf("%s agent %q", n.name, got)
		}
	}
	var st Status
	if code := getJSON(t, a, "/status", &st); code != 200 {
		t.Fatal(code)
	}
	if st.Node != "a" || st.Role != RoleWriter || !st.Health.OK || st.DB != "db1" || len(st.Peers) != 1 ||
		st.Peers[0].Name != "b" || st.Peers[0].LastHeartbeat.IsZero() || len(st.Resources) != 2 ||
		st.Resources[0].State != ResourceStarted || st.Replication == nil || len(st.Replication.Nodes) != 2 ||
		len(st.Events) == 0 || len(st.Witnesses) != 1 || !st.Witnesses[0].Reachable {
		t.Fatalf("status %+v", st)
	}
	_, metrics := getText(t, a, "/metrics")
	for _, want := range []string{`lockstep_role{role="writer"} 1`, `lockstep_role{role="standby"} 0`, "lockstep_fenced 0", "lockstep_healthy 1",
		`lockstep_peer_alive{peer="b"} 1`, `lockstep_heartbeats_received_total{peer="b"}`, "lockstep_resource_actions_total{"} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("metrics lack %q:\n%s", want, metrics)
		}
	}
	// Reload while holding the resources: timing applies, the resource list waits.
	cc := a.cfg()
	cc.Deadtime = 600 * time.Millisecond
	cc.Resources = cc.Resources[:1]
	if err := a.daemon.Reload("a", "127.0.0.1:0", &cc); err != nil {
		t.Fatal(err)
	}
	eventTime(t, a, "applies after the current one is released")
	got := a.cfg().Deadtime
	if got != 600*time.Millisecond {
		t.Fatalf("deadtime after reload %s", got)
	}
	bad := cc
	bad.KeyFile = "/nonexistent/key"
	if err := a.daemon.Reload("a", "", &bad); err == nil || !strings.Contains(err.Error(), "keeping the running configuration") {
		t.Fatalf("bad reload: %v", err)
	}
	_ = context.Background
}

// A daemon restarted while its database carries its own self-fence lifts
// it once the peer is back; a fence set by someone else stays.
func TestRestartLiftsOwnSelfFenceOnly(t *testing.T) {
	tc := startCluster(t, clusterOpts{preFence: map[string]string{
		"a": selfFencePrefix + "isolated: before the restart",
		"b": "lag 7s over max_lag 5s",
	}})
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a's self-fence lifted", func() bool { return slices.Contains(a.repl.fenceCalls(), "unfence db1") })
	// b's database stays fenced: b is not eligible, so a is the writer.
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	time.Sleep(3 * b.cfg().Keepalive)
	if calls := b.repl.fenceCalls(); len(calls) != 0 {
		t.Fatalf("b touched a fence it did not set: %v", calls)
	}
	if b.role() != RoleStandby {
		t.Fatalf("b %s", b.role())
	}
}

func TestThreeNodesFailover(t *testing.T) {
	tc := startCluster(t, clusterOpts{nodes: 3})
	a, b, c := tc.nodes["a"], tc.nodes["b"], tc.nodes["c"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	a.stop(errCrash)
	// b and c both see a gone; the election among them picks b.
	waitFor(t, 5*time.Second, "b writer", func() bool { return len(b.held()) == 2 })
	time.Sleep(3 * b.cfg().Keepalive)
	if w := tc.writers(); !slices.Equal(w, []string{"b"}) {
		t.Fatalf("writers %v", w)
	}
	if len(c.held()) != 0 || c.role() != RoleStandby {
		t.Fatalf("c: %s %v", c.role(), c.held())
	}
	if !strings.Contains(b.reason(), "election") {
		t.Fatalf("b's reason %q", b.reason())
	}
}

func TestAutoFailbackHoldAfterRestart(t *testing.T) {
	hold := 1500 * time.Millisecond
	tc := startCluster(t, clusterOpts{autoFailback: hold})
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	// A quick restart of a (shorter than deadtime): b takes over on a's
	// goodbye, and must wait failback_hold from a's return, not from a's
	// first start.
	a.stop(nil)
	waitFor(t, 5*time.Second, "b writer", func() bool { return len(b.held()) == 2 })
	a.restart(t)
	back := time.Now()
	waitFor(t, 10*time.Second, "a writer again", func() bool { return len(a.held()) == 2 })
	if el := time.Since(back); el < hold {
		t.Fatalf("failback %s after a's return, before failback_hold %s", el, hold)
	}
	eventTime(t, b, "auto_failback: preferred node a")
	if w := tc.writers(); !slices.Equal(w, []string{"a"}) {
		t.Fatalf("writers %v", w)
	}
}

// TestClusterClockStepChangesNothing steps b's wall clock (as seen in its
// heartbeats) 10s back and a's an hour ahead while a is the writer. Before
// issue 16 the receiver compared the timestamps with its own clock,
// rejected the other's heartbeats as stale and took over while the writer
// kept the resources. Now nothing may change, and a real failure is still
// noticed in time.
func TestClusterClockStepChangesNothing(t *testing.T) {
	tc := startCluster(t, clusterOpts{relays: true})
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	waitFor(t, 2*time.Second, "b sees a", func() bool { return b.daemon.role.Status().Peers[0].Alive })
	key := a.daemon.role.obs.key
	step := func(d time.Duration) func([]byte) []byte {
		return func(pkt []byte) []byte {
			hb, err := decodeHeartbeat(key, pkt)
			if err != nil {
				return pkt
			}
			hb.Time = time.Unix(0, hb.Time).Add(d).UnixNano()
			out, err := encodeHeartbeat(key, hb)
			if err != nil {
				return pkt
			}
			return out
		}
	}
	back, ahead := step(-10*time.Second), step(time.Hour)
	tc.relays["b->a"].mutate.Store(&back)
	tc.relays["a->b"].mutate.Store(&ahead)
	reject := func(n *testNode) float64 {
		var sum float64
		for _, r := range []string{rejectStale, rejectReplay, rejectAuth, rejectMalformed} {
			sum += metricValue(t, n.daemon.metrics.heartbeatRejected.WithLabelValues(r))
		}
		return sum
	}
	ra, rb := reject(a), reject(b)
	cfg := a.cfg()
	hold := time.Now().Add(3 * (cfg.Deadtime + cfg.TakeoverMargin))
	for time.Now().Before(hold) {
		if a.role() != RoleWriter || b.role() != RoleStandby || len(b.held()) != 0 {
			t.Fatalf("clock step changed roles: a %s b %s (b holds %v)\na:\n%sb:\n%s", a.role(), b.role(), b.held(), dumpEvents(a), dumpEvents(b))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if reject(a) != ra || reject(b) != rb {
		t.Fatalf("heartbeats rejected after a clock step: a %v -> %v, b %v -> %v", ra, reject(a), rb, reject(b))
	}
	killed := time.Now()
	a.stop(errCrash)
	waitFor(t, 5*time.Second, "b holding both resources", func() bool { return len(b.held()) == 2 })
	if took := time.Since(killed); took > cfg.Deadtime+cfg.TakeoverMargin+time.Second {
		t.Fatalf("failover took %s", took)
	}
}
