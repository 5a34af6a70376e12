package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
)

// monitorOpts: fast monitors on every node; r1's start fails while the
// file nostart exists in the node's directory; max restarts as given.
func monitorOpts(maxRestarts int, failureTimeout time.Duration) clusterOpts {
	gate := `[ "$1" = start ] && [ -e "$(dirname "$0")/nostart" ] && exit 1`
	return clusterOpts{
		scripts: map[string][]string{"a": {gate}, "b": {gate}},
		mutate: func(_, _ string, cc *ClusterConfig) {
			for i := range cc.Resources {
				n := maxRestarts
				cc.Resources[i].MonitorInterval = 100 * time.Millisecond
				cc.Resources[i].MonitorTimeout = 2 * time.Second
				cc.Resources[i].MaxRestarts = &n
				cc.Resources[i].FailureTimeout = failureTimeout
			}
		},
	}
}

// kill makes node n's resource r (r1, r2) not running, as a crashed
// service would be: status answers 3.
func (n *testNode) killResource(t testing.TB, r string) {
	t.Helper()
	if err := os.Remove(filepath.Join(n.dir, r+".running")); err != nil {
		t.Fatal(err)
	}
}

func (n *testNode) resourceName(i int) string {
	return n.daemon.role.act.group.Load().resources[i].Name()
}

func (n *testNode) running(r string) bool {
	_, err := os.Stat(filepath.Join(n.dir, r+".running"))
	return err == nil
}

func TestMonitorRestartsInPlace(t *testing.T) {
	tc := startCluster(t, monitorOpts(3, time.Minute))
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer holding both resources", func() bool { return len(a.held()) == 2 })
	before := len(starts(readLines(t, a.calls)))

	a.killResource(t, "r1")
	killed := time.Now()
	waitFor(t, 3*time.Second, "r1 and r2 restarted", func() bool {
		return len(starts(readLines(t, a.calls))) >= before+4 && a.running("r1") && a.running("r2") && len(a.held()) == 2
	})
	t.Logf("r1 dead -> restarted in place: %s", time.Since(killed).Round(time.Millisecond))
	// What depends on r1 (r2, after it) is stopped first and started after.
	if got := strings.Join(starts(readLines(t, a.calls))[before:], " "); got != "r2_stop r1_stop r1_start r2_start" {
		t.Fatalf("restart calls %q", got)
	}
	if a.role() != RoleWriter || b.role() != RoleStandby {
		t.Fatalf("roles changed: a %s b %s", a.role(), b.role())
	}
	r1 := a.resourceName(0)
	m := a.daemon.metrics.monitor
	// The restart is counted once the role loop has recorded it, which
	// can be a moment after the scripts ran.
	waitFor(t, 3*time.Second, "the restart counted", func() bool { return metricValue(t, m.restarts.WithLabelValues(r1)) >= 1 })
	if metricValue(t, m.failures.WithLabelValues(r1)) != 1 || metricValue(t, m.restarts.WithLabelValues(r1)) != 1 {
		t.Fatalf("metrics: failures %v restarts %v", metricValue(t, m.failures.WithLabelValues(r1)), metricValue(t, m.restarts.WithLabelValues(r1)))
	}
	eventTime(t, a, "status exited 3 (not running); restarting it and "+a.resourceName(1)+" after it in place (restart 1 of 3")
	var st Status
	getJSON(t, a, "/status", &st)
	if st.Resources[0].Restarts != 1 || st.Resources[0].Monitor == "" || !st.Eligible {
		t.Fatalf("status resources %+v eligible %v", st.Resources, st.Eligible)
	}
	// r2 alone: r1 is left alone.
	before = len(starts(readLines(t, a.calls)))
	a.killResource(t, "r2")
	waitFor(t, 3*time.Second, "r2 restarted", func() bool { return len(starts(readLines(t, a.calls))) >= before+2 && a.running("r2") })
	if got := strings.Join(starts(readLines(t, a.calls))[before:], " "); got != "r2_stop r2_start" {
		t.Fatalf("restart calls %q", got)
	}
}

// Restarts are bounded: past max_restarts the writer gives the role up,
// the peer takes over, and the node stays ineligible until cleared.
func TestMonitorRestartLimitFailsOverUntilCleared(t *testing.T) {
	tc := startCluster(t, monitorOpts(1, time.Hour))
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })

	a.killResource(t, "r1")
	waitFor(t, 3*time.Second, "first restart", func() bool {
		return metricValue(t, a.daemon.metrics.monitor.restarts.WithLabelValues(a.resourceName(0))) == 1 && len(a.held()) == 2
	})
	a.killResource(t, "r1")
	both := 0
	waitFor(t, 5*time.Second, "b writer, a standby", func() bool {
		if len(a.held()) > 0 && len(b.held()) > 0 {
			both++
		}
		return b.role() == RoleWriter && len(b.held()) == 2 && a.role() == RoleStandby && len(a.held()) == 0
	})
	if both > 0 {
		t.Fatalf("both nodes held resources in %d samples", both)
	}
	r1 := a.resourceName(0)
	eventTime(t, a, "restart limit reached (max_restarts 1 within restart_window 5m0s); giving up the writer role")
	if !strings.Contains(a.reason(), "not eligible: resource "+r1+" failed") {
		t.Fatalf("a's reason %q", a.reason())
	}
	if n := metricValue(t, a.daemon.metrics.monitor.failovers.WithLabelValues(r1)); n != 1 {
		t.Fatalf("failovers %v", n)
	}
	var st Status
	getJSON(t, a, "/status", &st)
	if st.Eligible || len(st.ResourceFailures) != 1 || st.Resources[0].Failure == nil || !strings.Contains(st.NotEligible, r1) {
		t.Fatalf("status: eligible %v not_eligible %q failures %+v", st.Eligible, st.NotEligible, st.ResourceFailures)
	}
	// The peer sees a ineligible in its heartbeats.
	waitFor(t, 2*time.Second, "b sees a ineligible", func() bool {
		for _, p := range b.daemon.role.Status().Peers {
			if p.Name == "a" && p.Alive && !p.Eligible {
				return true
			}
		}
		return false
	})
	// a does not take over when b leaves.
	b.stop(nil)
	time.Sleep(a.cfg().Deadtime)
	if a.role() != RoleStandby || len(a.held()) != 0 {
		t.Fatalf("ineligible a took over: role %s held %v", a.role(), a.held())
	}

	// A wrong name is refused and names the recorded failure.
	resp, err := http.Post("http://"+a.daemon.HTTPAddr().String()+"/clear?resource=nope", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("clear unknown: %d", resp.StatusCode)
	}
	resp, err = http.Post("http://"+a.daemon.HTTPAddr().String()+"/clear?resource="+r1, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("clear: %d", resp.StatusCode)
	}
	waitFor(t, 3*time.Second, "a takes over once cleared", func() bool { return len(a.held()) == 2 })
	eventTime(t, a, "cleared by the operator")
}

// A restart that fails hands over at once, without using up the restarts.
func TestMonitorFailedRestartFailsOver(t *testing.T) {
	tc := startCluster(t, monitorOpts(3, time.Hour))
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	if err := os.WriteFile(filepath.Join(a.dir, "nostart"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	a.killResource(t, "r1")
	killed := time.Now()
	waitFor(t, 5*time.Second, "b holding both resources", func() bool { return len(b.held()) == 2 && len(a.held()) == 0 })
	t.Logf("r1 dead and not restartable -> peer holds the group: %s", time.Since(killed).Round(time.Millisecond))
	eventTime(t, a, "restart failed")
	if a.role() != RoleStandby {
		t.Fatalf("a role %s", a.role())
	}
}

// failure_timeout lifts the failure by itself.
func TestMonitorFailureTimeout(t *testing.T) {
	tc := startCluster(t, monitorOpts(0, 700*time.Millisecond))
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	a.killResource(t, "r1")
	waitFor(t, 5*time.Second, "b writer", func() bool { return len(b.held()) == 2 })
	waitFor(t, 3*time.Second, "a eligible again", func() bool { return a.daemon.role.Status().Ineligible == "" })
	eventTime(t, a, "expired (failure_timeout")
	b.stop(nil)
	waitFor(t, 3*time.Second, "a takes over from the leaving b", func() bool { return len(a.held()) == 2 })
}

// While a restart runs, /health and the agent check drain the node.
func TestMonitorHealthDrainsWhileRecovering(t *testing.T) {
	o := monitorOpts(3, time.Minute)
	slow := `[ "$1" = start ] && [ -e "$(dirname "$0")/slowstart" ] && sleep 0.8`
	o.scripts = map[string][]string{"a": {slow}, "b": {slow}}
	tc := startCluster(t, o)
	a := tc.nodes["a"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	if err := os.WriteFile(filepath.Join(a.dir, "slowstart"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	a.killResource(t, "r1")
	waitFor(t, 3*time.Second, "agent check drains", func() bool { return agent(t, a) == AgentDrain+"\n" })
	if code, body := getText(t, a, "/health"); code != http.StatusServiceUnavailable || !strings.Contains(body, "recovering: restarting") {
		t.Fatalf("health while recovering: %d %q", code, body)
	}
	waitFor(t, 3*time.Second, "agent check up again", func() bool { return agent(t, a) == AgentUp+"\n" })
	if a.role() != RoleWriter {
		t.Fatalf("a role %s", a.role())
	}
}

func trackOpts(o clusterOpts, failing map[string]bool) clusterOpts {
	o.mutate = func(node, dir string, cc *ClusterConfig) {
		script := filepath.Join(dir, "track.sh")
		flag := filepath.Join(dir, "track.fail")
		body := fmt.Sprintf("#!/bin/sh\n[ -e %q ] && { echo 'gateway unreachable'; exit 1; }\nexit 0\n", flag)
		if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
			panic(err)
		}
		if failing[node] {
			if err := os.WriteFile(flag, nil, 0o644); err != nil {
				panic(err)
			}
		}
		cc.Track = []TrackConfig{{Name: "gw", Script: script, Interval: 100 * time.Millisecond, Timeout: time.Second, Fall: 2, Rise: 2}}
	}
	return o
}

// A standby whose track fails does not take over; once it passes again
// (rise), it does.
func TestTrackFailingStandbyDoesNotTakeOver(t *testing.T) {
	tc := startCluster(t, trackOpts(clusterOpts{}, map[string]bool{"a": true}))
	a, b := tc.nodes["a"], tc.nodes["b"]
	// a is the lower name but its track fails: b is elected.
	waitFor(t, 5*time.Second, "b writer", func() bool { return len(b.held()) == 2 })
	if a.role() != RoleStandby {
		t.Fatalf("a role %s", a.role())
	}
	var st Status
	getJSON(t, a, "/status", &st)
	if st.Eligible || len(st.Tracks) != 1 || st.Tracks[0].OK || !strings.Contains(st.Tracks[0].LastError, "gateway unreachable") {
		t.Fatalf("a status: eligible %v tracks %+v", st.Eligible, st.Tracks)
	}
	if code, body := getText(t, a, "/health"); code != http.StatusServiceUnavailable || !strings.Contains(body, "track gw failing") {
		t.Fatalf("a health: %d %q", code, body)
	}
	b.stop(errCrash)
	cfg := a.cfg()
	time.Sleep(cfg.Deadtime + cfg.TakeoverMargin + 300*time.Millisecond)
	if a.role() != RoleStandby || len(a.held()) != 0 {
		t.Fatalf("a took over with a failing track: %s %v", a.role(), a.held())
	}
	eventTime(t, a, "not eligible: track gw failing")
	if err := os.Remove(filepath.Join(a.dir, "track.fail")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "a takes over once the track passes", func() bool { return len(a.held()) == 2 })
	eventTime(t, a, "track gw passing again (2 consecutive successes, rise 2)")
}

// A writer whose track fails (fall times) gives the role up to the peer.
func TestTrackFailingWriterGivesUp(t *testing.T) {
	tc := startCluster(t, trackOpts(clusterOpts{}, nil))
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	if err := os.WriteFile(filepath.Join(a.dir, "track.fail"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "b writer", func() bool { return len(b.held()) == 2 && len(a.held()) == 0 })
	if !strings.Contains(a.reason(), "track gw failing") {
		t.Fatalf("a's reason %q", a.reason())
	}
	if v := metricValue(t, a.daemon.metrics.monitor.trackUp.WithLabelValues("gw")); v != 0 {
		t.Fatalf("track_up %v", v)
	}
}

func TestTrackScriptEnvironmentAndTimeout(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("LOCKSTEP_TEST_SECRET", "hunter2")
	envOut := filepath.Join(dir, "env")
	script := filepath.Join(dir, "t.sh")
	if err := os.WriteFile(script, []byte(fmt.Sprintf("#!/bin/sh\nenv > %q\n[ \"$1\" = hang ] && sleep 30\nexit 0\n", envOut)), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := runTrackScript(ctx, TrackConfig{Script: script}); err != nil {
		t.Fatal(err)
	}
	env, _ := os.ReadFile(envOut)
	if strings.Contains(string(env), "hunter2") {
		t.Fatalf("the daemon's environment leaked into the track script:\n%s", env)
	}
	hctx, hcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer hcancel()
	start := time.Now()
	err := runTrackScript(hctx, TrackConfig{Script: script, Args: []string{"hang"}})
	if err == nil || !strings.Contains(err.Error(), "timed out") || time.Since(start) > 2*time.Second {
		t.Fatalf("hanging track: %v after %s", err, time.Since(start))
	}
}

func TestMonitorConfigValidation(t *testing.T) {
	neg := -1
	for _, tc := range []struct {
		r    ResourceConfig
		want string
	}{
		{ResourceConfig{Exec: "/x", MonitorInterval: time.Millisecond}, "resources[0].monitor_interval"},
		{ResourceConfig{Exec: "/x", MaxRestarts: &neg}, "resources[0].max_restarts"},
		{ResourceConfig{Exec: "/x", FailureTimeout: -time.Second}, "resources[0].failure_timeout"},
	} {
		c := testCfg()
		c.Resources = []ResourceConfig{tc.r}
		c.SetDefaults()
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %s", tc.r, err, tc.want)
		}
	}
	for _, tc := range []struct {
		tr   []TrackConfig
		want string
	}{
		{[]TrackConfig{{}}, "track[0]: one of script or url"},
		{[]TrackConfig{{Script: "/a", URL: "http://x/"}}, "not both"},
		{[]TrackConfig{{Script: "rel"}}, "track[0].script"},
		{[]TrackConfig{{URL: "ftp://x/"}}, "track[0].url"},
		{[]TrackConfig{{Script: "/a", Fall: -1}}, "track[0].fall"},
		{[]TrackConfig{{Name: "x", Script: "/a"}, {Name: "x", Script: "/b"}}, "duplicate track"},
	} {
		c := testCfg()
		c.Track = tc.tr
		c.SetDefaults()
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %s", tc.tr, err, tc.want)
		}
	}
	c := testCfg()
	c.Resources = []ResourceConfig{{Exec: "/x"}}
	c.SetDefaults()
	r := c.Resources[0]
	if r.MonitorInterval != DefaultMonitorInterval || r.MonitorTimeout != DefaultMonitorTimeout || *r.MaxRestarts != DefaultMaxRestarts ||
		r.RestartWindow != DefaultRestartWindow || r.FailureTimeout != DefaultFailureTimeout {
		t.Fatalf("defaults %+v", r)
	}
}

func TestHealthWhileRecoveringOrTrackFailing(t *testing.T) {
	base := RoleStatus{Role: RoleWriter, Decided: true}
	rec := base
	rec.Recovering = "restarting /x"
	if h := health(rec); h.OK || h.Agent != AgentDrain || !strings.Contains(h.Reason, "recovering") {
		t.Fatalf("recovering: %+v", h)
	}
	tr := base
	tr.Role = RoleStandby
	tr.Tracks = []TrackStatus{{Name: "gw", Checked: true, LastError: "exited 1"}}
	if h := health(tr); h.OK || h.Agent != AgentDrain || !strings.Contains(h.Reason, "track gw failing") {
		t.Fatalf("track failing: %+v", h)
	}
	tr.Tracks = []TrackStatus{{Name: "gw"}} // not checked yet
	if h := health(tr); !h.OK {
		t.Fatalf("unchecked track: %+v", h)
	}
}

// checkIPAddrMonitor runs on testIPAddr's thread, inside its namespace,
// with a started: what the monitor asks for when the address vanishes
// and when the link goes down.
func checkIPAddrMonitor(t *testing.T, a *IPAddr, link netlink.Link) {
	ctx := context.Background()
	if f := a.monitor(ctx); f != nil {
		t.Errorf("monitor of a held address: %v", f.err)
		return
	}
	if err := netlink.AddrDel(link, a.nlAddr()); err != nil {
		t.Error(err)
		return
	}
	if f := a.monitor(ctx); f == nil || f.how != recoverReadd || !strings.Contains(f.err.Error(), "vanished") {
		t.Errorf("monitor of a vanished address: %+v", f)
	}
	if err := a.Start(ctx); err != nil {
		t.Error(err)
		return
	}
	if err := netlink.LinkSetDown(link); err != nil {
		t.Error(err)
		return
	}
	if f := a.monitor(ctx); f == nil || f.how != recoverNone || !strings.Contains(f.err.Error(), "down") {
		t.Errorf("monitor with the link down: %+v", f)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Error(err)
	}
}

func TestClearOnlyFromThisHost(t *testing.T) {
	for _, tc := range []struct {
		remote string
		want   bool
	}{
		{"127.0.0.1:5555", true},
		{"[::1]:5555", true},
		{"192.0.2.77:5555", false}, // TEST-NET-1: never an address of this host
		{"garbage", false},
	} {
		if got := fromThisHost(tc.remote); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.remote, got, tc.want)
		}
	}
}

// With no eligible peer (its database fenced) the writer keeps the role
// while failed, drains, and hands over once the peer becomes eligible.
func TestMonitorKeepsRoleWithoutEligiblePeer(t *testing.T) {
	tc := startCluster(t, monitorOpts(0, time.Hour))
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	b.repl.setFenced("db2", true)
	waitFor(t, 2*time.Second, "a sees b ineligible", func() bool {
		for _, p := range a.daemon.role.Status().Peers {
			if p.Name == "b" && !p.Eligible {
				return true
			}
		}
		return false
	})
	a.killResource(t, "r1")
	waitFor(t, 3*time.Second, "a ineligible", func() bool { return a.daemon.role.Status().Ineligible != "" })
	time.Sleep(300 * time.Millisecond)
	if a.role() != RoleWriter || b.role() != RoleStandby {
		t.Fatalf("roles a %s b %s; want a kept as writer", a.role(), b.role())
	}
	if code, body := getText(t, a, "/health"); code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for an eligible peer") {
		t.Fatalf("health: %d %q", code, body)
	}
	eventTime(t, a, "no eligible peer to hand the writer role to, keeping it")

	b.repl.setFenced("db2", false)
	waitFor(t, 3*time.Second, "b takes over once eligible", func() bool { return len(b.held()) == 2 && len(a.held()) == 0 })
	if !strings.Contains(a.reason(), "handing the writer role over to eligible peer b") {
		t.Fatalf("a's reason %q", a.reason())
	}
}

// A failure lifted while the writer kept the role restarts what it gave
// up on, and the monitors watch it again.
func TestMonitorClearResumesKeptGroup(t *testing.T) {
	tc := startCluster(t, monitorOpts(0, time.Hour))
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	b.stop(nil)
	a.killResource(t, "r1")
	waitFor(t, 3*time.Second, "a ineligible", func() bool { return a.daemon.role.Status().Ineligible != "" })
	if a.role() != RoleWriter {
		t.Fatalf("a role %s", a.role())
	}
	before := len(starts(readLines(t, a.calls)))
	if _, err := a.daemon.role.ClearFailure(a.resourceName(0)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "r1 and r2 restarted", func() bool { return a.running("r1") && a.running("r2") })
	if got := strings.Join(starts(readLines(t, a.calls))[before:], " "); got != "r2_stop r1_stop r1_start r2_start" {
		t.Fatalf("calls after clear %q", got)
	}
	waitFor(t, 2*time.Second, "healthy after the clear", func() bool {
		code, _ := getText(t, a, "/health")
		return code == http.StatusOK
	})
	// Watched again: the next death is noticed (and, max_restarts 0,
	// recorded).
	a.killResource(t, "r1")
	waitFor(t, 3*time.Second, "the next death noticed", func() bool { return a.daemon.role.Status().Ineligible != "" })
}

// The address watcher ends as soon as its context does: a release waits
// for it inside the self-fence's timing budget.
func TestAddrEventsStopAtOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- watchAddrEvents(ctx, make(chan struct{}, 1)) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	start := time.Now()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > 50*time.Millisecond {
			t.Fatalf("watcher took %s to stop", d)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("watcher did not stop")
	}
}

func TestResourceHealthExpiry(t *testing.T) {
	h := newResourceHealth()
	now := time.Now()
	up := false
	h.fail("vip", "link down", now, time.Hour, func() bool { return up })
	h.fail("svc", "restart limit", now, time.Minute, nil)
	h.fail("db", "restart failed", now, 0, nil)
	if e, r := h.expire(now.Add(time.Second)); len(e)+len(r) != 0 {
		t.Fatalf("expired %v recovered %v", e, r)
	}
	up = true
	if e, r := h.expire(now.Add(time.Second)); len(e) != 0 || len(r) != 1 || r[0].Resource != "vip" {
		t.Fatalf("link back: expired %v recovered %v", e, r)
	}
	if e, _ := h.expire(now.Add(time.Minute)); len(e) != 1 || e[0].Resource != "svc" {
		t.Fatalf("failure_timeout: expired %v", e)
	}
	if fs := h.failures(); len(fs) != 1 || fs[0].Resource != "db" || !fs[0].Expires.IsZero() {
		t.Fatalf("failure_timeout 0 must stay until cleared: %+v", fs)
	}
	spec := monitorSpec{maxRestarts: 2, restartWindow: time.Minute}
	for i, want := range []bool{true, true, false} {
		if _, ok := h.allowRestart("svc", now.Add(time.Duration(i)*time.Second), spec); ok != want {
			t.Fatalf("restart %d allowed %v", i+1, ok)
		}
	}
	if _, ok := h.allowRestart("svc", now.Add(time.Minute+time.Second), spec); !ok {
		t.Fatal("restart window does not slide")
	}
	if got := h.clear(""); len(got) != 1 || got[0] != "db" {
		t.Fatalf("clear all: %v", got)
	}
}

// A restart in progress does not hold back the self-fence: isolation
// interrupts it and the node fences within deadtime.
func TestMonitorRestartDoesNotDelaySelfFence(t *testing.T) {
	o := monitorOpts(3, time.Minute)
	slow := `[ "$1" = start ] && [ -e "$(dirname "$0")/slowstart" ] && sleep 5`
	o.scripts = map[string][]string{"a": {slow}, "b": {slow}}
	o.relays, o.margin = true, 800*time.Millisecond
	tc := startCluster(t, o)
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	if err := os.WriteFile(filepath.Join(a.dir, "slowstart"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	a.killResource(t, "r1")
	waitFor(t, 3*time.Second, "a restarting r1", func() bool { return strings.Contains(a.daemon.role.Status().Recovering, "restarting") })
	tc.relays["a->b"].cut.Store(true)
	tc.relays["b->a"].cut.Store(true)
	a.witness.stop()
	cut := time.Now()
	waitFor(t, 3*time.Second, "a fenced", func() bool { return a.role() == RoleFenced && len(a.held()) == 0 })
	fenced := time.Since(cut)
	t.Logf("isolated during a 5s restart: fenced and released after %s", fenced.Round(time.Millisecond))
	if cfg := a.cfg(); fenced > cfg.Deadtime+cfg.TakeoverMargin {
		t.Fatalf("fenced after %s: the restart held the role loop", fenced)
	}
	eventTime(t, a, "interrupted: this node is isolated")
	waitFor(t, 5*time.Second, "b writer", func() bool { return len(b.held()) == 2 })
}

func TestTrackHTTP(t *testing.T) {
	var status atomic.Int32
	status.Store(http.StatusOK)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(time.Second)
		}
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()
	probe := trackProbe(TrackConfig{URL: srv.URL + "/healthz", Timeout: time.Second})
	ctx := context.Background()
	if err := probe(ctx); err != nil {
		t.Fatalf("200: %v", err)
	}
	status.Store(http.StatusServiceUnavailable)
	if err := probe(ctx); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("503: %v", err)
	}
	status.Store(http.StatusFound) // a redirect is not followed, and not a pass
	if err := probe(ctx); err == nil || !strings.Contains(err.Error(), "302") {
		t.Fatalf("302: %v", err)
	}
	slow := trackProbe(TrackConfig{URL: srv.URL + "/slow", Timeout: 100 * time.Millisecond})
	sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := slow(sctx); err == nil || !strings.Contains(err.Error(), "no answer within") {
		t.Fatalf("slow: %v", err)
	}
}

// fall and rise: the first result counts at once, later ones only after
// fall failures or rise successes in a row.
func TestTrackFallRise(t *testing.T) {
	tr := newTracker(nil, NewEventLog(discardLogger()), NewMetrics(prometheus.NewRegistry()).monitor)
	ts := &trackState{cfg: TrackConfig{Name: "gw", Fall: 2, Rise: 3}}
	tr.tracks = []*trackState{ts}
	if _, u := tr.verdict(); u == "" {
		t.Fatal("unchecked track not reported")
	}
	now := time.Now()
	fail, pass := errors.New("exited 1"), error(nil)
	for i, step := range []struct {
		err  error
		want bool
	}{{pass, true}, {fail, true}, {fail, false}, {pass, false}, {pass, false}, {pass, true}, {fail, true}} {
		tr.record(ts, step.err, now)
		f, _ := tr.verdict()
		if (f == "") != step.want {
			t.Fatalf("step %d: failing %q, want ok=%v", i, f, step.want)
		}
	}
}

// A writer that kept the role for want of an eligible peer retries what
// it gave up on, with backoff, instead of waiting for clear or
// failure_timeout; a successful retry lifts the failure.
func TestMonitorKeptWriterRetriesWithBackoff(t *testing.T) {
	tc := startCluster(t, monitorOpts(0, time.Hour))
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	b.stop(nil)
	touch(t, filepath.Join(a.dir, "nostart"))
	a.killResource(t, "r1")
	waitFor(t, 3*time.Second, "a ineligible, kept as writer", func() bool { return a.daemon.role.Status().Ineligible != "" })
	failed := time.Now()
	r1 := a.resourceName(0)
	retries := a.daemon.metrics.monitor.retries
	waitFor(t, 5*time.Second, "a first retry, refused", func() bool { return metricValue(t, retries.WithLabelValues(r1, "error")) == 1 })
	first := time.Since(failed)
	eventTime(t, a, "retry of "+r1+" failed")
	if err := os.Remove(filepath.Join(a.dir, "nostart")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a second retry, successful", func() bool { return metricValue(t, retries.WithLabelValues(r1, "ok")) == 1 })
	second := time.Since(failed)
	t.Logf("retries after %s and %s (base 2s, doubling)", first.Round(time.Millisecond), second.Round(time.Millisecond))
	if second-first < 3*time.Second {
		t.Fatalf("no backoff: retries at %s and %s", first, second)
	}
	// The next decision publishes the lifted failure.
	waitFor(t, time.Second, "a eligible again", func() bool { return a.daemon.role.Status().Ineligible == "" })
	if a.role() != RoleWriter || !a.running("r1") || !a.running("r2") {
		t.Fatalf("after the retry: role %s r1 %v r2 %v", a.role(), a.running("r1"), a.running("r2"))
	}
	eventTime(t, a, r1+" recovered by a retry")
	// Watched again.
	a.killResource(t, "r1")
	waitFor(t, 3*time.Second, "the next death noticed", func() bool { return a.daemon.role.Status().Ineligible != "" })
}
