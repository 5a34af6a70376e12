package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
	"github.com/lockstep-ha/lockstep/integration/netns"
)

// etcdLeaseTTL is the default: half of it is the margin for etcd's own
// leader elections (1-2s with its defaults), which a cut link between two
// members can trigger; the timing argument (orchestrator/doc.go) scales
// with it.
const etcdLeaseTTL = 4 * time.Second

// etcdMember is one member of the test's etcd cluster, running in a
// namespace (one per node plus the witness's).
type etcdMember struct {
	name    string
	node    *netns.Node
	dataDir string
	initial string
	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
}

func (m *etcdMember) clientURL() string {
	return "http://" + net.JoinHostPort(m.node.Addr.String(), "2379")
}

func (m *etcdMember) start(t *testing.T, state string) {
	t.Helper()
	peer := "http://" + net.JoinHostPort(m.node.Addr.String(), "2380")
	logf, err := os.OpenFile(filepath.Join(filepath.Dir(m.dataDir), m.name+"-etcd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := m.node.Command(context.Background(), "etcd", "--name", m.name, "--data-dir", m.dataDir,
		"--listen-client-urls", m.clientURL(), "--advertise-client-urls", m.clientURL(),
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", m.initial, "--initial-cluster-state", state, "--initial-cluster-token", "lockstep-test",
		// A member cut off from the raft leader must not disrupt the
		// others with term bumps when it comes back (or while it only
		// sees part of the cluster).
		"--pre-vote",
		// Raft elections within 0.5-1s (defaults: 1-2s): losing the raft
		// leader's member must fit in the lease's demotion margin
		// (lease_ttl/2) with room to spare; see README.
		"--heartbeat-interval", "50", "--election-timeout", "500")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start etcd %s: %v", m.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	m.mu.Lock()
	m.cmd, m.done = cmd, done
	m.mu.Unlock()
}

func (m *etcdMember) kill() {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.cmd = nil
	m.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
}

// startEtcdCluster starts a 3-member etcd cluster: one member in each of
// the two node namespaces and one in the witness's.
func startEtcdCluster(t *testing.T, c *cluster) []*etcdMember {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Skip("etcd not installed (apt-get install etcd-server)")
	}
	nodes := []*netns.Node{c.nw.Node(1), c.nw.Node(2), c.nw.Witness()}
	var initial []string
	for _, n := range nodes {
		initial = append(initial, fmt.Sprintf("e%s=http://%s", n.Name, net.JoinHostPort(n.Addr.String(), "2380")))
	}
	var members []*etcdMember
	for _, n := range nodes {
		m := &etcdMember{name: "e" + n.Name, node: n, dataDir: filepath.Join(c.dir, "etcd-"+n.Name), initial: strings.Join(initial, ",")}
		m.start(t, "new")
		members = append(members, m)
	}
	t.Cleanup(func() {
		for _, m := range members {
			m.kill()
		}
	})
	waitFor(t, 20*time.Second, "the etcd cluster to answer on every member", func() bool {
		for _, m := range members {
			conn, err := m.node.DialContext(t.Context(), "tcp", net.JoinHostPort(m.node.Addr.String(), "2379"))
			if err != nil {
				return false
			}
			conn.Close()
		}
		return true
	})
	return members
}

// nft applies an nftables ruleset inside node's namespace.
func nft(t *testing.T, node *netns.Node, rules string) {
	t.Helper()
	cmd := node.Command(t.Context(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v: %s\n%s", node.Name, err, out, rules)
	}
}

// cutLink drops every packet between nodes a and b (both directions, on
// both sides); everything else, the witness's etcd member included, still
// passes.
func cutLink(t *testing.T, a, b *netns.Node) {
	for _, p := range [][2]*netns.Node{{a, b}, {b, a}} {
		nft(t, p[0], fmt.Sprintf(`table inet lockstep_cut {
  chain out { type filter hook output priority 0; ip daddr %s drop; }
  chain in { type filter hook input priority 0; ip saddr %s drop; }
}
`, p[1].Addr, p[1].Addr))
	}
}

func healLink(t *testing.T, nodes ...*netns.Node) {
	for _, n := range nodes {
		nft(t, n, "delete table inet lockstep_cut\n")
	}
}

// cutEtcdClient stops node's processes from reaching any etcd member's
// client port (its own member included); etcd's peer traffic and the
// heartbeats still pass.
func cutEtcdClient(t *testing.T, node *netns.Node) {
	nft(t, node, `table inet lockstep_etcd {
  chain out { type filter hook output priority 0; tcp dport 2379 drop; }
}
`)
}

// vipSampler checks, every 20ms until stopped, that at most one live node
// holds the VIP; dead (partitioned, killed) nodes are skipped.
type vipSampler struct {
	c     *cluster
	dead  sync.Map // *daemon -> true
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	viols []string
}

func sampleVIP(c *cluster) *vipSampler {
	s := &vipSampler{c: c, stop: make(chan struct{})}
	s.wg.Go(func() {
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			var holders []string
			for _, d := range c.nodes {
				if _, dead := s.dead.Load(d); dead {
					continue
				}
				if has, err := d.node.HasAddr(c.vip); err == nil && has {
					holders = append(holders, d.node.Name)
				}
			}
			if len(holders) > 1 {
				s.mu.Lock()
				s.viols = append(s.viols, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), holders))
				s.mu.Unlock()
			}
		}
	})
	return s
}

func (s *vipSampler) check(t *testing.T, phase string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.viols) > 0 {
		t.Errorf("%s: two VIP holders at %d sampled moments, first %s", phase, len(s.viols), s.viols[0])
	}
	s.viols = nil
}

func (s *vipSampler) close() { close(s.stop); s.wg.Wait() }

// TestClusterEtcdArbiter runs two nodes, each with its own MariaDB, and a
// 3-member etcd cluster (one member per node namespace, one in the
// witness's) through the failures an arbiter is for, in one cluster:
//
//  1. the node<->node link is cut (nftables): nothing changes;
//  2. one etcd member dies: nothing changes;
//  3. the writer alone is cut from etcd: it is read-only and has released
//     the VIP before the lease can pass, the peer is writer within the
//     deadline;
//  4. the writer's node dies (daemon, etcd member, link): the survivor is
//     writer within the deadline.
//
// Throughout, a sampler checks every 20ms that no two live nodes hold the
// VIP.
func TestClusterEtcdArbiter(t *testing.T) {
	began := time.Now()
	pair := mariadbpair.Start(t)
	db := [2]*mariadbpair.Node{pair.Nodes[0], pair.Nodes[1]}
	c := newCluster(t, 2, nil)
	members := startEtcdCluster(t, c)
	var endpoints []string
	for _, m := range members {
		endpoints = append(endpoints, m.clientURL())
	}
	c.extraCluster = fmt.Sprintf("  arbiter:\n    etcd:\n      endpoints: [%s]\n      prefix: /lockstep-it\n      lease_ttl: %s\n",
		strings.Join(endpoints, ", "), etcdLeaseTTL)
	c.repl = func(d *daemon) string {
		dsn := func(n *netns.Node) string {
			return fmt.Sprintf("%s:%s@tcp(%s)/", mariadbpair.MonitorUser, pair.MonitorPassword,
				net.JoinHostPort(n.Addr.String(), strconv.Itoa(dbPort)))
		}
		return fmt.Sprintf(`repl:
  interval: 100ms
  state_dir: %q
  fence:
    max_lag: 2s
    unfence_lag: 500ms
    unfence_hold: 1s
  nodes:
    - {name: db1, dsn: %q}
    - {name: db2, dsn: %q}
`, filepath.Join(d.dir, "state"), dsn(c.nw.Node(1)), dsn(c.nw.Node(2)))
	}
	for i, d := range c.nodes {
		netns.Forward(t, d.node, net.JoinHostPort(d.node.Addr.String(), strconv.Itoa(dbPort)), db[i].Addr())
	}
	for _, d := range c.nodes {
		d.start()
	}
	w := c.waitWriter(30 * time.Second)
	s := c.other(w)
	ctx := t.Context()
	t.Logf("writer %s elected %s into the test", w.node.Name, time.Since(began).Round(time.Millisecond))
	defer func() {
		if t.Failed() {
			for _, m := range members {
				t.Logf("==== %s log (tail) ====\n%s", m.name, tailFile(filepath.Join(c.dir, m.name+"-etcd.log"), 30))
			}
		}
	}()
	st, err := w.status(ctx)
	if err != nil || !strings.Contains(string(st.raw), `"is_leader": true`) {
		t.Fatalf("writer's /status lacks the arbiter's leadership: %v %s", err, st.raw)
	}
	vs := sampleVIP(c)
	defer vs.close()

	// 1. The node<->node link only.
	cutLink(t, w.node, s.node)
	time.Sleep(3 * etcdLeaseTTL)
	if r := w.role(ctx); r != "writer" || !w.holdsVIP() {
		t.Errorf("link cut: %s role %q (VIP %t), want writer holding the VIP", w.node.Name, r, w.holdsVIP())
	}
	if r := s.role(ctx); r != "standby" {
		t.Errorf("link cut: %s role %q, want standby", s.node.Name, r)
	}
	healLink(t, w.node, s.node)
	vs.check(t, "node link cut")

	// 2. One etcd member dies (the witness's).
	members[2].kill()
	time.Sleep(3 * etcdLeaseTTL)
	if r := w.role(ctx); r != "writer" || !w.holdsVIP() {
		t.Errorf("etcd member lost: %s role %q, want writer holding the VIP", w.node.Name, r)
	}
	if r := s.role(ctx); r != "standby" {
		t.Errorf("etcd member lost: %s role %q, want standby", s.node.Name, r)
	}
	vs.check(t, "one etcd member lost")
	members[2].start(t, "existing")

	// 3. The writer alone is cut from etcd.
	w = c.waitWriter(10 * time.Second)
	s = c.other(w)
	wdb, sdb := db[w.idx-1], db[s.idx-1]
	if ro, err := wdb.ReadOnly(ctx); err != nil || ro {
		t.Fatalf("writer's database %s read_only=%v err=%v before the cut", wdb.Name, ro, err)
	}
	cut := time.Now()
	cutEtcdClient(t, w.node)
	var readOnlyAt, releasedAt, takenAt time.Duration
	for time.Since(cut) < 20*time.Second && (readOnlyAt == 0 || releasedAt == 0 || takenAt == 0) {
		sv, wv := s.holdsVIP(), w.holdsVIP()
		ro, err := wdb.ReadOnly(ctx)
		if err != nil {
			t.Fatalf("reading %s read_only: %v", wdb.Name, err)
		}
		if sv && !ro {
			t.Fatalf("%s holds the VIP while the demoted %s's database is writable", s.node.Name, w.node.Name)
		}
		el := time.Since(cut)
		if ro && readOnlyAt == 0 {
			readOnlyAt = el
		}
		if !wv && releasedAt == 0 {
			releasedAt = el
		}
		if sv && takenAt == 0 {
			takenAt = el
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("writer %s cut from etcd: database read-only after %s, VIP released after %s; %s took the VIP after %s (lease ttl %s)",
		w.node.Name, readOnlyAt.Round(time.Millisecond), releasedAt.Round(time.Millisecond), s.node.Name, takenAt.Round(time.Millisecond), etcdLeaseTTL)
	// Demotion deadline: ttl/2 after the last renewal, which is at most one
	// renewal interval (ttl/6) before the cut; plus a decision tick and the
	// fence itself. The peer can win only after the lease expired.
	if limit := etcdLeaseTTL/2 + etcdLeaseTTL/6 + 500*time.Millisecond; readOnlyAt == 0 || readOnlyAt > limit || releasedAt > limit {
		t.Errorf("demoted writer read-only after %s, VIP released after %s; want both within %s", readOnlyAt, releasedAt, limit)
	}
	if limit := etcdLeaseTTL + 3*time.Second; takenAt == 0 || takenAt > limit {
		t.Errorf("new writer after %s, want within %s", takenAt, limit)
	}
	if ro, err := sdb.ReadOnly(ctx); err != nil || ro {
		t.Errorf("new writer's database %s read_only=%v err=%v", sdb.Name, ro, err)
	}
	vs.check(t, "writer cut from etcd")
	nft(t, w.node, "delete table inet lockstep_etcd\n")
	waitFor(t, 15*time.Second, w.node.Name+" back to standby", func() bool { return w.role(ctx) == "standby" })

	// 4. The (new) writer's node dies: daemon, etcd member and link.
	w = c.waitWriter(10 * time.Second)
	s = c.other(w)
	died := time.Now()
	vs.dead.Store(w, true)
	w.kill()
	members[w.idx-1].kill()
	c.nw.Partition(w.idx)
	waitFor(t, 20*time.Second, s.node.Name+" writer holding the VIP", func() bool { return s.holdsVIP() && s.role(ctx) == "writer" })
	took := time.Since(died)
	t.Logf("writer %s died: %s writer after %s (lease ttl %s)", w.node.Name, s.node.Name, took.Round(time.Millisecond), etcdLeaseTTL)
	// The dead writer's lease expires TTL after its last renewal; when its
	// node also hosted etcd's raft leader, etcd elects a new one first and
	// extends every lease by the TTL on that change. Hence 2 x TTL.
	if limit := 2 * etcdLeaseTTL; took > limit {
		t.Errorf("failover after the writer's death took %s, want within %s", took, limit)
	}
	vs.check(t, "writer death")
	// The dead node's link comes back before cleanup: the survivor's
	// binlog reader of the dead node's database (the conflict detector)
	// otherwise waits out its 10s close on a blackholed connection, longer
	// than the harness grants a SIGTERM.
	c.nw.Heal(w.idx)
}
