package integration

// Resource monitoring in network namespaces: the writer's group is the VIP
// and a real TCP service (socat) bound to it; clients are in the witness
// namespace, across the bridge, so they see what a balancer would see —
// including the ARP cache that only a gratuitous ARP moves.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
	"github.com/lockstep-ha/lockstep/integration/netns"
)

const servicePort = 8080

// service writes node d's LSB script for a TCP service on the VIP that
// answers every connection with the node's name. Its start fails while
// the file nostart exists in the node's directory, its stop (leaving the
// service running) while nostop does.
func (d *daemon) service() string {
	path := filepath.Join(d.dir, "svc.sh")
	pid := filepath.Join(d.dir, "svc.pid")
	body := fmt.Sprintf(`#!/bin/sh
echo "$(date +%%s%%N) %[1]s svc $1" >> %[2]q
pid=%[3]q
alive() { [ -f "$pid" ] || return 1; s=$(ps -o stat= -p "$(cat "$pid")" 2>/dev/null); case "$s" in ""|Z*) return 1;; esac; }
case "$1" in
start)
  [ -e %[4]q ] && { echo "start refused: $(cat %[4]q)"; exit 1; }
  socat TCP-LISTEN:%[5]d,bind=%[6]s,reuseaddr,fork SYSTEM:'echo %[1]s' </dev/null >>"$pid.log" 2>&1 &
  echo $! > "$pid"
  for i in $(seq 40); do ss -Hltn "sport = :%[5]d" | grep -q . && exit 0; sleep 0.05; done
  echo "not listening after 2s: $(tail -3 "$pid.log")"; exit 1 ;;
stop)
  [ -e %[7]q ] && { echo "stop refused: $(cat %[7]q)"; exit 1; }
  if alive; then kill "$(cat "$pid")"; for i in $(seq 100); do alive || break; sleep 0.02; done; fi
  rm -f "$pid"; exit 0 ;;
status) alive && exit 0; exit 3 ;;
*) exit 3 ;;
esac
`, d.node.Name, d.resLog, pid, filepath.Join(d.dir, "nostart"), servicePort, d.c.vip, filepath.Join(d.dir, "nostop"))
	if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
		d.c.t.Fatal(err)
	}
	return path
}

// servicePID is the running service's pid on node d, 0 when none.
func (d *daemon) servicePID() int {
	b, err := os.ReadFile(filepath.Join(d.dir, "svc.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// killService SIGKILLs node d's service, as a crash would; it returns
// when the process is gone.
func (d *daemon) killService() int {
	t := d.c.t
	t.Helper()
	pid := d.servicePID()
	if pid == 0 {
		t.Fatalf("%s: no service running", d.node.Name)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("%s: kill service %d: %v", d.node.Name, pid, err)
	}
	return pid
}

// answer asks the service behind the VIP from the witness namespace and
// returns the answering node's name, "" when nothing answers.
func (c *cluster) answer(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	conn, err := c.nw.Witness().DialContext(ctx, "tcp", net.JoinHostPort(c.vip.String(), strconv.Itoa(servicePort)))
	if err != nil {
		return ""
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(300 * time.Millisecond))
	line, _ := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line)
}

// serviceCluster: VIP then service, both monitored every 500ms; extra
// applies to the service entry.
func serviceCluster(t *testing.T, extra ...string) *cluster {
	t.Helper()
	if _, err := exec.LookPath("socat"); err != nil {
		t.Skip("socat not installed (make deps)")
	}
	var c *cluster
	c = newCluster(t, 2, func(d *daemon) []resource {
		return []resource{
			{VIP: c.nw.Prefix(vipHost).String()}, // default interval: address events trigger the check
			{Exec: d.service(), Timeout: 5 * time.Second, Monitor: append([]string{"monitor_interval: 500ms", "monitor_timeout: 2s"}, extra...)},
		}
	})
	return c
}

func (c *cluster) waitAnswer(within time.Duration, want string) time.Duration {
	c.t.Helper()
	return waitFor2(c.t, within, "the service behind the VIP answering from "+want, func() bool { return c.answer(c.t.Context()) == want })
}

func waitFor2(t testing.TB, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	waitFor(t, within, what, cond)
	return time.Since(start)
}

// metric reads one sample from node d's /metrics ("" when absent).
func (d *daemon) metric(name string) string {
	_, body, err := d.get(d.c.t.Context(), "/metrics")
	if err != nil {
		d.c.t.Fatal(err)
	}
	return metricValue(string(body), name)
}

// TestClusterResourceServiceKilled: the service behind an exec resource
// dies; the writer restarts it in place, without a role change, and the
// service answers again through the same VIP.
func TestClusterResourceServiceKilled(t *testing.T) {
	c := serviceCluster(t)
	for _, d := range c.nodes {
		d.start()
	}
	w := c.waitWriter(15 * time.Second)
	s := c.other(w)
	c.waitAnswer(5*time.Second, w.node.Name)

	old := w.killService()
	died := time.Now()
	back := c.waitAnswer(5*time.Second, w.node.Name)
	t.Logf("service killed -> answering again on %s: %s (monitor_interval 500ms)", w.node.Name, back.Round(time.Millisecond))
	if pid := w.servicePID(); pid == old || pid == 0 {
		t.Fatalf("service pid %d after the restart (was %d)", pid, old)
	}
	if r := w.role(t.Context()); r != "writer" {
		t.Fatalf("%s role %q after the restart", w.node.Name, r)
	}
	if s.holdsVIP() || s.role(t.Context()) != "standby" {
		t.Fatalf("the standby %s moved", s.node.Name)
	}
	svc := filepath.Join(w.dir, "svc.sh")
	// The service may answer before its start script has returned.
	waitFor(t, 3*time.Second, "the restart counted", func() bool {
		return w.metric(fmt.Sprintf(`lockstep_resource_restarts_total{resource=%q}`, svc)) == "1"
	})
	if v := w.metric(fmt.Sprintf(`lockstep_resource_monitor_failures_total{resource=%q}`, svc)); v != "1" {
		t.Errorf("monitor failures metric %q, want 1", v)
	}
	st, err := w.status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.findEvent("resource", "not running", "restarting it in place"); !ok {
		t.Errorf("no restart event in %s", st.raw)
	}
	if _, ok := st.findEvent("resource", "restarted in place"); !ok {
		t.Errorf("no restarted event in %s", st.raw)
	}
	if time.Since(died) > 5*time.Second {
		t.Errorf("recovery took %s", time.Since(died))
	}
}

// TestClusterResourceCannotRestart: the service dies and cannot start
// again; the writer gives up the role and the peer serves within a
// deadline, never with both nodes holding the VIP.
func TestClusterResourceCannotRestart(t *testing.T) {
	c := serviceCluster(t)
	for _, d := range c.nodes {
		d.start()
	}
	w := c.waitWriter(15 * time.Second)
	s := c.other(w)
	c.waitAnswer(5*time.Second, w.node.Name)

	if err := os.WriteFile(filepath.Join(w.dir, "nostart"), []byte("disk full (test)"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.killService()
	died := time.Now()
	// Detection (≤ 500ms) + the failed restart + release + the peer's
	// start: well inside 5s.
	deadline := died.Add(5 * time.Second)
	var answered time.Duration
	for time.Now().Before(deadline.Add(5 * time.Second)) {
		if w.holdsVIP() && s.holdsVIP() {
			t.Fatalf("both nodes hold the VIP %s after %s", c.vip, time.Since(died).Round(time.Millisecond))
		}
		if c.answer(t.Context()) == s.node.Name {
			answered = time.Since(died)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if answered == 0 || answered > 5*time.Second {
		t.Fatalf("the peer %s did not serve within 5s of the death (answered after %s)", s.node.Name, answered)
	}
	t.Logf("service killed, restart refused -> answering from the peer %s: %s", s.node.Name, answered.Round(time.Millisecond))
	c.waitWriter(5 * time.Second)
	st, err := w.status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Role != "standby" {
		t.Errorf("%s role %q", w.node.Name, st.Role)
	}
	if _, ok := st.findEvent("resource", "restart failed", "disk full (test)", "giving up the writer role"); !ok {
		t.Errorf("no failover event naming the start error in %s", st.raw)
	}
}

// TestClusterVIPRemovedByHand: `ip addr del` of the VIP on the writer; it
// is back within 2s, with a gratuitous ARP, and no role changes.
func TestClusterVIPRemovedByHand(t *testing.T) {
	c := serviceCluster(t)
	for _, d := range c.nodes {
		d.start()
	}
	w := c.waitWriter(15 * time.Second)
	c.waitAnswer(5*time.Second, w.node.Name)
	changes := w.metric("lockstep_role_changes_total")

	out, err := w.node.Command(t.Context(), "ip", "addr", "del", c.nw.Prefix(vipHost).String(), "dev", netns.Dev).CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr del: %v: %s", err, out)
	}
	removed := time.Now()
	// Default monitor_interval (2s): the address event triggers the check.
	waitFor(t, 2*time.Second, "the VIP back on "+w.node.Name, w.holdsVIP)
	t.Logf("VIP removed by hand -> back: %s", time.Since(removed).Round(time.Millisecond))
	c.waitAnswer(3*time.Second, w.node.Name)
	t.Logf("VIP removed by hand -> service answering through it: %s", time.Since(removed).Round(time.Millisecond))
	if v := w.metric("lockstep_role_changes_total"); v != changes {
		t.Errorf("role changes %s -> %s", changes, v)
	}
	waitFor(t, 2*time.Second, "the re-add counted", func() bool {
		return w.metric(fmt.Sprintf(`lockstep_resource_restarts_total{resource=%q}`, c.nw.Prefix(vipHost).String()+"@"+netns.Dev)) == "1"
	})
	st, err := w.status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.findEvent("resource", "vanished", "added again with gratuitous ARP"); !ok {
		t.Errorf("no re-add event in %s", st.raw)
	}
}

// TestClusterResourceFlapping: a service that keeps dying is restarted a
// bounded number of times, then the writer fails over and stays
// ineligible — it does not take the role back even when the new writer
// dies — until `lockstep clear`.
func TestClusterResourceFlapping(t *testing.T) {
	c := serviceCluster(t, "max_restarts: 2", "restart_window: 1m", "failure_timeout: 1h")
	for _, d := range c.nodes {
		d.start()
	}
	w := c.waitWriter(15 * time.Second)
	s := c.other(w)
	c.waitAnswer(5*time.Second, w.node.Name)
	svc := filepath.Join(w.dir, "svc.sh")
	restarts := fmt.Sprintf(`lockstep_resource_restarts_total{resource=%q}`, svc)
	for i := 1; i <= 2; i++ {
		w.killService()
		// Not before the restart is over: a service killed while its start
		// script still waits for it to listen is a failed start, which
		// fails over at once (TestClusterResourceCannotRestart).
		waitFor(t, 5*time.Second, fmt.Sprintf("restart %d", i), func() bool {
			return w.metric(restarts) == strconv.Itoa(i) && c.answer(t.Context()) == w.node.Name
		})
	}
	w.killService()
	died := time.Now()
	c.waitAnswer(5*time.Second, s.node.Name)
	t.Logf("third death within restart_window -> the peer %s answers: %s", s.node.Name, time.Since(died).Round(time.Millisecond))
	if c.waitWriter(5*time.Second) != s {
		t.Fatalf("writer is not %s", s.node.Name)
	}
	st, err := w.status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.findEvent("resource", "restart limit reached (max_restarts 2 within restart_window 1m0s)"); !ok {
		t.Errorf("no restart-limit event in %s", st.raw)
	}
	if !strings.Contains(string(st.raw), `"eligible": false`) {
		t.Errorf("%s /status does not say ineligible: %s", w.node.Name, st.raw)
	}

	// The new writer dies; the ineligible node must not take over.
	s.kill()
	time.Sleep(c.deadtime + 2*c.keepalive + 2*time.Second)
	if w.holdsVIP() || w.role(t.Context()) != "standby" {
		t.Fatalf("ineligible %s took over", w.node.Name)
	}
	if st, err := w.status(t.Context()); err != nil {
		t.Fatal(err)
	} else if _, ok := st.findEvent("role", "not eligible: resource "+svc+" failed"); !ok {
		t.Errorf("no 'not eligible' event in %s", st.raw)
	}

	// Another host (the balancer, say) may read /status but not clear.
	resp, err := c.nw.Witness().HTTPClient(2*time.Second).Post("http://"+w.httpAddr()+"/clear?resource="+url.QueryEscape(svc), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("clear from another host: HTTP %d, want 403", resp.StatusCode)
	}
	out, err := w.node.Command(t.Context(), lockstepBinary(t), "clear", "-c", w.config, svc).CombinedOutput()
	if err != nil {
		t.Fatalf("lockstep clear: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "cleared "+svc) {
		t.Fatalf("lockstep clear said %q", out)
	}
	cleared := time.Now()
	c.waitAnswer(5*time.Second, w.node.Name)
	t.Logf("lockstep clear -> %s serves again: %s", w.node.Name, time.Since(cleared).Round(time.Millisecond))
	out, err = w.node.Command(t.Context(), lockstepBinary(t), "clear", "-c", w.config, svc).CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), "no failure recorded") {
		t.Fatalf("second clear: exit %d: %s", code, out)
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// TestClusterTrackFailingStandby: the standby's track script fails; when
// the writer dies the standby must not take over, and does once its track
// passes again.
func TestClusterTrackFailingStandby(t *testing.T) {
	c := newCluster(t, 2, nil)
	c.extraClusterFor = func(d *daemon) string {
		script := filepath.Join(d.dir, "track.sh")
		body := fmt.Sprintf("#!/bin/sh\n[ -e %q ] && { echo 'upstream unreachable'; exit 1; }\nexit 0\n", filepath.Join(d.dir, "track.fail"))
		if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("  track:\n    - {name: upstream, script: %s, interval: 200ms, timeout: 1s, fall: 2, rise: 2}", script)
	}
	for _, d := range c.nodes {
		d.start()
	}
	w := c.waitWriter(15 * time.Second)
	s := c.other(w)
	if err := os.WriteFile(filepath.Join(s.dir, "track.fail"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, s.node.Name+" reports its track failing", func() bool {
		code := s.health(t.Context())
		a, _ := s.agent(t.Context())
		return code == 503 && a == "drain"
	})
	if st, err := s.status(t.Context()); err != nil {
		t.Fatal(err)
	} else if !strings.Contains(string(st.raw), "upstream unreachable") {
		t.Errorf("%s /status does not show the track's output: %s", s.node.Name, st.raw)
	}
	if v := s.metric(`lockstep_track_up{track="upstream"}`); v != "0" {
		t.Errorf("lockstep_track_up %q", v)
	}

	w.kill()
	killed := time.Now()
	for time.Since(killed) < c.deadtime+2*c.keepalive+2*time.Second {
		if s.holdsVIP() {
			t.Fatalf("%s took the VIP with a failing track %s after the writer died", s.node.Name, time.Since(killed).Round(time.Millisecond))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := s.role(t.Context()); r != "standby" {
		t.Fatalf("%s role %q", s.node.Name, r)
	}
	if err := os.Remove(filepath.Join(s.dir, "track.fail")); err != nil {
		t.Fatal(err)
	}
	fixed := time.Now()
	waitFor(t, 5*time.Second, s.node.Name+" takes the VIP once its track passes", s.holdsVIP)
	t.Logf("track passing again -> %s holds the VIP: %s (interval 200ms, rise 2)", s.node.Name, time.Since(fixed).Round(time.Millisecond))
}

// TestClusterResourceCannotRestartWithDB is the failover of a service
// that cannot restart with the MariaDB pair in the picture (relayed into
// the namespaces as in cluster_db_test.go): the peer takes over because
// its database is not fenced, and stays writable.
func TestClusterResourceCannotRestartWithDB(t *testing.T) {
	c := serviceCluster(t)
	db := withDB(t, c, "max_lag: 2s")
	for _, d := range c.nodes {
		d.start()
	}
	w := c.waitWriter(20 * time.Second)
	s := c.other(w)
	ctx := t.Context()
	waitFor(t, 10*time.Second, "both nodes healthy, the service answering", func() bool {
		return w.health(ctx) == 200 && s.health(ctx) == 200 && c.answer(ctx) == w.node.Name
	})

	if err := os.WriteFile(filepath.Join(w.dir, "nostart"), []byte("config broken (test)"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.killService()
	died := time.Now()
	for c.answer(ctx) != s.node.Name {
		if w.holdsVIP() && s.holdsVIP() {
			t.Fatalf("both nodes hold the VIP %s after %s", c.vip, time.Since(died).Round(time.Millisecond))
		}
		if time.Since(died) > 5*time.Second {
			t.Fatalf("the peer %s does not serve 5s after the death", s.node.Name)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("with DB: service killed, restart refused -> the peer %s answers: %s", s.node.Name, time.Since(died).Round(time.Millisecond))
	st, err := s.status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := st.findEvent("role", "standby -> writer"); !ok || !strings.Contains(e.Message, "eligible") {
		t.Errorf("%s took over without an election naming eligibility: %+v in %s", s.node.Name, e, st.raw)
	}
	if ro, err := db[s.idx-1].ReadOnly(ctx); err != nil || ro {
		t.Errorf("new writer's database read_only = %v, %v; want writable", ro, err)
	}
	if code := s.health(ctx); code != 200 {
		t.Errorf("new writer %s /health = %d", s.node.Name, code)
	}
}

// withDB starts the MariaDB pair, relays each server into its node's
// namespace (as cluster_db_test.go does) and gives every node a repl
// section with fence settings fence (YAML lines under fence:).
func withDB(t *testing.T, c *cluster, fence ...string) [2]*mariadbpair.Node {
	t.Helper()
	began := time.Now()
	pair := mariadbpair.Start(t)
	t.Logf("MariaDB pair up in %s", time.Since(began).Round(time.Millisecond))
	db := [2]*mariadbpair.Node{pair.Nodes[0], pair.Nodes[1]}
	c.repl = func(d *daemon) string {
		dsn := func(n *netns.Node) string {
			return fmt.Sprintf("%s:%s@tcp(%s)/", mariadbpair.MonitorUser, pair.MonitorPassword,
				net.JoinHostPort(n.Addr.String(), strconv.Itoa(dbPort)))
		}
		return fmt.Sprintf(`repl:
  interval: 100ms
  state_dir: %q
  fence:
    %s
  nodes:
    - {name: db1, dsn: %q}
    - {name: db2, dsn: %q}
`, filepath.Join(d.dir, "state"), strings.Join(fence, "\n    "), dsn(c.nw.Node(1)), dsn(c.nw.Node(2)))
	}
	for i, d := range c.nodes {
		netns.Forward(t, d.node, net.JoinHostPort(d.node.Addr.String(), strconv.Itoa(dbPort)), db[i].Addr())
	}
	return db
}

// TestClusterResourceFailedStandbyLagging: the writer's service cannot
// restart while the standby's database is fenced (lagging). The standby
// may not take over, so the writer keeps the role, draining, and its
// supervisor — still the decision-maker — reintroduces the standby's
// database once it caught up; then the writer hands over.
func TestClusterResourceFailedStandbyLagging(t *testing.T) {
	c := serviceCluster(t)
	db := withDB(t, c, "max_lag: 1s", "unfence_lag: 500ms", "unfence_hold: 1s")
	for _, d := range c.nodes {
		d.start()
	}
	w := c.waitWriter(20 * time.Second)
	s := c.other(w)
	sdb := db[s.idx-1]
	ctx := t.Context()
	waitFor(t, 10*time.Second, "both nodes healthy, the service answering", func() bool {
		return w.health(ctx) == 200 && s.health(ctx) == 200 && c.answer(ctx) == w.node.Name
	})
	if err := sdb.StopSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the standby's database fenced by the writer's supervisor", func() bool {
		ro, err := sdb.ReadOnly(ctx)
		return err == nil && ro
	})
	// The writer decides on the standby's heartbeats, which carry the
	// standby supervisor's view of the fence a moment later.
	waitFor(t, 5*time.Second, w.node.Name+" sees "+s.node.Name+" ineligible", func() bool {
		st, err := w.status(ctx)
		if err != nil {
			return false
		}
		var doc struct {
			Peers []struct {
				Name     string `json:"name"`
				Eligible bool   `json:"eligible"`
				DBFenced bool   `json:"db_fenced"`
			} `json:"peers"`
		}
		if err := json.Unmarshal(st.raw, &doc); err != nil {
			t.Fatal(err)
		}
		for _, p := range doc.Peers {
			if p.Name == s.node.Name && !p.Eligible && p.DBFenced {
				return true
			}
		}
		return false
	})

	if err := os.WriteFile(filepath.Join(w.dir, "nostart"), []byte("config broken (test)"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.killService()
	waitFor(t, 5*time.Second, w.node.Name+" draining as a writer that is not eligible", func() bool {
		a, _ := w.agent(ctx)
		return a == "drain" && w.health(ctx) == 503
	})
	time.Sleep(c.deadtime)
	if r := w.role(ctx); r != "writer" || !w.holdsVIP() || s.holdsVIP() {
		t.Fatalf("%s role %q holds VIP %v, %s holds VIP %v: want the failed writer kept while the standby is fenced",
			w.node.Name, r, w.holdsVIP(), s.node.Name, s.holdsVIP())
	}

	if err := sdb.StartSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	caught := time.Now()
	for c.answer(ctx) != s.node.Name {
		if w.holdsVIP() && s.holdsVIP() {
			t.Fatalf("both nodes hold the VIP %s", c.vip)
		}
		if time.Since(caught) > 20*time.Second {
			t.Fatalf("%s does not serve 20s after its database resumed applying", s.node.Name)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("standby's database resumed -> reintroduced and serving: %s", time.Since(caught).Round(time.Millisecond))
	if ro, err := sdb.ReadOnly(ctx); err != nil || ro {
		t.Errorf("new writer's database read_only = %v, %v", ro, err)
	}
	st, err := w.status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.findEvent("role", "no eligible peer to hand the writer role to, keeping it"); !ok {
		t.Errorf("no keeping event in %s", st.raw)
	}
	if _, ok := st.findEvent("role", "handing the writer role over to eligible peer "+s.node.Name); !ok {
		t.Errorf("no hand-over event in %s", st.raw)
	}
}

// TestClusterWriterLinkDown: the writer's link loses its carrier. The
// address monitor sees it at once and the writer releases; the survivor
// takes over on the usual timing; once the link is back the failure is
// lifted by itself (no `lockstep clear`), like keepalived's
// track_interface.
func TestClusterWriterLinkDown(t *testing.T) {
	c := newCluster(t, 2, nil)
	c.startAll()
	w := c.waitWriter(15 * time.Second)
	s := c.other(w)
	c.nw.Partition(w.idx)
	cut := time.Now()
	waitFor(t, 5*time.Second, w.node.Name+" released the VIP", func() bool { return !w.holdsVIP() })
	released := time.Since(cut)
	waitFor(t, 10*time.Second, s.node.Name+" took the VIP", s.holdsVIP)
	t.Logf("carrier lost: %s released the VIP after %s, %s took it after %s", w.node.Name, released.Round(time.Millisecond), s.node.Name, time.Since(cut).Round(time.Millisecond))
	if released > c.deadtime {
		t.Errorf("release after %s, want before deadtime %s (the link event)", released, c.deadtime)
	}
	st, err := w.status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.findEvent("resource", "link is", "until it recovers"); !ok {
		t.Errorf("no link-down event in %s", st.raw)
	}
	c.nw.Heal(w.idx)
	waitFor(t, 5*time.Second, w.node.Name+" eligible again", func() bool {
		st, err := w.status(t.Context())
		if err != nil {
			return false
		}
		_, lifted := st.findEvent("resource", "its cause is gone")
		return lifted && strings.Contains(string(st.raw), `"eligible": true`)
	})
	if got := c.waitWriter(10 * time.Second); got != s {
		t.Errorf("writer after heal %s, want %s", got.node.Name, s.node.Name)
	}
}
