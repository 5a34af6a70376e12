package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lockstep-ha/lockstep/internal/testbed"
	"github.com/lockstep-ha/lockstep/internal/testbed/netns"
)

// The service behind the VIP in scenario 10: socat answering every TCP
// connection with the node's name. Its LSB script is lockstep's exec
// resource; keepalived's nodes run the same service, started by the
// harness, and track it with a script.
const (
	svcPort   = 8080
	svcScript = `#!/bin/sh
pid=%[1]q
alive() { [ -f "$pid" ] || return 1; s=$(ps -o stat= -p "$(cat "$pid")" 2>/dev/null); case "$s" in ""|Z*) return 1;; esac; }
case "$1" in
start)
  [ -e %[2]q ] && { echo "start refused (benchmark)"; exit 1; }
  socat TCP-LISTEN:%[3]d,reuseaddr,fork SYSTEM:'echo %[4]s' </dev/null >/dev/null 2>&1 &
  echo $! > "$pid"
  for i in $(seq 100); do ss -Hltn "sport = :%[3]d" | grep -q . && exit 0; sleep 0.02; done
  exit 1 ;;
stop)
  if alive; then kill "$(cat "$pid")"; for i in $(seq 100); do alive || break; sleep 0.02; done; fi
  rm -f "$pid"; exit 0 ;;
status) alive && exit 0; exit 3 ;;
*) exit 2 ;;
esac
`
	// The check interval both tools use: keepalived's vrrp_script interval
	// is whole seconds, 1 the shortest.
	trackInterval = time.Second
)

type svcNode struct {
	name, dir, script, pidFile, noStart string
	ns                                  *netns.Node
	proc                                *Proc
}

func (n *svcNode) pid() int {
	b, err := os.ReadFile(n.pidFile)
	if err != nil {
		return 0
	}
	p, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return p
}

// svcAnswer asks VIP:svcPort from the witness namespace and returns who
// answered ("" for nobody).
func svcAnswer(vn *netns.Network, vip string, timeout time.Duration) string {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := vn.Witness().DialContext(ctx, "tcp", net.JoinHostPort(vip, strconv.Itoa(svcPort)))
	if err != nil {
		return ""
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line)
}

// untilAnswer polls every 5 ms until the service answers through the VIP
// (from any node when want is ""); it returns when, or an error.
func untilAnswer(ctx context.Context, vn *netns.Network, vip, want string, within time.Duration) (time.Time, string, error) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if who := svcAnswer(vn, vip, 50*time.Millisecond); who != "" && (want == "" || who == want) {
			return time.Now(), who, nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, "", ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return time.Time{}, "", fmt.Errorf("the service did not answer through the VIP within %s", within)
}

// Scenario 10: the service behind the VIP dies (SIGKILL); time until it
// answers through the VIP again, as a client on the bridge sees it.
// lockstep restarts it in place (and, when it cannot start, hands over to
// the peer); keepalived with track_script hands the VIP to the backup,
// whose copy of the service is already running.
func runResourceDeath(ctx context.Context, e *Env, res *Result) error {
	if err := lockstepHas(ctx, e.Lockstep, "clear"); err != nil {
		return errNotRun{err.Error()}
	}
	if why := netns.Skip(); why != "" {
		return skipf("%s", why)
	}
	if _, err := exec.LookPath("socat"); err != nil {
		return skipf("socat not installed (make deps)")
	}
	base, err := e.scenarioDir("s10")
	if err != nil {
		return err
	}
	runs := max(e.Sizes.FailoverRuns, 1)
	handovers := max(runs/4, 1)

	lsRestart, lsHandover, err := measureLockstepResource(ctx, e, base, runs, handovers)
	if err != nil {
		return err
	}
	kaAnchor := "keepalived 2 track_script (interval 1 s, fall 1), VIP to the backup"
	var kaTimes []time.Duration
	if _, lerr := exec.LookPath("keepalived"); lerr != nil {
		res.note("keepalived not installed (make deps installs it): its column is empty.")
	} else if kaTimes, err = measureKeepalivedTrack(ctx, base, runs); err != nil {
		res.note("keepalived run failed: %s", firstLine(err.Error()))
		kaTimes = nil
	}
	ka := func(p float64) Value {
		if len(kaTimes) == 0 {
			return missing("not measured")
		}
		return seconds(Percentile(kaTimes, p))
	}
	res.note("Two nodes in network namespaces on a bridge, a VIP, and a TCP service (socat) answering with the node's name; a client in a third namespace connects to VIP:%d every 5 ms. The service process is SIGKILLed at a random phase of the check interval (%s for both tools: lockstep `monitor_interval: 1s`, keepalived `vrrp_script interval 1`).", svcPort, trackInterval)
	res.note("lockstep restarts the service in place (same node, VIP unchanged); when its start is refused it gives the writer role up and the peer starts it. keepalived does not manage the service: both nodes run it, and a failing track_script puts the master in FAULT, which hands the VIP to the backup (keepalived defaults otherwise: advert_int 1 s, equal priorities, unicast peers).")
	res.note("lockstep, killed → answering (restart in place), per run (ms): %s", fmtDurMillis(lsRestart))
	res.note("lockstep, killed with its start refused → answering from the peer, per run (ms): %s", fmtDurMillis(lsHandover))
	if len(kaTimes) > 0 {
		res.note("keepalived, killed → answering from the backup, per run (ms): %s", fmtDurMillis(kaTimes))
	}
	res.add(Row{Metric: "service killed → answering again (lockstep: restart in place), p50", Kind: KindDuration, Lockstep: seconds(Percentile(lsRestart, 50)), Anchor: kaAnchor, AnchorV: ka(50)})
	res.add(Row{Metric: "… p90", Kind: KindDuration, Lockstep: seconds(Percentile(lsRestart, 90)), Anchor: kaAnchor, AnchorV: ka(90)})
	res.add(Row{Metric: "… max", Kind: KindDuration, Lockstep: seconds(Percentile(lsRestart, 100)), Anchor: kaAnchor, AnchorV: ka(100)})
	res.add(Row{Metric: "service killed, cannot restart → answering from the peer (lockstep hand-over), p50", Kind: KindDuration, Lockstep: seconds(Percentile(lsHandover, 50)), Anchor: kaAnchor, AnchorV: ka(50)})
	res.add(Row{Metric: "… max", Kind: KindDuration, Lockstep: seconds(Percentile(lsHandover, 100)), Anchor: kaAnchor, AnchorV: ka(100)})
	return nil
}

func newSvcNodes(base, prefix string, vn *netns.Network) ([]*svcNode, error) {
	nodes := make([]*svcNode, 2)
	for i := range nodes {
		n := &svcNode{name: fmt.Sprintf("n%d", i+1), ns: vn.Node(i + 1)}
		n.dir = filepath.Join(base, prefix+"-"+n.name)
		if err := os.MkdirAll(n.dir, 0o700); err != nil {
			return nil, err
		}
		n.script = filepath.Join(n.dir, "svc")
		n.pidFile = filepath.Join(n.dir, "svc.pid")
		n.noStart = filepath.Join(n.dir, "nostart")
		if err := os.WriteFile(n.script, []byte(fmt.Sprintf(svcScript, n.pidFile, n.noStart, svcPort, n.name)), 0o755); err != nil {
			return nil, err
		}
		nodes[i] = n
	}
	return nodes, nil
}

// randomPhase waits a random fraction of the check interval, so that the
// death falls anywhere between two checks, as in production.
func randomPhase(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Duration(rand.Int64N(int64(trackInterval)))):
		return nil
	}
}

func measureLockstepResource(ctx context.Context, e *Env, base string, runs, handovers int) (restart, handover []time.Duration, err error) {
	vn, err := netns.NewNetwork(2)
	if err != nil {
		return nil, nil, fmt.Errorf("build network namespaces: %w", err)
	}
	defer func() {
		if cerr := vn.Close(); cerr != nil {
			e.Log.Warn("removing the network namespaces", "err", cerr)
		}
	}()
	witness, err := vn.Witness().Listen("tcp", net.JoinHostPort(vn.Witness().Addr.String(), "7000"))
	if err != nil {
		return nil, nil, err
	}
	defer testbed.Serve(witness, func(context.Context, net.Conn) {})()
	nodes, err := newSvcNodes(base, "lockstep", vn)
	if err != nil {
		return nil, nil, err
	}
	keyFile := filepath.Join(base, "cluster.key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("5a", 32)+"\n"), 0o600); err != nil {
		return nil, nil, err
	}
	vip := vn.Addr(100).String()
	procs := make([]*Proc, 2)
	cfgs := make([]string, 2)
	for i, n := range nodes {
		cfg := testbed.RunConfig{
			Node:     n.name,
			Listen:   net.JoinHostPort(n.ns.Addr.String(), "9430"),
			KeyFile:  keyFile,
			Witness:  []string{"tcp://" + witness.Addr().String()},
			StateDir: n.dir,
			Resources: []testbed.Resource{
				{VIP: vn.Prefix(100).String(), Dev: netns.Dev},
				{Exec: n.script, Timeout: 5 * time.Second, Extra: []string{
					"monitor_interval: " + trackInterval.String(), "monitor_timeout: 2s", "max_restarts: 1000"}},
			},
		}
		for _, o := range nodes {
			cfg.Members = append(cfg.Members, testbed.Member{Name: o.name, Address: net.JoinHostPort(o.ns.Addr.String(), "7001")})
		}
		cfgs[i] = filepath.Join(n.dir, "lockstep.yaml")
		if err := cfg.Write(cfgs[i]); err != nil {
			return nil, nil, err
		}
		p, err := StartProc("lockstep run "+n.name, filepath.Join(n.dir, "run.log"), nil, "ip", "netns", "exec", n.ns.NS, e.Lockstep, "run", "-c", cfgs[i])
		if err != nil {
			return nil, nil, err
		}
		procs[i] = p
		defer func() { _ = p.Stop(10 * time.Second) }()
	}
	logs := func() string {
		return fmt.Sprintf("\n--- n1 ---\n%s\n--- n2 ---\n%s", procs[0].LogTail(1200), procs[1].LogTail(1200))
	}
	holder := func() (*svcNode, int, error) {
		_, who, err := untilAnswer(ctx, vn, vip, "", 30*time.Second)
		if err != nil {
			return nil, 0, err
		}
		for i, n := range nodes {
			if n.name == who {
				return n, i, nil
			}
		}
		return nil, 0, fmt.Errorf("answered by unknown %q", who)
	}
	for run := 0; run < runs+handovers; run++ {
		w, wi, err := holder()
		if err != nil {
			return nil, nil, fmt.Errorf("waiting for the service: %w%s", err, logs())
		}
		refuse := run >= runs
		if refuse {
			if err := os.WriteFile(w.noStart, nil, 0o644); err != nil {
				return nil, nil, err
			}
		}
		if err := randomPhase(ctx); err != nil {
			return nil, nil, err
		}
		pid := w.pid()
		if pid == 0 {
			return nil, nil, fmt.Errorf("%s: no service pid%s", w.name, logs())
		}
		killed := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			return nil, nil, err
		}
		want := w.name
		if refuse {
			want = nodes[1-wi].name
		}
		at, _, err := untilAnswer(ctx, vn, vip, want, 30*time.Second)
		if err != nil {
			return nil, nil, fmt.Errorf("run %d: %w%s", run, err, logs())
		}
		if refuse {
			handover = append(handover, at.Sub(killed))
			_ = os.Remove(w.noStart)
			if out, err := runCmd(ctx, "ip", "netns", "exec", w.ns.NS, e.Lockstep, "clear", "-c", cfgs[wi], "--all"); err != nil {
				return nil, nil, fmt.Errorf("lockstep clear: %v: %s", err, out)
			}
		} else {
			restart = append(restart, at.Sub(killed))
		}
		// Let the restarted service's start script finish before the next
		// kill: a service killed during its own start is a failed start.
		time.Sleep(300 * time.Millisecond)
	}
	return restart, handover, nil
}

const keepalivedConf = `global_defs {
  router_id %[1]s
  script_user root
}
vrrp_script chk_svc {
  script "%[2]s"
  interval 1
  timeout 2
  fall 1
  rise 1
}
vrrp_instance VI_1 {
  state BACKUP
  interface %[3]s
  virtual_router_id 51
  priority 100
  advert_int 1
  nopreempt
  unicast_src_ip %[4]s
  unicast_peer {
    %[5]s
  }
  virtual_ipaddress {
    %[6]s dev %[3]s
  }
  track_script {
    chk_svc
  }
}
`

func measureKeepalivedTrack(ctx context.Context, base string, runs int) ([]time.Duration, error) {
	vn, err := netns.NewNetwork(2)
	if err != nil {
		return nil, fmt.Errorf("build network namespaces: %w", err)
	}
	defer vn.Close()
	nodes, err := newSvcNodes(base, "keepalived", vn)
	if err != nil {
		return nil, err
	}
	vip := vn.Addr(100).String()
	startSvc := func(n *svcNode) error {
		_, err := runCmd(ctx, "ip", "netns", "exec", n.ns.NS, n.script, "start")
		return err
	}
	var procs []*Proc
	defer func() {
		for _, p := range procs {
			_ = p.Stop(10 * time.Second)
		}
		for _, n := range nodes {
			_, _ = runCmd(context.Background(), "ip", "netns", "exec", n.ns.NS, n.script, "stop")
		}
	}()
	for i, n := range nodes {
		if err := startSvc(n); err != nil {
			return nil, fmt.Errorf("start the service on %s: %w", n.name, err)
		}
		check := filepath.Join(n.dir, "check")
		if err := os.WriteFile(check, []byte(fmt.Sprintf("#!/bin/sh\nexec %s status\n", n.script)), 0o755); err != nil {
			return nil, err
		}
		cfg := filepath.Join(n.dir, "keepalived.conf")
		conf := fmt.Sprintf(keepalivedConf, n.name, check, netns.Dev, n.ns.Addr, nodes[1-i].ns.Addr, vn.Prefix(100))
		if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
			return nil, err
		}
		p, err := StartProc("keepalived "+n.name, filepath.Join(n.dir, "keepalived.log"), nil,
			"ip", "netns", "exec", n.ns.NS, "keepalived", "-n", "-l", "-D", "-P", "-f", cfg,
			"-p", filepath.Join(n.dir, "keepalived.pid"), "-r", filepath.Join(n.dir, "vrrp.pid"))
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
	}
	logs := func() string {
		return fmt.Sprintf("\n--- n1 ---\n%s\n--- n2 ---\n%s", procs[0].LogTail(1200), procs[1].LogTail(1200))
	}
	var took []time.Duration
	for run := 0; run < runs; run++ {
		_, who, err := untilAnswer(ctx, vn, vip, "", 30*time.Second)
		if err != nil {
			return nil, fmt.Errorf("waiting for a keepalived master: %w%s", err, logs())
		}
		var m, b *svcNode
		for i, n := range nodes {
			if n.name == who {
				m, b = n, nodes[1-i]
			}
		}
		if m == nil {
			return nil, errors.New("answered by an unknown node")
		}
		if err := randomPhase(ctx); err != nil {
			return nil, err
		}
		killed := time.Now()
		if err := syscall.Kill(m.pid(), syscall.SIGKILL); err != nil {
			return nil, err
		}
		at, _, err := untilAnswer(ctx, vn, vip, b.name, 30*time.Second)
		if err != nil {
			return nil, fmt.Errorf("run %d: %w%s", run, err, logs())
		}
		took = append(took, at.Sub(killed))
		// Bring the service back and let its track pass (rise 1) and the
		// instance settle as backup before the next run.
		if err := startSvc(m); err != nil {
			return nil, err
		}
		time.Sleep(3 * trackInterval)
	}
	return took, nil
}
