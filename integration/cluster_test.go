package integration

// Multi-node tests of `lockstep run`: every node is the built binary running
// in its own network namespace (integration/netns), with real heartbeats on
// a bridge, a tcp:// witness in a third namespace, an `ipaddr` VIP on the
// node's veth and `exec` resources that log their calls.
//
// The database side: the MariaDB pair harness runs both mariadbd on the
// host's loopback, which the node namespaces cannot reach. Rather than
// teach it to start servers inside namespaces, cluster_db_test.go relays
// each server to its node's address (netns.Node.Forward): a node reaches
// its own database locally and its peer's across the bridge, so a
// partition cuts exactly what it would cut in production, except the
// replication stream itself. The other scenarios leave `repl:` out; they
// pin down what only a real network can show: who holds the VIP and the
// resources when daemons die, links are cut and heartbeats are forged.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/integration/netns"
	"github.com/lockstep-ha/lockstep/integration/poll"
	"github.com/lockstep-ha/lockstep/internal/testbed"
)

// Ports are fixed because every node has a namespace of its own.
const (
	httpPort      = 9430
	heartbeatPort = 9431
	agentPort     = 9432
	vipHost       = 100
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	binDir    string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// lockstepBinary builds ./cmd/lockstep once per package run (lazily, so
// packages' tests that skip never pay for it) and returns its path.
// LOCKSTEP_TEST_BINARY points the tests at an already built binary instead.
func lockstepBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if p := os.Getenv("LOCKSTEP_TEST_BINARY"); p != "" {
			binPath, buildErr = filepath.Abs(p)
			return
		}
		binDir, buildErr = os.MkdirTemp("", "lockstep-bin-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "lockstep")
		cmd := exec.Command("go", "build", "-o", binPath, "github.com/lockstep-ha/lockstep/cmd/lockstep")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/lockstep: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// resource is one entry of the generated `resources:` list.
type resource struct {
	VIP     string // ipaddr prefix, or ""
	Exec    string // script path, or ""
	Timeout time.Duration
	// Monitor is extra keys of the entry (e.g. "monitor_interval: 500ms"),
	// one per line, unindented.
	Monitor []string
}

// cluster is N `lockstep run` daemons on a netns.Network.
type cluster struct {
	t       *testing.T
	nw      *netns.Network
	dir     string
	keyFile string
	witness string
	vip     netip.Addr
	nodes   []*daemon
	// resources returns node i's resource list (1-based).
	resources func(d *daemon) []resource
	keepalive time.Duration
	deadtime  time.Duration
	// extraMembers are listed in every config but run no daemon.
	extraMembers []member
	// extraCluster is appended to every `cluster:` section (indented).
	extraCluster string
	// extraClusterFor, when set, is appended to node d's `cluster:` section.
	extraClusterFor func(d *daemon) string
	// repl, when set, returns node d's `repl:` section (YAML, top level)
	// and each node is mapped to database db<i>.
	repl func(d *daemon) string
}

// member is one `cluster.nodes` entry.
type member = testbed.Member

type daemon struct {
	c       *cluster
	idx     int
	node    *netns.Node
	dir     string
	config  string
	logPath string
	resLog  string // where this node's exec resources append their calls
	keyFile string // overrides the cluster key when set

	mu   sync.Mutex
	proc *testbed.Proc // nil until started
}

// newCluster builds the network and per-node directories; resources(d)
// may be nil for the default group: VIP, then exec resources "a" and "b".
func newCluster(t *testing.T, nodes int, resources func(d *daemon) []resource) *cluster {
	t.Helper()
	lockstepBinary(t) // fail early, before building a network, when it does not build
	nw := netns.New(t, nodes)
	c := &cluster{
		t:         t,
		nw:        nw,
		dir:       t.TempDir(),
		vip:       nw.Addr(vipHost),
		keepalive: 200 * time.Millisecond,
		deadtime:  time.Second,
	}
	c.resources = resources
	if c.resources == nil {
		c.resources = func(d *daemon) []resource {
			return []resource{
				{VIP: nw.Prefix(vipHost).String()},
				{Exec: d.script("a", ""), Timeout: 5 * time.Second},
				{Exec: d.script("b", ""), Timeout: 5 * time.Second},
			}
		}
	}
	c.keyFile = filepath.Join(c.dir, "cluster.key")
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.keyFile, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.witness = "tcp://" + netns.ServeTCP(t, nw.Witness())
	for i := 1; i <= nodes; i++ {
		d := &daemon{c: c, idx: i, node: nw.Node(i), dir: filepath.Join(c.dir, nw.Node(i).Name)}
		if err := os.MkdirAll(d.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		d.config = filepath.Join(d.dir, "lockstep.yaml")
		d.logPath = filepath.Join(d.dir, "daemon.log")
		d.resLog = filepath.Join(d.dir, "resources.log")
		c.nodes = append(c.nodes, d)
	}
	// Runs before the network's cleanup (LIFO), so no daemon is left
	// inside a namespace that is being deleted.
	t.Cleanup(c.stopAll)
	return c
}

func (c *cluster) node(i int) *daemon { return c.nodes[i-1] }

// startAll starts every node's daemon.
func (c *cluster) startAll() {
	c.t.Helper()
	for _, d := range c.nodes {
		d.start()
	}
}

// writeConfig generates the node's config file.
func (d *daemon) writeConfig() {
	c := d.c
	var peers []member
	for _, o := range c.nodes {
		m := member{Name: o.node.Name, Address: net.JoinHostPort(o.node.Addr.String(), fmt.Sprint(heartbeatPort))}
		if c.repl != nil {
			m.DB = fmt.Sprintf("db%d", o.idx)
		}
		peers = append(peers, m)
	}
	repl := ""
	if c.repl != nil {
		repl = c.repl(d)
	}
	peers = append(peers, c.extraMembers...)
	extra := c.extraCluster
	if c.extraClusterFor != nil {
		extra += "\n" + c.extraClusterFor(d)
	}
	keyFile := c.keyFile
	if d.keyFile != "" {
		keyFile = d.keyFile
	}
	var res []testbed.Resource
	for _, r := range c.resources(d) {
		res = append(res, testbed.Resource{VIP: r.VIP, Dev: netns.Dev, Exec: r.Exec, Timeout: r.Timeout, Extra: r.Monitor})
	}
	cfg := testbed.RunConfig{
		Node:         d.node.Name,
		Listen:       d.httpAddr(),
		AgentCheck:   net.JoinHostPort(d.node.Addr.String(), fmt.Sprint(agentPort)),
		KeyFile:      keyFile,
		Keepalive:    c.keepalive,
		Deadtime:     c.deadtime,
		Witness:      []string{c.witness},
		StateDir:     d.dir,
		Members:      peers,
		Resources:    res,
		Repl:         repl,
		ClusterExtra: strings.Trim(extra, "\n"),
	}
	if err := cfg.Write(d.config); err != nil {
		c.t.Fatal(err)
	}
}

func (d *daemon) httpAddr() string {
	return net.JoinHostPort(d.node.Addr.String(), fmt.Sprint(httpPort))
}

// script writes an LSB-style resource script named name for this node and
// returns its path. Every call is appended to d.resLog as
// "<unix-nanos> <node> <name> <action>". startBody, when set, replaces
// the start action (e.g. to hang).
func (d *daemon) script(name, startBody string) string {
	path := filepath.Join(d.dir, "res-"+name+".sh")
	state := filepath.Join(d.dir, "res-"+name+".running")
	if startBody == "" {
		startBody = fmt.Sprintf("touch %q", state)
	}
	body := fmt.Sprintf(`#!/bin/sh
echo "$(date +%%s%%N) %s %s $1" >> %q
case "$1" in
start)  %s ;;
stop)   rm -f %q ;;
status) [ -e %q ] || exit 3 ;;
*)      exit 3 ;;
esac
exit 0
`, d.node.Name, name, d.resLog, startBody, state, state)
	if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
		d.c.t.Fatal(err)
	}
	return path
}

// running reports whether exec resource name is started on this node.
func (d *daemon) running(name string) bool {
	_, err := os.Stat(filepath.Join(d.dir, "res-"+name+".running"))
	return err == nil
}

// start launches `lockstep run` inside the node's namespace.
func (d *daemon) start() {
	t := d.c.t
	t.Helper()
	d.writeConfig()
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "---- start %s\n", time.Now().Format(time.RFC3339Nano))
	// Not CommandContext: the test decides how the daemon dies (SIGKILL vs
	// SIGTERM) and cleanup stops it gracefully.
	cmd := d.node.Command(context.Background(), lockstepBinary(t), "run", "-c", d.config)
	cmd.Stdout = logf
	cmd.Stderr = logf
	proc, err := testbed.Start("lockstep run on "+d.node.Name, "", cmd)
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.proc = proc
	d.mu.Unlock()
}

func (d *daemon) alive() bool {
	d.mu.Lock()
	proc := d.proc
	d.mu.Unlock()
	if proc == nil {
		return false
	}
	ended, _ := proc.Exited()
	return !ended
}

// signal sends sig and waits up to grace for the exit; it returns the
// exit error and whether the process exited in time.
func (d *daemon) signal(sig syscall.Signal, grace time.Duration) (error, bool) {
	d.mu.Lock()
	proc := d.proc
	d.mu.Unlock()
	if proc == nil {
		return nil, true
	}
	ended, err := proc.Signal(sig, grace)
	return err, ended
}

func (d *daemon) kill() {
	if _, ok := d.signal(syscall.SIGKILL, 10*time.Second); !ok {
		d.c.t.Fatalf("%s: lockstep run did not die on SIGKILL", d.node.Name)
	}
}

// stop sends SIGTERM and requires a clean exit within grace.
func (d *daemon) stop(grace time.Duration) {
	t := d.c.t
	t.Helper()
	err, ok := d.signal(syscall.SIGTERM, grace)
	if !ok {
		d.kill()
		t.Fatalf("%s: lockstep run did not exit within %s of SIGTERM", d.node.Name, grace)
	}
	if err != nil {
		t.Errorf("%s: lockstep run exited with %v after SIGTERM, want 0", d.node.Name, err)
	}
}

func (c *cluster) stopAll() {
	for _, d := range c.nodes {
		if !d.alive() {
			continue
		}
		if _, ok := d.signal(syscall.SIGTERM, 10*time.Second); !ok {
			c.t.Errorf("%s: lockstep run ignored SIGTERM for 10s; killing it", d.node.Name)
			d.signal(syscall.SIGKILL, 10*time.Second)
		}
	}
	if c.t.Failed() {
		for _, d := range c.nodes {
			c.t.Logf("==== %s daemon log (tail) ====\n%s", d.node.Name, tailFile(d.logPath, 80))
			c.t.Logf("==== %s resource log ====\n%s", d.node.Name, tailFile(d.resLog, 40))
		}
	}
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// status is the part of GET /status these tests rely on. Events are kept
// raw so that assertions can search their reasons without depending on
// every field name.
type status struct {
	Node      string `json:"node"`
	Role      string `json:"role"`
	Resources []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	} `json:"resources"`
	Events []event `json:"events"`
	raw    []byte
}

type event struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

// findEvent returns the newest event of kind whose message contains every
// one of subs.
func (s *status) findEvent(kind string, subs ...string) (event, bool) {
	for i := len(s.Events) - 1; i >= 0; i-- {
		e := s.Events[i]
		if e.Kind != kind {
			continue
		}
		ok := true
		for _, sub := range subs {
			ok = ok && strings.Contains(e.Message, sub)
		}
		if ok {
			return e, true
		}
	}
	return event{}, false
}

// holding reports whether every resource of the group is started.
func (s *status) holding() bool {
	for _, r := range s.Resources {
		if r.State != "started" {
			return false
		}
	}
	return len(s.Resources) > 0
}

func (d *daemon) get(ctx context.Context, path string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.httpAddr()+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := d.node.HTTPClient(2 * time.Second).Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

func (d *daemon) status(ctx context.Context) (*status, error) {
	code, body, err := d.get(ctx, "/status")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("%s: GET /status = %d: %s", d.node.Name, code, body)
	}
	var s status
	if err := json.Unmarshal(body, &s); err != nil {
		return nil, fmt.Errorf("%s: GET /status: %v: %s", d.node.Name, err, body)
	}
	s.raw = body
	return &s, nil
}

// role returns the node's role from /status, or "" when it does not answer.
func (d *daemon) role(ctx context.Context) string {
	s, err := d.status(ctx)
	if err != nil {
		return ""
	}
	return s.Role
}

func (d *daemon) health(ctx context.Context) int {
	code, _, err := d.get(ctx, "/health")
	if err != nil {
		return 0
	}
	return code
}

// agent asks the HAProxy agent-check port and returns its trimmed answer.
func (d *daemon) agent(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := d.node.DialContext(ctx, "tcp", net.JoinHostPort(d.node.Addr.String(), fmt.Sprint(agentPort)))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

func (d *daemon) holdsVIP() bool {
	has, err := d.node.HasAddr(d.c.vip)
	if err != nil {
		d.c.t.Fatalf("%s: reading addresses: %v", d.node.Name, err)
	}
	return has
}

// waitWriter waits until exactly one node reports role writer with its
// whole resource group started and the VIP on its interface, and no other
// node holds the VIP; it returns the writer.
func (c *cluster) waitWriter(within time.Duration) *daemon {
	c.t.Helper()
	var w *daemon
	waitFor(c.t, within, "exactly one writer holding the VIP and its resources", func() bool {
		w = nil
		writers := 0
		for _, d := range c.nodes {
			if !d.alive() {
				continue
			}
			st, err := d.status(c.t.Context())
			if err != nil || st.Role != "writer" {
				continue
			}
			writers++
			if st.holding() {
				w = d
			}
		}
		if writers != 1 || w == nil || !w.holdsVIP() {
			return false
		}
		for _, d := range c.nodes {
			if d != w && d.alive() && d.holdsVIP() {
				return false
			}
		}
		return true
	})
	return w
}

func (c *cluster) other(d *daemon) *daemon {
	for _, o := range c.nodes {
		if o != d {
			return o
		}
	}
	return nil
}

// resourceCalls returns the "<name> <action>" calls in node's resource log,
// status probes left out.
func (d *daemon) resourceCalls() []string {
	b, err := os.ReadFile(d.resLog)
	if err != nil && !os.IsNotExist(err) {
		d.c.t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 || f[3] == "status" {
			continue
		}
		out = append(out, f[2]+" "+f[3])
	}
	return out
}

func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, within, what, cond)
}

// ---------------------------------------------------------------------------

// TestClusterKillWriter: SIGKILL the writer's daemon; the survivor must hold
// the VIP and both exec resources within deadtime + 1s.
func TestClusterKillWriter(t *testing.T) {
	c := newCluster(t, 2, nil)
	c.startAll()
	w := c.waitWriter(15 * time.Second)
	s := c.other(w)
	if !w.running("a") || !w.running("b") {
		t.Fatalf("writer %s does not run resources a and b: calls %v", w.node.Name, w.resourceCalls())
	}
	if s.holdsVIP() || s.running("a") || s.running("b") {
		t.Fatalf("standby %s holds resources while %s is writer", s.node.Name, w.node.Name)
	}

	// Clients see the VIP move only when ARP caches follow (gratuitous ARP):
	// the witness plays the client, talking to a service that says which
	// node answered. A SIGKILLed daemon leaves its VIP configured, so the
	// client's cache must really be updated.
	for _, d := range c.nodes {
		serveIdentity(t, d)
	}
	client := c.nw.Witness()
	vipService := net.JoinHostPort(c.vip.String(), strconv.Itoa(identityPort))
	if got := askIdentity(t, client, vipService); got != w.node.Name {
		t.Fatalf("VIP answered by %q before the kill, want %s", got, w.node.Name)
	}

	killed := time.Now()
	w.kill()
	limit := c.deadtime + time.Second
	var took, answered time.Duration
	waitFor(t, 10*time.Second, "the survivor to hold the VIP and resources and answer on the VIP", func() bool {
		if took == 0 && s.holdsVIP() && s.running("a") && s.running("b") {
			took = time.Since(killed)
		}
		if answered == 0 && askIdentity(t, client, vipService) == s.node.Name {
			answered = time.Since(killed)
		}
		return took != 0 && answered != 0
	})
	t.Logf("client (witness) reached the VIP on %s %s after the kill", s.node.Name, answered.Round(time.Millisecond))
	t.Logf("failover after SIGKILL of %s: %s took the VIP and resources in %s (deadtime %s, keepalive %s)",
		w.node.Name, s.node.Name, took.Round(time.Millisecond), c.deadtime, c.keepalive)
	if took > limit {
		t.Errorf("failover took %s, want <= deadtime + 1s = %s", took, limit)
	}
	if r := s.role(t.Context()); r != "writer" {
		t.Errorf("survivor %s role = %q, want writer", s.node.Name, r)
	}
	st, err := s.status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// "Why did it fail over": the role event names the silent peer.
	if e, ok := st.findEvent("role", "-> writer", w.node.Name); !ok {
		t.Errorf("survivor's /status has no role event naming the dead peer %s: %s", w.node.Name, st.raw)
	} else {
		t.Logf("survivor's reason: %s", e.Message)
	}
}

// TestClusterPartitionWriter cuts the writer's link: it loses its peer and
// the witness, so it must fence itself (VIP released) before the survivor
// takes over. Sampling every 50ms, the two nodes never hold the VIP at
// the same time. After healing there is exactly one writer again.
func TestClusterPartitionWriter(t *testing.T) {
	c := newCluster(t, 2, nil)
	c.startAll()
	w := c.waitWriter(15 * time.Second)
	s := c.other(w)
	ctx := t.Context()

	// Healthy state as seen by load balancers and monitoring.
	waitFor(t, 5*time.Second, "both nodes healthy", func() bool {
		return w.health(ctx) == http.StatusOK && s.health(ctx) == http.StatusOK
	})
	if a, err := w.agent(ctx); err != nil || !strings.HasPrefix(a, "up") {
		t.Errorf("writer agent-check = %q, %v; want up", a, err)
	}
	if r := s.role(ctx); r != "standby" {
		t.Errorf("%s role = %q, want standby", s.node.Name, r)
	}
	checkMetrics(t, w, "writer")
	checkMetrics(t, s, "standby")

	cut := time.Now()
	c.nw.Partition(w.idx)
	var fencedAt, takenAt time.Duration
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		wv, sv := w.holdsVIP(), s.holdsVIP()
		if wv && sv {
			t.Fatalf("both %s and %s hold the VIP %s at %s after the cut", w.node.Name, s.node.Name, c.vip, time.Since(cut).Round(time.Millisecond))
		}
		if !wv && fencedAt == 0 {
			fencedAt = time.Since(cut)
		}
		if sv && takenAt == 0 {
			takenAt = time.Since(cut)
		}
		if fencedAt != 0 && takenAt != 0 && time.Since(cut) > takenAt+time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if fencedAt == 0 {
		t.Fatalf("partitioned writer %s still holds the VIP 15s after the cut", w.node.Name)
	}
	if takenAt == 0 {
		t.Fatalf("survivor %s never took the VIP", s.node.Name)
	}
	t.Logf("partition: %s released the VIP after %s, %s took it after %s (deadtime %s)",
		w.node.Name, fencedAt.Round(time.Millisecond), s.node.Name, takenAt.Round(time.Millisecond), c.deadtime)
	if fencedAt > c.deadtime+500*time.Millisecond {
		t.Errorf("self-fence took %s, want within deadtime (%s) + sampling slack", fencedAt, c.deadtime)
	}
	if takenAt < fencedAt {
		t.Errorf("survivor took over (%s) before the partitioned writer released the VIP (%s)", takenAt, fencedAt)
	}
	if w.running("a") || w.running("b") {
		t.Errorf("fenced node %s still runs its exec resources", w.node.Name)
	}

	// The fenced node's own view, reachable inside its namespace.
	if r := w.role(ctx); r != "fenced" {
		t.Errorf("%s role during partition = %q, want fenced", w.node.Name, r)
	}
	if code := w.health(ctx); code != http.StatusServiceUnavailable {
		t.Errorf("%s /health during partition = %d, want 503", w.node.Name, code)
	}
	if a, err := w.agent(ctx); err != nil || strings.HasPrefix(a, "up") {
		t.Errorf("fenced %s agent-check = %q, %v; want down, drain or maint", w.node.Name, a, err)
	}
	checkMetrics(t, w, "fenced")
	if code := s.health(ctx); code != http.StatusOK {
		t.Errorf("new writer %s /health = %d, want 200", s.node.Name, code)
	}
	if a, err := s.agent(ctx); err != nil || !strings.HasPrefix(a, "up") {
		t.Errorf("new writer %s agent-check = %q, %v; want up", s.node.Name, a, err)
	}
	checkMetrics(t, s, "writer")
	if st, err := w.status(ctx); err != nil {
		t.Error(err)
	} else if !containsAny(strings.ToLower(string(st.raw)), "fence") {
		t.Errorf("%s /status has no fence event: %s", w.node.Name, st.raw)
	}

	c.nw.Heal(w.idx)
	// After healing: one writer, stable for a few keepalives, never two VIPs.
	nw := c.waitWriter(10 * time.Second)
	stable := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(stable) {
		if w.holdsVIP() && s.holdsVIP() {
			t.Fatal("both nodes hold the VIP after healing")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := c.waitWriter(5 * time.Second); got != nw {
		t.Errorf("writer flapped after heal: %s then %s", nw.node.Name, got.node.Name)
	}
	if nw != s {
		// auto_failback is off: the survivor keeps the role.
		t.Errorf("after heal %s is writer, want the survivor %s (auto_failback off)", nw.node.Name, s.node.Name)
	}
	waitFor(t, 10*time.Second, "the old writer to rejoin as standby", func() bool {
		return w.role(ctx) == "standby"
	})
}

// TestClusterResourceOrder: resources start left to right on the writer
// and stop right to left on a graceful shutdown, after which the peer
// takes over.
func TestClusterResourceOrder(t *testing.T) {
	c := newCluster(t, 2, nil)
	c.startAll()
	w := c.waitWriter(15 * time.Second)
	s := c.other(w)
	if got, want := afterInitialStops(w.resourceCalls()), []string{"a start", "b start"}; !equal(got, want) {
		t.Fatalf("%s resource calls after becoming writer = %v, want %v", w.node.Name, got, want)
	}
	if got := s.resourceCalls(); len(got) != 0 && !onlyStops(got) {
		t.Fatalf("standby %s started resources: %v", s.node.Name, got)
	}

	w.stop(15 * time.Second)
	if w.holdsVIP() {
		t.Errorf("%s still holds the VIP after a graceful stop", w.node.Name)
	}
	if got, want := afterInitialStops(w.resourceCalls()), []string{"a start", "b start", "b stop", "a stop"}; !equal(got, want) {
		t.Errorf("%s resource calls after SIGTERM = %v, want %v", w.node.Name, got, want)
	}
	waitFor(t, 5*time.Second, "the peer to take over after a graceful stop", func() bool {
		return s.holdsVIP() && s.running("b")
	})
	calls := s.resourceCalls()
	ia, ib := index(calls, "a start"), index(calls, "b start")
	if ia < 0 || ib < ia {
		t.Errorf("%s resource calls = %v, want a start before b start", s.node.Name, calls)
	}
}

// TestClusterHangingResource: a start script that hangs is killed at its
// timeout, the group (VIP included) is released and the event shows up
// in /status.
func TestClusterHangingResource(t *testing.T) {
	const timeout = time.Second
	c := newCluster(t, 2, func(d *daemon) []resource {
		pidFile := filepath.Join(d.dir, "hang.pids")
		return []resource{
			{VIP: d.c.nw.Prefix(vipHost).String()},
			{Exec: d.script("hang", fmt.Sprintf("echo $$ >> %q; exec sleep 300", pidFile)), Timeout: timeout},
		}
	})
	c.startAll()
	ctx := t.Context()

	// Whichever node becomes writer first calls start and hangs.
	var hung *daemon
	var pid int
	waitFor(t, 15*time.Second, "a node to call the hanging start", func() bool {
		for _, d := range c.nodes {
			b, _ := os.ReadFile(filepath.Join(d.dir, "hang.pids"))
			if f := strings.Fields(string(b)); len(f) > 0 {
				hung = d
				fmt.Sscan(f[0], &pid)
				return true
			}
		}
		return false
	})
	started := time.Now()
	waitFor(t, timeout+5*time.Second, fmt.Sprintf("the hanging script (pid %d) to be killed", pid), func() bool {
		return syscall.Kill(pid, 0) != nil
	})
	t.Logf("hanging start on %s killed %s after it was seen (timeout %s)", hung.node.Name, time.Since(started).Round(time.Millisecond), timeout)
	if took := time.Since(started); took < timeout-200*time.Millisecond {
		t.Errorf("script killed after %s, before its %s timeout", took, timeout)
	}

	waitFor(t, 5*time.Second, "the failure event in /status", func() bool {
		st, err := hung.status(ctx)
		return err == nil && containsAny(strings.ToLower(string(st.raw)), "timeout", "timed out", "deadline")
	})
	// The group was released: stop called after the failed start (LSB stop
	// is idempotent) and the VIP, started before it, removed.
	waitFor(t, 5*time.Second, "stop after the failed start on "+hung.node.Name, func() bool {
		calls := hung.resourceCalls()
		return index(calls[index(calls, "hang start")+1:], "hang stop") >= 0
	})
	waitFor(t, 5*time.Second, "the VIP to be released on "+hung.node.Name, func() bool {
		return !hung.holdsVIP()
	})
}

// identityPort serves the node's name on every address of its namespace,
// the VIP included.
const identityPort = 7777

func serveIdentity(t *testing.T, d *daemon) {
	t.Helper()
	l, err := d.node.Listen("tcp", net.JoinHostPort("0.0.0.0", strconv.Itoa(identityPort)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(testbed.Serve(l, func(_ context.Context, conn net.Conn) {
		_, _ = io.WriteString(conn, d.node.Name+"\n")
	}))
}

// askIdentity returns the name served at addr from inside from's
// namespace, or "" when nothing answers within 200ms.
func askIdentity(t *testing.T, from *netns.Node, addr string) string {
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	conn, err := from.DialContext(ctx, "tcp", addr)
	if err != nil {
		return ""
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	line, _ := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line)
}

func checkMetrics(t *testing.T, d *daemon, state string) {
	t.Helper()
	code, body, err := d.get(t.Context(), "/metrics")
	if err != nil || code != http.StatusOK {
		t.Errorf("%s GET /metrics = %d, %v", d.node.Name, code, err)
		return
	}
	text := string(body)
	if !strings.Contains(text, "lockstep_") {
		t.Errorf("%s /metrics has no lockstep_ metrics", d.node.Name)
	}
	if v := metricValue(text, `lockstep_role{role="`+state+`"}`); v != "1" {
		t.Errorf("%s lockstep_role{role=%q} = %q, want 1", d.node.Name, state, v)
	}
	fenced := metricValue(text, "lockstep_fenced")
	switch state {
	case "fenced":
		if fenced != "1" {
			t.Errorf("%s lockstep_fenced = %q while fenced, want 1", d.node.Name, fenced)
		}
	default:
		if fenced != "0" {
			t.Errorf("%s lockstep_fenced = %q while %s, want 0", d.node.Name, fenced, state)
		}
	}
}

// metricValue returns the value of the first sample of name: a bare
// metric name matches any labels, `name{labels}` matches exactly.
func metricValue(text, name string) string {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, name+" ") || (!strings.Contains(name, "{") && strings.HasPrefix(line, name+"{")) {
			f := strings.Fields(line)
			return f[len(f)-1]
		}
	}
	return ""
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func index(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// afterInitialStops drops the stop calls a daemon may make at startup to
// clean up after a previous life (heartbeat does the same).
func afterInitialStops(calls []string) []string {
	for len(calls) > 0 && strings.HasSuffix(calls[0], " stop") {
		calls = calls[1:]
	}
	return calls
}

func onlyStops(calls []string) bool {
	for _, c := range calls {
		if !strings.HasSuffix(c, " stop") {
			return false
		}
	}
	return true
}

// TestClusterAutoFailback: with auto_failback on, the preferred node (the
// lowest name) takes the writer role back once it has been alive for
// failback_hold, and never while the current writer still holds the VIP.
func TestClusterAutoFailback(t *testing.T) {
	const hold = 1500 * time.Millisecond
	c := newCluster(t, 2, nil)
	c.extraCluster = fmt.Sprintf("  auto_failback: true\n  failback_hold: %s\n", hold)
	n1, n2 := c.node(1), c.node(2)
	n1.start()
	n2.start()
	if w := c.waitWriter(15 * time.Second); w != n1 {
		t.Fatalf("first writer = %s, want n1 (preferred)", w.node.Name)
	}
	n1.stop(15 * time.Second)
	if w := c.waitWriter(10 * time.Second); w != n2 {
		t.Fatalf("writer after n1 stopped = %s, want n2", w.node.Name)
	}

	back := time.Now()
	n1.start()
	var movedAfter time.Duration
	deadline := time.Now().Add(hold + 10*time.Second)
	for time.Now().Before(deadline) {
		v1, v2 := n1.holdsVIP(), n2.holdsVIP()
		if v1 && v2 {
			t.Fatalf("both nodes hold the VIP %s after n1 came back", time.Since(back).Round(time.Millisecond))
		}
		if v1 {
			movedAfter = time.Since(back)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if movedAfter == 0 {
		t.Fatalf("n1 did not take the writer role back within failback_hold %s + 10s", hold)
	}
	t.Logf("auto_failback: n1 writer again %s after its restart (failback_hold %s)", movedAfter.Round(time.Millisecond), hold)
	if movedAfter < hold {
		t.Errorf("failback after %s, before failback_hold %s", movedAfter, hold)
	}
	if w := c.waitWriter(5 * time.Second); w != n1 {
		t.Errorf("writer after failback = %s, want n1", w.node.Name)
	}
	st, err := n2.status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.findEvent("role", "auto_failback"); !ok {
		t.Errorf("n2 has no role event explaining the failback: %s", st.raw)
	}
}
