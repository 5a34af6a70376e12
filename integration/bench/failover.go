package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lockstep-ha/lockstep/internal/testbed"
	"github.com/lockstep-ha/lockstep/internal/testbed/netns"
)

// keepalivedMasterDown is keepalived's documented master-down interval for
// its defaults (advert_int 1 s, priority 100): 3 × advert_int + skew, with
// skew = (256 − priority) / 256 s. It is a documented figure, not a
// measurement: keepalived is not installed by the harness.
const keepalivedMasterDown = 3*time.Second + (256-100)*time.Second/256

// The resource script records when it started, with nanoseconds, so the
// takeover instant is read from the survivor itself rather than polled.
const failoverResource = `#!/bin/sh
# Benchmark resource (LSB: start | stop | status).
state=%q
case "$1" in
start)  date +%%s.%%N > "$state" ;;
stop)   rm -f "$state" ;;
status) [ -e "$state" ] || exit 3 ;;
*)      exit 2 ;;
esac
`

type failoverNode struct {
	name, dir, cfg, state string
	argv                  []string // command prefix (ip netns exec NS) + lockstep run
	proc                  *Proc
}

// Scenario 9: the writer's daemon is killed (SIGKILL); time until the
// survivor has started the resource group and, with network namespaces,
// until the VIP answers from the survivor as seen from a third host.
func runFailover(ctx context.Context, e *Env, res *Result) error {
	if err := lockstepHas(ctx, e.Lockstep, "run"); err != nil {
		return errNotRun{err.Error()}
	}
	base, err := e.scenarioDir("s9")
	if err != nil {
		return err
	}
	var vn *netns.Network
	if why := netns.Skip(); why != "" {
		res.note("VIP not measured: %s; the figure is the resource start only, on loopback.", why)
	} else if vn, err = netns.NewNetwork(2); err != nil {
		return fmt.Errorf("build network namespaces: %w", err)
	} else {
		defer func() {
			if err := vn.Close(); err != nil {
				e.Log.Warn("removing the failover network namespaces", "err", err)
			}
		}()
	}

	// The witness is a TCP listener owned by the harness: both nodes can
	// always reach it, so the survivor is allowed to take over.
	var witness net.Listener
	if vn != nil {
		witness, err = vn.Witness().Listen("tcp", net.JoinHostPort(vn.Witness().Addr.String(), "7000"))
	} else {
		witness, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		return err
	}
	defer testbed.Serve(witness, func(context.Context, net.Conn) {})()
	keyFile := filepath.Join(base, "cluster.key")
	secret := make([]byte, 48)
	_, _ = rand.Read(secret)
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		return err
	}
	var addrs, listens []string
	vip := ""
	if vn != nil {
		for i := 0; i < 2; i++ {
			addrs = append(addrs, net.JoinHostPort(vn.Node(i+1).Addr.String(), "7001"))
			// 0.0.0.0 so that the status page also answers on the VIP.
			listens = append(listens, "0.0.0.0:9430")
		}
		vip = vn.Addr(100).String()
	} else {
		for i := 0; i < 4; i++ {
			a, err := freeLoopbackAddr()
			if err != nil {
				return err
			}
			if i < 2 {
				addrs = append(addrs, a)
			} else {
				listens = append(listens, a)
			}
		}
	}
	nodes := make([]*failoverNode, 2)
	for i := range nodes {
		n := &failoverNode{name: fmt.Sprintf("n%d", i+1)}
		n.dir = filepath.Join(base, n.name)
		if err := os.MkdirAll(n.dir, 0o700); err != nil {
			return err
		}
		n.state = filepath.Join(n.dir, "resource.started")
		script := filepath.Join(n.dir, "resource")
		if err := os.WriteFile(script, []byte(fmt.Sprintf(failoverResource, n.state)), 0o755); err != nil {
			return err
		}
		cfg := testbed.RunConfig{
			Node:    n.name,
			Listen:  listens[i],
			KeyFile: keyFile,
			Witness: []string{"tcp://" + witness.Addr().String()},
			// Per node: a bench run must not carry failures into the next.
			StateDir: n.dir,
		}
		for j := range nodes {
			cfg.Members = append(cfg.Members, testbed.Member{Name: fmt.Sprintf("n%d", j+1), Address: addrs[j]})
		}
		if vn != nil {
			cfg.Resources = append(cfg.Resources, testbed.Resource{VIP: vn.Prefix(100).String(), Dev: netns.Dev})
		}
		cfg.Resources = append(cfg.Resources, testbed.Resource{Exec: script, Timeout: 5 * time.Second})
		n.cfg = filepath.Join(n.dir, "lockstep.yaml")
		if err := cfg.Write(n.cfg); err != nil {
			return err
		}
		n.argv = []string{e.Lockstep, "run", "-c", n.cfg}
		if vn != nil {
			// ip netns exec execs lockstep itself: the pid is the daemon's.
			n.argv = append([]string{"ip", "netns", "exec", vn.Node(i + 1).NS}, n.argv...)
		}
		nodes[i] = n
	}
	start := func(n *failoverNode) error {
		p, err := StartProc("lockstep run "+n.name, filepath.Join(n.dir, "run.log"), nil, n.argv...)
		if err != nil {
			return err
		}
		n.proc = p
		return nil
	}
	defer func() {
		for _, n := range nodes {
			if n.proc != nil {
				_ = n.proc.Stop(10 * time.Second)
			}
		}
	}()
	for _, n := range nodes {
		if err := start(n); err != nil {
			return err
		}
	}
	holder := func() (*failoverNode, error) {
		var h *failoverNode
		for _, n := range nodes {
			if err := n.proc.ErrIfExited(); err != nil {
				continue
			}
			if _, err := os.Stat(n.state); err == nil {
				if h != nil {
					return nil, fmt.Errorf("both %s and %s hold the resource", h.name, n.name)
				}
				h = n
			}
		}
		return h, nil
	}
	readStarted := func(n *failoverNode) (time.Time, bool) {
		b, err := os.ReadFile(n.state)
		if err != nil {
			return time.Time{}, false
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
		if err != nil {
			return time.Time{}, false
		}
		sec := int64(f)
		return time.Unix(sec, int64((f-float64(sec))*1e9)), true
	}
	var tookRes, tookVIP []time.Duration
	for run := 0; run < e.Sizes.FailoverRuns; run++ {
		var writer *failoverNode
		if err := waitFor(ctx, 30*time.Second, func() error {
			for _, n := range nodes {
				if err := n.proc.ErrIfExited(); err != nil {
					return backoffStop{err}
				}
			}
			h, err := holder()
			if err != nil {
				return backoffStop{err}
			}
			if h == nil {
				return errors.New("no node holds the resource")
			}
			if vn != nil {
				who, err := whoAnswers(vn.Witness(), vip+":9430", 200*time.Millisecond)
				if err != nil {
					return fmt.Errorf("VIP: %w", err)
				}
				if who != h.name {
					return fmt.Errorf("VIP answered by %s, resource held by %s", who, h.name)
				}
			}
			writer = h
			return nil
		}); err != nil {
			return fmt.Errorf("run %d: waiting for a writer: %w\n--- n1 ---\n%s\n--- n2 ---\n%s", run, err, nodes[0].proc.LogTail(1200), nodes[1].proc.LogTail(1200))
		}
		// Let the standby see a few heartbeats of the writer first.
		time.Sleep(time.Second)
		survivor := nodes[0]
		if survivor == writer {
			survivor = nodes[1]
		}
		_ = os.Remove(survivor.state)
		killed := time.Now()
		if err := syscall.Kill(writer.proc.Pid(), syscall.SIGKILL); err != nil {
			return err
		}
		<-writer.proc.Done()
		// The killed daemon could not release anything: clean up as the
		// node's reboot would (its namespace keeps the VIP otherwise), so
		// the next run starts from one holder.
		_ = os.Remove(writer.state)
		if vn != nil {
			_, _ = runCmd(ctx, "ip", "-n", vn.Node(nodeIndex(nodes, writer)+1).NS, "addr", "del", vn.Prefix(100).String(), "dev", netns.Dev)
		}
		var resAt, vipAt time.Time
		deadline := time.Now().Add(30 * time.Second)
		for resAt.IsZero() || (vn != nil && vipAt.IsZero()) {
			if time.Now().After(deadline) {
				return fmt.Errorf("run %d: survivor %s did not take over within 30s (resource: %v, VIP: %v)\n--- %s ---\n%s", run, survivor.name, !resAt.IsZero(), !vipAt.IsZero(), survivor.name, survivor.proc.LogTail(1500))
			}
			if err := survivor.proc.ErrIfExited(); err != nil {
				return err
			}
			if resAt.IsZero() {
				if t, ok := readStarted(survivor); ok {
					resAt = t
				}
			}
			if vn != nil && vipAt.IsZero() {
				if who, err := whoAnswers(vn.Witness(), vip+":9430", 50*time.Millisecond); err == nil && who == survivor.name {
					vipAt = time.Now()
				}
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
		tookRes = append(tookRes, resAt.Sub(killed))
		if vn != nil {
			tookVIP = append(tookVIP, vipAt.Sub(killed))
		}
		// Bring the killed node back as the new standby.
		if err := start(writer); err != nil {
			return err
		}
	}
	anchor := seconds(keepalivedMasterDown)
	anchorName := "keepalived master-down (documented)"
	if vn != nil {
		res.note("Two `lockstep run` daemons in their own network namespaces on a bridge (keepalive/deadtime defaults), a TCP witness in a third namespace, and a resource group of the VIP %s/24 (ipaddr, gratuitous ARP) plus an exec script that records when it started. The writer's daemon is SIGKILLed; \"VIP answers\" = an HTTP request from the witness namespace to VIP:9430/status is answered by the survivor (polled every 5 ms).", vip)
		res.note("kill → VIP answers, per run (ms): %s", fmtDurMillis(tookVIP))
		res.add(Row{Metric: "writer killed → VIP answers from the survivor, p50", Kind: KindDuration, Lockstep: seconds(Percentile(tookVIP, 50)), Anchor: anchorName, AnchorV: anchor})
		res.add(Row{Metric: "… p90", Kind: KindDuration, Lockstep: seconds(Percentile(tookVIP, 90)), Anchor: anchorName, AnchorV: anchor})
		res.add(Row{Metric: "… max", Kind: KindDuration, Lockstep: seconds(Percentile(tookVIP, 100)), Anchor: anchorName, AnchorV: anchor})
	} else {
		res.note("Two `lockstep run` daemons on loopback (keepalive/deadtime defaults), a TCP witness, and one exec resource that records when it started. The writer's daemon is SIGKILLed.")
	}
	res.note("kill → resource script started on the survivor, per run (ms): %s", fmtDurMillis(tookRes))
	res.note("Anchor: keepalived's documented master-down interval with its defaults (advert_int 1 s, priority 100): 3 × 1 s + 156/256 s = %s, before it even starts adding the VIP. Not measured (keepalived is not installed); heartbeat's default deadtime is 30 s.", keepalivedMasterDown)
	res.add(Row{Metric: "writer killed → resources started on the survivor, p50", Kind: KindDuration, Lockstep: seconds(Percentile(tookRes, 50)), Anchor: anchorName, AnchorV: anchor})
	res.add(Row{Metric: "… max", Kind: KindDuration, Lockstep: seconds(Percentile(tookRes, 100)), Anchor: anchorName, AnchorV: anchor})
	return nil
}

func nodeIndex(nodes []*failoverNode, n *failoverNode) int {
	for i, x := range nodes {
		if x == n {
			return i
		}
	}
	return 0
}
