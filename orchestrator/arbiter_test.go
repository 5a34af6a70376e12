package orchestrator

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// etcdServer is one real etcd (Debian's etcd-server) on loopback.
type etcdServer struct {
	client string
	cmd    *exec.Cmd
	done   chan struct{}
}

func startEtcd(t testing.TB) *etcdServer {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("etcd not installed (apt-get install etcd-server)")
	}
	dir := t.TempDir()
	client, peer := freeTCP(t), freeTCP(t)
	cmd := exec.Command(bin, "--data-dir", filepath.Join(dir, "data"), "--name", "t",
		"--listen-client-urls", "http://"+client, "--advertise-client-urls", "http://"+client,
		"--listen-peer-urls", "http://"+peer, "--initial-advertise-peer-urls", "http://"+peer,
		"--initial-cluster", "t=http://"+peer)
	logf, err := os.Create(filepath.Join(dir, "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e := &etcdServer{client: client, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(e.done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-e.done })
	waitFor(t, 10*time.Second, "etcd up", func() bool {
		c, err := net.DialTimeout("tcp", client, 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return e
}

func freeTCP(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// tcpProxy forwards to dst until cut: a node's path to etcd.
type tcpProxy struct {
	l     net.Listener
	dst   string
	cut   atomic.Bool
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newTCPProxy(t testing.TB, dst string) *tcpProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{l: l, dst: dst, conns: map[net.Conn]struct{}{}}
	p.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if p.cut.Load() {
				c.Close()
				continue
			}
			p.wg.Go(func() { p.serve(c) })
		}
	})
	t.Cleanup(func() { l.Close(); p.setCut(true); p.wg.Wait() })
	return p
}

func (p *tcpProxy) addr() string { return p.l.Addr().String() }

func (p *tcpProxy) track(c net.Conn, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		if p.cut.Load() {
			return false
		}
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
	return true
}

func (p *tcpProxy) serve(c net.Conn) {
	up, err := net.DialTimeout("tcp", p.dst, time.Second)
	if err != nil {
		c.Close()
		return
	}
	if !p.track(c, true) || !p.track(up, true) {
		c.Close()
		up.Close()
		return
	}
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = io.Copy(up, c); up.Close() })
	wg.Go(func() { _, _ = io.Copy(c, up); c.Close() })
	wg.Wait()
	p.track(c, false)
	p.track(up, false)
}

// setCut drops every connection and refuses new ones (true), or lets
// them through again.
func (p *tcpProxy) setCut(cut bool) {
	p.mu.Lock()
	p.cut.Store(cut)
	if cut {
		for c := range p.conns {
			c.Close()
		}
	}
	p.mu.Unlock()
}

const testLeaseTTL = 2 * time.Second

// startArbiterCluster: two nodes, each reaching one etcd through its own
// cuttable proxy, heartbeats through relays, no witness.
func startArbiterCluster(t *testing.T, o clusterOpts) (*testCluster, map[string]*tcpProxy) {
	e := startEtcd(t)
	proxies := map[string]*tcpProxy{"a": newTCPProxy(t, e.client), "b": newTCPProxy(t, e.client)}
	o.relays, o.noWitness = true, true
	prev := o.configure
	o.configure = func(node, dir string, cc *ClusterConfig) {
		cc.Arbiter.Etcd = &EtcdConfig{Endpoints: []string{"http://" + proxies[node].addr()}, Prefix: "/lockstep-test", LeaseTTL: testLeaseTTL}
		if prev != nil {
			prev(node, dir, cc)
		}
	}
	tc := startCluster(t, o)
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range []string{"a", "b"} {
				t.Logf("events of %s:\n%s", n, dumpEvents(tc.nodes[n]))
			}
		}
	})
	return tc, proxies
}

// sampleWriters fails the test when two nodes hold resources at once,
// until stop is closed.
func sampleWriters(t *testing.T, tc *testCluster) (stop func() int) {
	done := make(chan struct{})
	var both atomic.Int32
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
			holders := 0
			for _, n := range tc.nodes {
				select {
				case <-n.stopped:
					continue // a crashed daemon's resources are gone with its host
				default:
				}
				if len(n.held()) > 0 {
					holders++
				}
			}
			if holders > 1 {
				both.Add(1)
			}
		}
	})
	return func() int { close(done); wg.Wait(); return int(both.Load()) }
}

func TestArbiterElectsOneWriterAndFailsOver(t *testing.T) {
	tc, _ := startArbiterCluster(t, clusterOpts{})
	a, b := tc.nodes["a"], tc.nodes["b"]
	var w, s *testNode
	waitFor(t, 10*time.Second, "one writer by election", func() bool {
		switch {
		case len(a.held()) == 2 && b.role() == RoleStandby:
			w, s = a, b
		case len(b.held()) == 2 && a.role() == RoleStandby:
			w, s = b, a
		}
		return w != nil
	})
	if !strings.Contains(w.reason(), "won the election") {
		t.Fatalf("writer's reason %q", w.reason())
	}
	waitFor(t, 5*time.Second, "the writer's arbiter status", func() bool {
		st := w.daemon.role.Status().Arbiter
		return st != nil && st.IsLeader && st.Leader == w.name && st.Term != 0 && st.Lease != "" && st.LeaseValid > 0
	})
	waitFor(t, 5*time.Second, "the standby sees the leader", func() bool {
		st := s.daemon.role.Status().Arbiter
		return st != nil && st.Leader == w.name && !st.IsLeader && st.Campaigning && st.Eligible
	})
	stop := sampleWriters(t, tc)
	killed := time.Now()
	w.stop(errCrash)
	waitFor(t, 10*time.Second, "the survivor wins and holds the resources", func() bool { return len(s.held()) == 2 })
	took := time.Since(killed)
	if n := stop(); n > 0 {
		t.Fatalf("two holders in %d samples", n)
	}
	t.Logf("writer crashed: survivor writer after %s (lease ttl %s)", took.Round(time.Millisecond), testLeaseTTL)
	// The crashed writer's lease must expire first: never before the TTL
	// minus one renewal interval (the last renewal may predate the crash).
	if took < testLeaseTTL-testLeaseTTL/6-50*time.Millisecond || took > testLeaseTTL+3*time.Second {
		t.Fatalf("failover after %s with a %s lease", took, testLeaseTTL)
	}
}

func TestArbiterCleanShutdownHandsOverAtOnce(t *testing.T) {
	tc, _ := startArbiterCluster(t, clusterOpts{})
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 10*time.Second, "a writer", func() bool { return len(a.held()) == 2 || len(b.held()) == 2 })
	w, s := a, b
	if len(b.held()) == 2 {
		w, s = b, a
	}
	stop := sampleWriters(t, tc)
	began := time.Now()
	w.stop(nil)
	waitFor(t, 5*time.Second, "the peer wins", func() bool { return len(s.held()) == 2 })
	if n := stop(); n > 0 {
		t.Fatalf("two holders in %d samples", n)
	}
	if took := time.Since(began); took > testLeaseTTL {
		t.Fatalf("handover after a clean shutdown took %s: the lease was not revoked", took)
	}
}

// TestArbiterWriterCutFromEtcd: the writer still hears its peer but cannot
// reach etcd. It must fence (database read-only, resources released)
// before its lease can expire, and the peer wins only after that.
func TestArbiterWriterCutFromEtcd(t *testing.T) {
	tc, proxies := startArbiterCluster(t, clusterOpts{})
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 10*time.Second, "a writer", func() bool { return len(a.held()) == 2 || len(b.held()) == 2 })
	w, s := a, b
	if len(b.held()) == 2 {
		w, s = b, a
	}
	stop := sampleWriters(t, tc)
	cut := time.Now()
	proxies[w.name].setCut(true)
	waitFor(t, 10*time.Second, "the writer fenced and released", func() bool { return w.role() == RoleFenced && len(w.held()) == 0 })
	fenced := time.Since(cut)
	waitFor(t, 10*time.Second, "the peer holds the resources", func() bool { return len(s.held()) == 2 })
	took := time.Since(cut)
	if n := stop(); n > 0 {
		t.Fatalf("two holders in %d samples", n)
	}
	t.Logf("writer cut from etcd: fenced after %s, peer writer after %s (lease ttl %s)", fenced.Round(time.Millisecond), took.Round(time.Millisecond), testLeaseTTL)
	// The demotion deadline: TTL/2 after the last renewal, plus a
	// renewal interval and a decision tick; the release must fit in the
	// other half.
	if limit := testLeaseTTL/2 + testLeaseTTL/6 + 300*time.Millisecond; fenced > limit {
		t.Fatalf("fenced %s after the cut, want within %s", fenced, limit)
	}
	if calls := w.repl.fenceCalls(); len(calls) == 0 || calls[0] != w.dcfg.Cluster.Nodes[0].DB && calls[0] != w.dcfg.Cluster.Nodes[1].DB {
		t.Fatalf("the demoted writer did not fence its database: %v", calls)
	}
	if !strings.Contains(w.reason(), "lease not renewed") {
		t.Fatalf("reason %q", w.reason())
	}
	// etcd comes back: the old writer returns to standby.
	proxies[w.name].setCut(false)
	waitFor(t, 10*time.Second, "the old writer standby", func() bool { return w.role() == RoleStandby })
	if got := tc.writers(); len(got) != 1 || got[0] != s.name {
		t.Fatalf("writers %v", got)
	}
}

// TestArbiterNodeLinkCut: only the heartbeat link is cut; both still
// reach etcd. Without an arbiter (and with a witness each) both would
// take the writer role; with it nothing changes.
func TestArbiterNodeLinkCut(t *testing.T) {
	tc, _ := startArbiterCluster(t, clusterOpts{})
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 10*time.Second, "a writer", func() bool { return len(a.held()) == 2 || len(b.held()) == 2 })
	w := a
	if len(b.held()) == 2 {
		w = b
	}
	stop := sampleWriters(t, tc)
	for _, r := range tc.relays {
		r.cut.Store(true)
	}
	time.Sleep(3 * testLeaseTTL)
	if n := stop(); n > 0 {
		t.Fatalf("two holders in %d samples", n)
	}
	if got := tc.writers(); len(got) != 1 || got[0] != w.name || len(w.held()) != 2 {
		t.Fatalf("writers %v after a link cut, want [%s]", got, w.name)
	}
}

func TestArbiterConfigValidation(t *testing.T) {
	dir := t.TempDir()
	c := ClusterConfig{
		KeyFile: writeKey(t, dir, testSecret, 0o600),
		Nodes:   []NodeConfig{{Name: "a", Address: "127.0.0.1:1"}, {Name: "b", Address: "127.0.0.1:2"}},
		Arbiter: ArbiterConfig{Etcd: &EtcdConfig{Endpoints: []string{"10.0.0.1:2379"}, LeaseTTL: 1500 * time.Millisecond, CertFile: "/x"}},
	}
	c.SetDefaults()
	err := c.Validate()
	for _, want := range []string{"arbiter.etcd.endpoints[0]", "lease_ttl", "cert_file, key_file"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("want %q in %v", want, err)
		}
	}
	c.Arbiter.Etcd = &EtcdConfig{Endpoints: []string{"https://10.0.0.1:2379"}}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Arbiter.Etcd.Prefix != "/lockstep" || c.Arbiter.Etcd.LeaseTTL != DefaultLeaseTTL {
		t.Fatalf("defaults %+v", c.Arbiter.Etcd)
	}
}

func TestDecideArbiterRules(t *testing.T) {
	lead := func(v view) view {
		v.arbiter = arbiterView{configured: true, tried: true, connected: true, leader: true, leaderName: v.self, term: 7,
			validFor: time.Second, renewEvery: 100 * time.Millisecond}
		return v
	}
	follow := func(v view) view {
		v.arbiter = arbiterView{configured: true, tried: true, connected: true, leaderName: "a", term: 6,
			validFor: time.Second, renewEvery: 100 * time.Millisecond}
		return v
	}
	tests := []struct {
		name   string
		v      view
		role   string
		reason string
	}{
		{"standby that won takes over", lead(baseView(RoleStandby, alivePeer("a", RoleStandby, true))), RoleWriter, "won the election (term 7"},
		{"a witness-isolated leader stays writer", func() view {
			v := lead(baseView(RoleWriter, silentPeer("a", RoleStandby, time.Hour)))
			v.witnessSeen = false
			return v
		}(), RoleWriter, ""},
		{"no heartbeat rule makes a writer: peer gone, not leader", follow(baseView(RoleStandby, silentPeer("a", RoleWriter, time.Hour))), RoleStandby, ""},
		{"lease lapsed: writer fences", func() view {
			v := lead(baseView(RoleWriter, alivePeer("a", RoleStandby, true)))
			v.arbiter.leader, v.arbiter.connected, v.arbiter.validFor, v.arbiter.lastErr = false, false, -time.Millisecond, "context deadline exceeded"
			return v
		}(), RoleFenced, "lease not renewed in time (context deadline exceeded)"},
		{"resigned with a valid lease: standby", func() view {
			v := follow(baseView(RoleWriter, alivePeer("a", RoleStandby, true)))
			return v
		}(), RoleStandby, "no longer holds the election (leader a)"},
		{"fenced returns to standby once etcd answers", follow(baseView(RoleFenced)), RoleStandby, "reachable again"},
		{"fenced stays while etcd is unreachable", func() view {
			v := follow(baseView(RoleFenced))
			v.arbiter.connected = false
			return v
		}(), RoleFenced, ""},
		{"won with a fenced database: no takeover", func() view {
			v := lead(baseView(RoleStandby))
			v.dbFenced = true
			return v
		}(), RoleStandby, ""},
		{"won with a lapsing lease: wait", func() view {
			v := lead(baseView(RoleStandby))
			v.arbiter.validFor = 50 * time.Millisecond
			return v
		}(), RoleStandby, ""},
		{"writer with a fenced database hands over to an eligible peer", func() view {
			v := lead(baseView(RoleWriter, alivePeer("a", RoleStandby, true)))
			v.dbFenced, v.dbFencedSince = true, v.now.Add(-time.Second)
			return v
		}(), RoleStandby, "handing the etcd election over"},
		{"ineligible writer hands the election over to an eligible peer", func() view {
			v := lead(baseView(RoleWriter, alivePeer("a", RoleStandby, true)))
			v.ineligible = "resource vip failed"
			return v
		}(), RoleStandby, "not eligible: resource vip failed; handing the etcd election over to eligible peer a"},
		{"ineligible writer without an eligible peer keeps the role", func() view {
			v := lead(baseView(RoleWriter, alivePeer("a", RoleStandby, false)))
			v.ineligible = "resource vip failed"
			return v
		}(), RoleWriter, ""},
		{"ineligible standby that won: no takeover", func() view {
			v := lead(baseView(RoleStandby, alivePeer("a", RoleStandby, true)))
			v.ineligible = "track chk failing"
			return v
		}(), RoleStandby, ""},
		{"standby that won with an unchecked track: no takeover", func() view {
			v := lead(baseView(RoleStandby, alivePeer("a", RoleStandby, true)))
			v.tracksPending = "track chk not checked yet"
			return v
		}(), RoleStandby, ""},
		{"startup: no decision before the arbiter answered", func() view {
			v := lead(baseView(RoleStandby))
			v.decided, v.startedAt, v.arbiter.tried = false, v.now, false
			return v
		}(), RoleStandby, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := decide(tt.v)
			if d.role != tt.role || !strings.Contains(d.reason, tt.reason) {
				t.Fatalf("got %s %q, want %s %q", d.role, d.reason, tt.role, tt.reason)
			}
		})
	}
	// Campaign eligibility: caught up (not fenced), reachable, no errant
	// transactions; a writer keeps holding.
	now := time.Now()
	standby := roleSnapshot{role: RoleStandby, decided: true}
	for _, c := range []struct {
		db   dbObservation
		want bool
	}{
		{dbObservation{observed: true}, true},
		{dbObservation{observed: true, fenced: true}, false},
		{dbObservation{observed: true, unreachable: "refused"}, false},
		{dbObservation{observed: true, errant: []string{"0-2-17"}}, false},
		{dbObservation{}, false},
	} {
		if got := campaignEligible(standby, "", c.db, true, now); got != c.want {
			t.Errorf("campaignEligible(%+v) = %t", c.db, got)
		}
	}
	if !campaignEligible(roleSnapshot{role: RoleWriter}, "", dbObservation{fenced: true}, true, now) {
		t.Error("a writer must keep its campaign until it leaves the role")
	}
	if campaignEligible(roleSnapshot{role: RoleStandby}, "", dbObservation{observed: true}, true, now) {
		t.Error("campaigning before the startup wait is over")
	}
	// The monitors' eligibility: a failed resource or a failing track
	// (roleSnapshot.ineligible) and tracks not checked yet keep a standby
	// out of the election.
	if campaignEligible(roleSnapshot{role: RoleStandby, decided: true, ineligible: "track chk failing"}, "", dbObservation{observed: true}, true, now) {
		t.Error("an ineligible standby campaigns")
	}
	if campaignEligible(roleSnapshot{role: RoleStandby, decided: true}, "track chk not checked yet", dbObservation{observed: true}, true, now) {
		t.Error("a standby with an unchecked track campaigns")
	}
	if !campaignEligible(roleSnapshot{role: RoleWriter, ineligible: "resource vip failed"}, "", dbObservation{observed: true}, true, now) {
		t.Error("an ineligible writer must keep its campaign until A4 makes it leave the role")
	}
}

// TestArbiterTrackFailingStandbyDoesNotCampaign: the monitors'
// eligibility applies with an arbiter too. A node whose track fails stays
// out of the etcd election, also when the writer dies, and campaigns (and
// wins) once the track passes again.
func TestArbiterTrackFailingStandbyDoesNotCampaign(t *testing.T) {
	tc, _ := startArbiterCluster(t, trackOpts(clusterOpts{}, map[string]bool{"a": true}))
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 10*time.Second, "b writer", func() bool { return len(b.held()) == 2 })
	waitFor(t, 5*time.Second, "a sees b lead without campaigning", func() bool {
		st := a.daemon.role.Status().Arbiter
		return st != nil && st.Leader == b.name && !st.Campaigning && !st.Eligible
	})
	b.stop(errCrash)
	time.Sleep(testLeaseTTL + time.Second)
	if a.role() != RoleStandby || len(a.held()) != 0 {
		t.Fatalf("a took over with a failing track: %s %v", a.role(), a.held())
	}
	if err := os.Remove(filepath.Join(a.dir, "track.fail")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a takes over once the track passes", func() bool { return len(a.held()) == 2 })
	if !strings.Contains(a.reason(), "etcd arbiter: won the election") {
		t.Fatalf("a's reason %q", a.reason())
	}
}

// TestArbiterTrackFailingWriterResigns: a writer whose track fails hands
// the etcd election to the eligible peer.
func TestArbiterTrackFailingWriterResigns(t *testing.T) {
	tc, _ := startArbiterCluster(t, trackOpts(clusterOpts{}, nil))
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 10*time.Second, "a writer", func() bool { return len(a.held()) == 2 || len(b.held()) == 2 })
	w, s := a, b
	if len(b.held()) == 2 {
		w, s = b, a
	}
	waitFor(t, 5*time.Second, "the standby campaigns", func() bool {
		st := s.daemon.role.Status().Arbiter
		return st != nil && st.Campaigning && st.Eligible
	})
	stop := sampleWriters(t, tc)
	if err := os.WriteFile(filepath.Join(w.dir, "track.fail"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the peer writer", func() bool { return len(s.held()) == 2 && len(w.held()) == 0 })
	if n := stop(); n > 0 {
		t.Fatalf("two holders in %d samples", n)
	}
	if !strings.Contains(w.reason(), "not eligible: track gw failing") || !strings.Contains(w.reason(), "etcd election") {
		t.Fatalf("old writer's reason %q", w.reason())
	}
	if st := w.daemon.role.Status().Arbiter; st == nil || st.Campaigning || st.Eligible {
		t.Fatalf("old writer still in the election: %+v", st)
	}
}
