package orchestrator

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/integration/poll"
	"github.com/prometheus/client_golang/prometheus"
)

// testRepl stands in for the replication supervisor: tests set whether a
// database is fenced, and it records the orchestrator's Fence calls.
type testRepl struct {
	mu     sync.Mutex
	fenced map[string]string // db -> reason
	calls  []string
	// fenceErr, when set, is what Fence returns (read_only refused or the
	// server unreachable); clearOnKill lifts it once client sessions are
	// killed (a long transaction blocked read_only); killErr fails the kill.
	fenceErr    error
	clearOnKill bool
	killErr     error
	active      atomic.Int32 // -1 unknown, 0 observer, 1 active
}

func newTestRepl() *testRepl {
	r := &testRepl{fenced: map[string]string{}}
	r.active.Store(-1)
	return r
}

func (r *testRepl) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (r *testRepl) SetActive(a bool) {
	if a {
		r.active.Store(1)
	} else {
		r.active.Store(0)
	}
}

func (r *testRepl) Status() dbrepl.PairStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := dbrepl.PairStatus{Verdict: dbrepl.VerdictHealthy, GeneratedAt: time.Now()}
	for _, db := range []string{"db1", "db2"} {
		reason, f := r.fenced[db]
		st.Nodes = append(st.Nodes, dbrepl.NodeStatus{Name: db, Reachable: true, Writable: !f, ReadOnly: f, Fenced: f,
			FenceReason: reason, GTIDCurrentPos: "0-1-42", ObservedAt: time.Now()})
	}
	return st
}

func (r *testRepl) Fence(_ context.Context, node, reason string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fenceErr != nil {
		r.calls = append(r.calls, "fail "+node)
		return r.fenceErr
	}
	r.fenced[node] = reason
	r.calls = append(r.calls, node)
	return nil
}

func (r *testRepl) Unfence(_ context.Context, node string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.fenced, node)
	r.calls = append(r.calls, "unfence "+node)
	return nil
}

func (r *testRepl) KillClientSessions(_ context.Context, node string) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, "kill "+node)
	if r.killErr != nil {
		return 0, r.killErr
	}
	if r.clearOnKill {
		r.fenceErr = nil
	}
	return 3, nil
}

func (r *testRepl) setFenced(db string, f bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f {
		r.fenced[db] = "test: lagging"
	} else {
		delete(r.fenced, db)
	}
}

func (r *testRepl) fenceCalls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

// relay forwards UDP datagrams to dst until cut; it stands for the network
// link between two nodes. Datagrams it forwarded can be replayed.
type relay struct {
	conn *net.UDPConn
	dst  *net.UDPAddr
	cut  atomic.Bool
	// mutate, when set, rewrites each datagram before it is forwarded.
	mutate atomic.Pointer[func([]byte) []byte]
	mu     sync.Mutex
	seen   [][]byte
	done   chan struct{}
}

func newRelay(t testing.TB, dst string) *relay {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	d, _ := net.ResolveUDPAddr("udp", dst)
	r := &relay{conn: c, dst: d, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		buf := make([]byte, 65536)
		for {
			n, _, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if r.cut.Load() {
				continue
			}
			pkt := append([]byte(nil), buf[:n]...)
			if m := r.mutate.Load(); m != nil {
				pkt = (*m)(pkt)
			}
			r.mu.Lock()
			r.seen = append(r.seen, pkt)
			r.mu.Unlock()
			_, _ = c.WriteToUDP(pkt, r.dst)
		}
	}()
	t.Cleanup(func() { c.Close(); <-r.done })
	return r
}

func (r *relay) addr() string { return r.conn.LocalAddr().String() }

func (r *relay) captured() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.seen...)
}

// witnessServer is a TCP witness that can be switched off and on.
type witnessServer struct {
	addr string
	mu   sync.Mutex
	l    net.Listener
	wg   sync.WaitGroup
}

func newWitness(t testing.TB) *witnessServer {
	t.Helper()
	w := &witnessServer{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.addr = l.Addr().String()
	w.serve(l)
	t.Cleanup(w.stop)
	return w
}

func (w *witnessServer) serve(l net.Listener) {
	w.mu.Lock()
	w.l = l
	w.mu.Unlock()
	w.wg.Go(func() { acceptLoop(l, func(c net.Conn) { c.Close() }) })
}

func (w *witnessServer) stop() {
	w.mu.Lock()
	if w.l != nil {
		w.l.Close()
		w.l = nil
	}
	w.mu.Unlock()
	w.wg.Wait()
}

func (w *witnessServer) start(t testing.TB) {
	l, err := net.Listen("tcp", w.addr)
	if err != nil {
		t.Fatal(err)
	}
	w.serve(l)
}

func freeUDP(t testing.TB) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// testNode is one in-process `lockstep run`.
type testNode struct {
	name    string
	dir     string
	calls   string // script call log
	repl    *testRepl
	daemon  *Daemon
	reg     *prometheus.Registry
	cancel  context.CancelCauseFunc
	stopped chan struct{}
	witness *witnessServer
	dcfg    DaemonConfig
}

// restart runs a fresh daemon (new boot id, empty state) with the same
// configuration, as after `systemctl restart`.
func (n *testNode) restart(t testing.TB) {
	t.Helper()
	n.stop(nil)
	n.reg = prometheus.NewRegistry()
	n.dcfg.Registry = n.reg
	d, err := NewDaemon(n.dcfg)
	if err != nil {
		t.Fatal(err)
	}
	n.daemon, n.stopped = d, make(chan struct{})
	n.start(t)
}

type clusterOpts struct {
	keepalive, deadtime, margin time.Duration
	takeoverWait                time.Duration
	noWitness                   bool
	scripts                     map[string][]string // node -> extra shell code per resource index
	resourceTimeout             time.Duration
	wrongKey                    string            // node name that gets a different key
	relays                      bool              // route heartbeats through cuttable relays
	preFence                    map[string]string // node -> its database's fence reason at start
	nodes                       int               // 2 (default) or 3
	autoFailback                time.Duration     // > 0: auto_failback with this failback_hold
	// mutate, when set, edits each node's cluster section before defaults
	// (the resource-monitor tests use it).
	mutate func(node, dir string, cc *ClusterConfig)
	// configure, when set, adjusts each node's cluster section, after
	// mutate (the arbiter and self-fence tests use it).
	configure func(node string, dir string, cc *ClusterConfig)
}

type testCluster struct {
	nodes  map[string]*testNode
	relays map[string]*relay // "a->b"
}

func startCluster(t testing.TB, o clusterOpts) *testCluster {
	t.Helper()
	if o.keepalive == 0 {
		// Margins wider than the defaults' ratio: CI runs these under -race
		// next to other packages' tests, where a fork+exec of a resource
		// script can take tens of milliseconds.
		o.keepalive, o.deadtime = 100*time.Millisecond, 500*time.Millisecond
		if o.margin == 0 {
			o.margin = 300 * time.Millisecond
		}
	}
	names := []string{"a", "b", "c"}[:max(o.nodes, 2)]
	ports := map[string]string{}
	for _, n := range names {
		ports[n] = freeUDP(t)
	}
	tc := &testCluster{nodes: map[string]*testNode{}, relays: map[string]*relay{}}
	addrFor := func(self, other string) string { return ports[other] }
	if o.relays {
		for _, from := range names {
			for _, to := range names {
				if from != to {
					tc.relays[from+"->"+to] = newRelay(t, ports[to])
				}
			}
		}
		addrFor = func(self, other string) string { return tc.relays[self+"->"+other].addr() }
	}
	for i, name := range names {
		dir := t.TempDir()
		secret := testSecret
		if name == o.wrongKey {
			secret = strings.Repeat("w", 40)
		}
		n := &testNode{name: name, dir: dir, calls: filepath.Join(dir, "calls"), repl: newTestRepl(), reg: prometheus.NewRegistry(), stopped: make(chan struct{})}
		cc := &ClusterConfig{
			KeyFile: writeKey(t, dir, secret, 0o600), Keepalive: o.keepalive, Deadtime: o.deadtime,
			TakeoverMargin: o.margin, TakeoverWait: o.takeoverWait, AgentCheck: "127.0.0.1:0",
			StateDir: dir,
		}
		for j, other := range names {
			addr := ports[other]
			if other != name {
				addr = addrFor(name, other)
			}
			cc.Nodes = append(cc.Nodes, NodeConfig{Name: other, Address: addr, DB: fmt.Sprintf("db%d", j+1)})
		}
		if !o.noWitness {
			n.witness = newWitness(t)
			cc.Witness = []string{"tcp://" + n.witness.addr}
		}
		for j, r := range []string{"r1", "r2"} {
			extra := ""
			if j < len(o.scripts[name]) {
				extra = o.scripts[name][j]
			}
			timeout := o.resourceTimeout
			if timeout == 0 {
				timeout = 5 * time.Second
			}
			cc.Resources = append(cc.Resources, ResourceConfig{Exec: lsbScript(t, dir, r, n.calls, extra), Timeout: timeout})
		}
		if o.autoFailback > 0 {
			cc.AutoFailback, cc.FailbackHold = true, o.autoFailback
		}
		if o.mutate != nil {
			o.mutate(name, dir, cc)
		}
		if o.configure != nil {
			o.configure(name, dir, cc)
		}
		cc.SetDefaults()
		if err := cc.Validate(); err != nil {
			t.Fatal(err)
		}
		n.dcfg = DaemonConfig{Node: name, Listen: "127.0.0.1:0", Cluster: cc, Repl: n.repl, Registry: n.reg,
			Logger: testLogger(t, name)}
		d, err := NewDaemon(n.dcfg)
		if err != nil {
			t.Fatal(err)
		}
		n.daemon = d
		if r, ok := o.preFence[name]; ok {
			n.repl.fenced[cc.Nodes[i].DB] = r
		}
		tc.nodes[name] = n
		_ = i
	}
	for _, n := range tc.nodes {
		n.start(t)
	}
	return tc
}

func (n *testNode) start(t testing.TB) {
	ctx, cancel := context.WithCancelCause(context.Background())
	n.cancel = cancel
	go func() {
		defer close(n.stopped)
		if err := n.daemon.Run(ctx); err != nil {
			t.Errorf("node %s: %v", n.name, err)
		}
	}()
	t.Cleanup(func() { n.stop(nil) })
	select {
	case <-n.daemon.Ready():
	case <-n.stopped:
		t.Fatalf("node %s did not start", n.name)
	}
}

// stop ends the daemon; cause errCrash simulates kill -9.
func (n *testNode) stop(cause error) {
	n.cancel(cause)
	<-n.stopped
}

// testLogger discards unless LOCKSTEP_TEST_LOG is set.
func testLogger(_ testing.TB, name string) *slog.Logger {
	if os.Getenv("LOCKSTEP_TEST_LOG") == "" {
		return discardLogger().With("node", name)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)
}

func (n *testNode) role() string { return n.daemon.role.Status().Role }

func (n *testNode) reason() string { return n.daemon.role.Status().Reason }

func (n *testNode) cfg() ClusterConfig { return *n.daemon.role.cfg.Load() }

func (n *testNode) held() []string { return n.daemon.role.act.held() }

func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	return poll.Until(t, within, what, cond)
}

func (tc *testCluster) writers() []string {
	var w []string
	for _, name := range []string{"a", "b", "c"} {
		n := tc.nodes[name]
		if n == nil {
			continue
		}
		select {
		case <-n.stopped:
			continue // a crashed daemon's last role is meaningless
		default:
		}
		if n.role() == RoleWriter {
			w = append(w, name)
		}
	}
	return w
}

// eventTime returns when the first event containing substr was recorded,
// waiting a little: events follow the state change they describe.
func eventTime(t testing.TB, n *testNode, substr string) time.Time {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && !strings.Contains(dumpEvents(n), substr) {
		time.Sleep(10 * time.Millisecond)
	}
	for _, e := range n.daemon.events.List() {
		if strings.Contains(e.Message, substr) {
			return e.Time
		}
	}
	t.Fatalf("node %s: no event containing %q in:\n%s", n.name, substr, dumpEvents(n))
	return time.Time{}
}

func dumpEvents(n *testNode) string {
	var b strings.Builder
	for _, e := range n.daemon.events.List() {
		fmt.Fprintf(&b, "  %s %s %s\n", e.Time.Format("15:04:05.000"), e.Kind, e.Message)
	}
	return b.String()
}

func getJSON(t testing.TB, n *testNode, path string, v any) int {
	t.Helper()
	code, body := getText(t, n, path)
	if v != nil {
		if err := json.Unmarshal([]byte(body), v); err != nil {
			t.Fatalf("%s: %v: %s", path, err, body)
		}
	}
	return code
}

func getText(t testing.TB, n *testNode, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + n.daemon.HTTPAddr().String() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func agent(t testing.TB, n *testNode) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", n.daemon.AgentAddr().String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return line
}
