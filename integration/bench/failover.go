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
	name, dir, cfg, state, listen string
	proc                          *Proc
}

// Scenario 9: the writer's daemon is killed (SIGKILL); time until the
// survivor has started the resource group.
func runFailover(ctx context.Context, e *Env, res *Result) error {
	if err := lockstepHas(ctx, e.Lockstep, "run"); err != nil {
		return errNotRun{err.Error()}
	}
	base, err := e.scenarioDir("s9")
	if err != nil {
		return err
	}
	// The witness is a TCP listener owned by the harness: both nodes can
	// always reach it, so the survivor is allowed to take over.
	witness, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer witness.Close()
	go func() {
		for {
			c, err := witness.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	keyFile := filepath.Join(base, "cluster.key")
	secret := make([]byte, 48)
	_, _ = rand.Read(secret)
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		return err
	}
	var addrs, listens []string
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
	nodes := make([]*failoverNode, 2)
	for i := range nodes {
		n := &failoverNode{name: fmt.Sprintf("n%d", i+1), listen: listens[i]}
		n.dir = filepath.Join(base, n.name)
		if err := os.MkdirAll(n.dir, 0o700); err != nil {
			return err
		}
		n.state = filepath.Join(n.dir, "resource.started")
		script := filepath.Join(n.dir, "resource")
		if err := os.WriteFile(script, []byte(fmt.Sprintf(failoverResource, n.state)), 0o755); err != nil {
			return err
		}
		var b strings.Builder
		fmt.Fprintf(&b, "node: %s\nlisten: %q\ncluster:\n  key_file: %q\n  witness: [\"tcp://%s\"]\n  nodes:\n", n.name, n.listen, keyFile, witness.Addr())
		for j := range nodes {
			fmt.Fprintf(&b, "    - {name: n%d, address: %q}\n", j+1, addrs[j])
		}
		fmt.Fprintf(&b, "  resources:\n    - exec: %q\n      timeout: 5s\n", script)
		n.cfg = filepath.Join(n.dir, "lockstep.yaml")
		if err := os.WriteFile(n.cfg, []byte(b.String()), 0o600); err != nil {
			return err
		}
		nodes[i] = n
	}
	start := func(n *failoverNode) error {
		p, err := StartProc("lockstep run "+n.name, filepath.Join(n.dir, "run.log"), nil, e.Lockstep, "run", "-c", n.cfg)
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
	var took []time.Duration
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
		// The killed daemon could not run its stop action: clean up as the
		// node's reboot would, so the next run sees one holder.
		_ = os.Remove(writer.state)
		var at time.Time
		if err := waitFor(ctx, 30*time.Second, func() error {
			if err := survivor.proc.ErrIfExited(); err != nil {
				return backoffStop{err}
			}
			b, err := os.ReadFile(survivor.state)
			if err != nil {
				return errors.New("survivor has not started the resource")
			}
			f, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
			if err != nil {
				return fmt.Errorf("resource state %q: %w", b, err)
			}
			sec, frac := int64(f), f-float64(int64(f))
			at = time.Unix(sec, int64(frac*1e9))
			return nil
		}); err != nil {
			return fmt.Errorf("run %d: %w\n--- %s ---\n%s", run, err, survivor.name, survivor.proc.LogTail(1500))
		}
		took = append(took, at.Sub(killed))
		// Bring the killed node back as the new standby.
		if err := start(writer); err != nil {
			return err
		}
	}
	res.note("Two `lockstep run` daemons on loopback (keepalive/deadtime defaults), a TCP witness, and one exec resource that records when it started. The writer's daemon is SIGKILLed; the figure is kill → resource started on the survivor. %d runs; per run (ms): %s", len(took), fmtDurMillis(took))
	res.note("The VIP itself (ipaddr resource) needs network namespaces and is not part of this figure; adding an address and sending gratuitous ARP takes a few ms on top.")
	res.note("Anchor: keepalived's documented master-down interval with its defaults (advert_int 1 s, priority 100): 3 × 1 s + 156/256 s = %s. Not measured (keepalived is not installed); heartbeat's default deadtime is 30 s.", keepalivedMasterDown)
	anchor := seconds(keepalivedMasterDown)
	res.add(Row{Metric: "writer killed → survivor holds resources, p50", Kind: KindDuration, Lockstep: seconds(Percentile(took, 50)), Anchor: "keepalived master-down (documented)", AnchorV: anchor})
	res.add(Row{Metric: "… p90", Kind: KindDuration, Lockstep: seconds(Percentile(took, 90)), Anchor: "keepalived master-down (documented)", AnchorV: anchor})
	res.add(Row{Metric: "… max", Kind: KindDuration, Lockstep: seconds(Percentile(took, 100)), Anchor: "keepalived master-down (documented)", AnchorV: anchor})
	return nil
}
