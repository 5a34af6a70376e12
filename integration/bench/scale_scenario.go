package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// oneShot is a sync tool run as a command that exits when the target
// matches: `lockstep sync --once` or `rsync -a --delete`.
type oneShot struct {
	name string
	argv func(dst string) []string
}

// shotResult is one timed run of a oneShot.
type shotResult struct {
	wall   time.Duration
	maxRSS int64 // bytes: the largest RSS of the process and its reaped children
	bytes  int64 // both directions through the counting proxy
	// cpu is the user+system time of the process and the children it
	// reaped (rsync's ssh); peerCPU that of every process sshd ran for it
	// on the peer side (sshd's session processes, lockstep receive or the
	// rsync server), each sampled while it runs: the receiver outlives
	// its session process, so sshd's reaped-children times miss it. Both
	// move less than wall time with a shared machine's load.
	cpu, peerCPU float64
}

// runShot runs argv to completion and measures it. The peak RSS is
// sampled from /proc every 10ms: the process's own high-water mark
// (VmHWM) and the summed RSS of it and its children (rsync's ssh). Not
// wait4's ru_maxrss: exec carries the forking process's high-water mark
// over into it, so every tool would report the bench's own RSS.
func runShot(ctx context.Context, e *Env, argv []string, logPath string) (shotResult, error) {
	sshEnv, err := e.SSH()
	if err != nil {
		return shotResult{}, err
	}
	log, err := os.Create(logPath)
	if err != nil {
		return shotResult{}, err
	}
	defer log.Close()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	settle := func() { // sshd reaps its sessions after the client is gone
		for deadline := time.Now().Add(3 * time.Second); len(sshEnv.server.Sessions()) > 0 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	settle()
	up0, down0, _ := sshEnv.proxy.Counters()
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return shotResult{}, err
	}
	var peak int64
	tree := newTreeSampler(cmd.Process.Pid, 200*time.Millisecond)
	// The peer's processes: found every 200ms (a scan of /proc), their
	// CPU read every 10ms until they are gone.
	peerCPU := map[int]float64{}
	var scanned time.Time
	samplePeer := func() {
		if time.Since(scanned) > 200*time.Millisecond {
			for _, p := range sshEnv.server.Sessions() {
				if _, ok := peerCPU[p]; !ok {
					peerCPU[p] = 0
				}
			}
			scanned = time.Now()
		}
		for p := range peerCPU {
			if v, err := ownCPUSeconds(p); err == nil {
				peerCPU[p] = v
			}
		}
	}
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, tree.rss())
			if hwm, err := procStatusBytes(cmd.Process.Pid, "VmHWM"); err == nil {
				peak = max(peak, hwm)
			}
			samplePeer()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	err = cmd.Wait()
	wall := time.Since(t0)
	settle()
	close(stop)
	<-sampled
	up1, down1, _ := sshEnv.proxy.Counters()
	if err != nil {
		b, _ := os.ReadFile(logPath)
		return shotResult{}, fmt.Errorf("%s: %v\n%s", strings.Join(argv[:min(len(argv), 3)], " "), err, truncate(string(b), 3000))
	}
	var peer float64
	for _, v := range peerCPU {
		peer += v
	}
	return shotResult{wall: wall, bytes: up1 - up0 + down1 - down0, maxRSS: peak,
		cpu:     (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds(),
		peerCPU: peer}, nil
}

// scaleTools are lockstep's one-shot sync and rsync over the same ssh
// (proxy, key, known_hosts).
func scaleTools(e *Env, base string) ([]oneShot, error) {
	s, err := e.SSH()
	if err != nil {
		return nil, err
	}
	rsync, err := lookTool("rsync")
	if err != nil {
		return nil, skipf("rsync not installed: %v", err)
	}
	src := filepath.Join(base, "tree")
	peer := s.peer
	peer.ReceiverCommand = e.Lockstep
	lockstep := oneShot{name: "lockstep sync --once", argv: func(dst string) []string {
		cfg, err := LockstepSyncConfig(src, dst, peer, nil)
		if err != nil {
			panic(err) // a map of plain values always marshals
		}
		path := filepath.Join(base, "lockstep-"+filepath.Base(dst)+".yaml")
		if err := os.WriteFile(path, cfg, 0o600); err != nil {
			panic(err)
		}
		return []string{e.Lockstep, "sync", "-c", path, "--once"}
	}}
	sshCmd := strings.Join([]string{"ssh", "-p", strconv.Itoa(peer.Port), "-i", peer.Identity,
		"-o", "UserKnownHostsFile=" + peer.KnownHosts, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"}, " ")
	rs := oneShot{name: "rsync -a --delete (ssh)", argv: func(dst string) []string {
		return []string{rsync, "-a", "--delete", "-e", sshCmd, src + "/", peer.User + "@" + peer.Host + ":" + dst + "/"}
	}}
	return []oneShot{lockstep, rs}, nil
}

// Scenario 16: a big tree pushed once to an empty target, then again with
// the target already identical (a restart), lockstep's one-shot sync and
// rsync -a --delete side by side, alternating, on the same tree.
func runScale(ctx context.Context, e *Env, res *Result) error {
	base, err := e.scenarioDir("s16")
	if err != nil {
		return err
	}
	tools, err := scaleTools(e, base)
	if err != nil {
		return err
	}
	files, dirs := e.Sizes.ScaleFiles, max(e.Sizes.ScaleFiles/10, 1)
	t0 := time.Now()
	if err := generateTree(filepath.Join(base, "tree"), dirs, files, 256); err != nil {
		return err
	}
	res.note("Tree: %d files of 256 B in %d directories (generated in %s). Each tool syncs it to its own empty target over the same loopback sshd and counting proxy; lockstep through `lockstep receive` on the peer with its sync state enabled, rsync as `rsync -a --delete -e ssh`.",
		files, dirs, time.Since(t0).Round(time.Millisecond))
	dst := func(i int) string { return filepath.Join(base, fmt.Sprintf("dst%d", i)) }
	want, err := NewDigester().Tree(ctx, filepath.Join(base, "tree"))
	if err != nil {
		return err
	}
	initial := make([]shotResult, len(tools))
	for i, t := range tools {
		r, err := runShot(ctx, e, t.argv(dst(i)), filepath.Join(base, fmt.Sprintf("initial%d.log", i)))
		if err != nil {
			return fmt.Errorf("%s, initial sync: %w", t.name, err)
		}
		got, err := NewDigester().Tree(ctx, dst(i))
		if err != nil {
			return err
		}
		if d := FirstDiff(want, got); d != "" {
			return fmt.Errorf("%s, initial sync: target differs: %s", t.name, d)
		}
		initial[i] = r
	}
	// Restarts are short and the machine is shared: alternate the tools
	// and take each one's median.
	runs := 5
	if e.Smoke {
		runs = 1
	}
	restart := make([][]shotResult, len(tools))
	for range runs {
		for i, t := range tools {
			r, err := runShot(ctx, e, t.argv(dst(i)), filepath.Join(base, fmt.Sprintf("restart%d.log", i)))
			if err != nil {
				return fmt.Errorf("%s, restart: %w", t.name, err)
			}
			restart[i] = append(restart[i], r)
		}
	}
	med := make([]shotResult, len(tools))
	for i := range tools {
		rs := slices.Clone(restart[i])
		slices.SortFunc(rs, func(a, b shotResult) int { return int(a.wall - b.wall) })
		med[i] = rs[len(rs)/2]
		var walls []string
		for _, r := range restart[i] {
			walls = append(walls, r.wall.Round(time.Millisecond).String())
		}
		res.note("%s restarts (in run order): %s.", tools[i].name, strings.Join(walls, ", "))
	}
	row := func(metric string, k Kind, f func(shotResult) float64, rs []shotResult) {
		res.add(Row{Metric: metric, Kind: k, Lockstep: val(f(rs[0])), Anchor: tools[1].name, AnchorV: val(f(rs[1]))})
	}
	wall := func(r shotResult) float64 { return r.wall.Seconds() }
	rss := func(r shotResult) float64 { return float64(r.maxRSS) }
	wire := func(r shotResult) float64 { return float64(r.bytes) }
	row("initial sync to an empty target", KindDuration, wall, initial)
	row("initial sync: peak RSS (client process and its children)", KindBytes, rss, initial)
	row("initial sync: bytes over ssh", KindBytes, wire, initial)
	cpu := func(r shotResult) float64 { return r.cpu }
	peerCPU := func(r shotResult) float64 { return r.peerCPU }
	row("initial sync: client CPU (user+sys, with reaped children)", KindDuration, cpu, initial)
	row("initial sync: peer CPU (sshd session + lockstep receive / rsync server)", KindDuration, peerCPU, initial)
	row(fmt.Sprintf("restart, target already in sync (median of %d)", runs), KindDuration, wall, med)
	row("restart: peak RSS", KindBytes, rss, med)
	row("restart: bytes over ssh", KindBytes, wire, med)
	row("restart: client CPU (user+sys)", KindDuration, cpu, med)
	if initial[0].wall == 0 {
		return errors.New("no lockstep figures")
	}
	return nil
}
