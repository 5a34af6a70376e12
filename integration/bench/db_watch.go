package main

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/lockstep-ha/lockstep/internal/testbed/mariadb"
)

// watchCounters is one sample of what a node has served: statements
// (Questions), transactions of its own GTID domain (on an idle pair, the
// heartbeat writes) and binlog bytes.
type watchCounters struct {
	at        time.Time
	questions float64
	ownTrx    float64
	binlog    float64
}

// watchProbeStatements is what sampleWatch itself adds to Questions
// between two samples: the Questions read of the second sample counts
// itself, and the two reads after the first sample's Questions read.
const watchProbeStatements = 3

func sampleWatch(ctx context.Context, db *sql.DB) (watchCounters, error) {
	var c watchCounters
	conn, err := db.Conn(ctx)
	if err != nil {
		return c, err
	}
	defer conn.Close()
	var name string
	if err := conn.QueryRowContext(ctx, "SHOW GLOBAL STATUS LIKE 'Questions'").Scan(&name, &c.questions); err != nil {
		return c, fmt.Errorf("Questions: %w", err)
	}
	c.at = time.Now()
	var pos string
	var domain uint32
	if err := conn.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos, @@gtid_domain_id").Scan(&pos, &domain); err != nil {
		return c, err
	}
	c.ownTrx = float64(gtidSeqIn(pos, domain))
	rows, err := conn.QueryContext(ctx, "SHOW BINARY LOGS")
	if err != nil {
		return c, err
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	for rows.Next() {
		vals := make([]sql.RawBytes, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return c, err
		}
		n, _ := strconv.ParseFloat(string(vals[1]), 64)
		c.binlog += n
	}
	return c, rows.Err()
}

// gtidSeqIn is the sequence number of domain in a MariaDB GTID list.
func gtidSeqIn(pos string, domain uint32) uint64 {
	for _, g := range splitComma(pos) {
		var d, s uint32
		var seq uint64
		if _, err := fmt.Sscanf(g, "%d-%d-%d", &d, &s, &seq); err == nil && d == domain {
			return seq
		}
	}
	return 0
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}

// watchRates are per-second figures for one node over a window.
type watchRates struct{ questions, writes, binlog float64 }

// measureWatch samples both nodes, waits window, and returns per-node
// rates (our own probe statements subtracted).
func measureWatch(ctx context.Context, pair *mariadb.Pair, window time.Duration) ([2]watchRates, error) {
	var out [2]watchRates
	var before [2]watchCounters
	for i, n := range pair.Nodes {
		c, err := sampleWatch(ctx, n.DB)
		if err != nil {
			return out, fmt.Errorf("%s: %w", n.Name, err)
		}
		before[i] = c
	}
	select {
	case <-ctx.Done():
		return out, ctx.Err()
	case <-time.After(window):
	}
	for i, n := range pair.Nodes {
		c, err := sampleWatch(ctx, n.DB)
		if err != nil {
			return out, fmt.Errorf("%s: %w", n.Name, err)
		}
		s := c.at.Sub(before[i].at).Seconds()
		out[i] = watchRates{
			questions: (c.questions - before[i].questions - watchProbeStatements) / s,
			writes:    (c.ownTrx - before[i].ownTrx) / s,
			binlog:    (c.binlog - before[i].binlog) / s,
		}
	}
	return out, nil
}

// Scenario 13: what watching an idle pair costs the databases — lockstep
// repl supervise at its defaults vs pt-heartbeat (--update on both masters,
// each monitoring its peer with --monitor, 1 s) — then the lag error of
// both under a steady write load, in the same run.
func runWatchCost(ctx context.Context, e *Env, res *Result) error {
	if err := lockstepHas(ctx, e.Lockstep, "repl", "supervise"); err != nil {
		return errNotRun{err.Error()}
	}
	ptPath, ptErr := lookTool("pt-heartbeat")
	d, err := e.startPair(ctx, "s13")
	if err != nil {
		return err
	}
	defer d.close()
	db1, db2 := d.pair.Nodes[0], d.pair.Nodes[1]
	window, lagRuns := 20*time.Second, 10
	if e.Smoke {
		window, lagRuns = 4*time.Second, 2
	}
	if err := execOnOneConn(ctx, db1.DB, "CREATE DATABASE bench", "CREATE TABLE bench.ticks (id BIGINT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6))", "CREATE DATABASE percona"); err != nil {
		return err
	}
	if err := d.pair.WaitSynced(ctx, time.Minute); err != nil {
		return err
	}
	idle, err := measureWatch(ctx, d.pair, window)
	if err != nil {
		return err
	}

	cfg, err := d.writeConfig("repl", "")
	if err != nil {
		return err
	}
	metricsAddr, err := freeLoopbackAddr()
	if err != nil {
		return err
	}
	metricsURL := "http://" + metricsAddr + "/metrics"
	sup, err := e.startSupervise(d, "supervise.log", cfg, metricsAddr)
	if err != nil {
		return err
	}
	defer sup.Stop(10 * time.Second)
	if err := waitFor(ctx, 30*time.Second, func() error {
		if err := sup.ErrIfExited(); err != nil {
			return backoffStop{err}
		}
		_, _, err := lockstepLag(ctx, metricsURL, db2.Name)
		return err
	}); err != nil {
		return fmt.Errorf("lockstep warm-up: %w\n--- supervise log ---\n%s", err, sup.LogTail(1500))
	}
	time.Sleep(2 * time.Second) // past the start-up statements
	ls, err := measureWatch(ctx, d.pair, window)
	if err != nil {
		return err
	}
	if err := sup.ErrIfExited(); err != nil {
		return fmt.Errorf("lockstep repl supervise exited: %w\n%s", err, sup.LogTail(1500))
	}
	sup.Stop(10 * time.Second)

	var pt [2]watchRates
	var pts []*Proc
	defer func() {
		for _, p := range pts {
			p.Stop(5 * time.Second)
		}
	}()
	if ptErr == nil {
		// pt-heartbeat's master-master setup: --update on each master,
		// and each master's lag read on its peer by --monitor.
		for i, n := range d.pair.Nodes {
			args := []string{"--update", "--utc", "--database", "percona", "--interval", "1", "-u", "root", "-S", n.Socket, "-h", "localhost"}
			if i == 0 {
				args = append(args, "--create-table")
			}
			p, err := StartProc("pt-heartbeat --update "+n.Name, filepath.Join(d.dir, "pt-update-"+n.Name+".log"), nil, append([]string{ptPath}, args...)...)
			if err != nil {
				return err
			}
			pts = append(pts, p)
			if i == 0 {
				if err := waitFor(ctx, 30*time.Second, func() error {
					_, _, err := ptHeartbeatLag(ctx, db2.DB, db1.ServerID)
					return err
				}); err != nil {
					return fmt.Errorf("pt-heartbeat warm-up: %w", err)
				}
			}
		}
		for i, n := range d.pair.Nodes {
			peer := d.pair.Nodes[1-i]
			p, err := StartProc("pt-heartbeat --monitor "+n.Name, filepath.Join(d.dir, "pt-monitor-"+n.Name+".log"), nil, ptPath,
				"--monitor", "--utc", "--database", "percona", "--interval", "1", "--master-server-id", strconv.Itoa(peer.ServerID),
				"-u", "root", "-S", n.Socket, "-h", "localhost")
			if err != nil {
				return err
			}
			pts = append(pts, p)
		}
		time.Sleep(3 * time.Second)
		if pt, err = measureWatch(ctx, d.pair, window); err != nil {
			return err
		}
		for _, p := range pts {
			if err := p.ErrIfExited(); err != nil {
				return fmt.Errorf("%s exited: %w\n%s", p.Name, err, p.LogTail(1000))
			}
		}
	} else {
		res.note("pt-heartbeat not installed: anchor column missing (%v).", ptErr)
	}
	// Lag error: lockstep and pt-heartbeat's --update on db1 both run,
	// db1 takes 100 inserts/s, db2's SQL thread is stopped at T and both
	// tools are read once, at a random instant 0.3–1.8 s after T (a
	// different phase of both heartbeat cycles each run).
	sup2, err := e.startSupervise(d, "supervise-lag.log", cfg, metricsAddr)
	if err != nil {
		return err
	}
	defer sup2.Stop(10 * time.Second)
	wctx, stopWriter := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopWriter(); wg.Wait() }()
	wg.Add(1)
	go steadyWriter(wctx, db1.DB, 100, &wg)
	if err := waitFor(ctx, 30*time.Second, func() error {
		if err := sup2.ErrIfExited(); err != nil {
			return backoffStop{err}
		}
		_, _, err := lockstepLag(ctx, metricsURL, db2.Name)
		return err
	}); err != nil {
		return fmt.Errorf("lockstep warm-up: %w\n--- supervise log ---\n%s", err, sup2.LogTail(1500))
	}
	time.Sleep(2 * time.Second)
	var lsErr, ptErrs []float64
	for run := 0; run < lagRuns; run++ {
		if err := waitFor(ctx, 30*time.Second, func() error {
			lag, _, err := lockstepLag(ctx, metricsURL, db2.Name)
			if err != nil {
				return err
			}
			if lag > 0.05 {
				return fmt.Errorf("db2 lag %.3fs, waiting for it to catch up", lag)
			}
			return nil
		}); err != nil {
			return fmt.Errorf("run %d: %w\n--- supervise log ---\n%s", run, err, sup2.LogTail(1500))
		}
		time.Sleep(time.Duration(200+rand.IntN(800)) * time.Millisecond)
		tA := time.Now()
		if err := db2.StopSQLThread(ctx); err != nil {
			return err
		}
		tStop := tA.Add(time.Since(tA) / 2)
		time.Sleep(time.Until(tStop.Add(time.Duration(300+rand.IntN(1500)) * time.Millisecond)))
		lag, at, err := lockstepLag(ctx, metricsURL, db2.Name)
		if err != nil {
			return err
		}
		lsErr = append(lsErr, (lag-at.Sub(tStop).Seconds())*1000)
		if ptErr == nil {
			lag, at, err := ptHeartbeatLag(ctx, db2.DB, db1.ServerID)
			if err != nil {
				return err
			}
			ptErrs = append(ptErrs, (lag-at.Sub(tStop).Seconds())*1000)
		}
		if err := db2.StartSQLThread(ctx); err != nil {
			return err
		}
	}

	anchor := "pt-heartbeat (--update + --monitor, 1 s)"
	ptv := func(f func(watchRates) float64, i int) Value {
		if ptErr != nil {
			return missing("pt-heartbeat not installed")
		}
		return val(f(pt[i]))
	}
	for i, n := range d.pair.Nodes {
		res.add(Row{Metric: n.Name + ": statements/s (Questions)", Kind: KindCount, Lockstep: val(ls[i].questions), Anchor: anchor, AnchorV: ptv(func(r watchRates) float64 { return r.questions }, i)})
		res.add(Row{Metric: n.Name + ": heartbeat writes/s (own-domain transactions)", Kind: KindCount, Lockstep: val(ls[i].writes), Anchor: anchor, AnchorV: ptv(func(r watchRates) float64 { return r.writes }, i)})
		res.add(Row{Metric: n.Name + ": binlog bytes/s", Kind: KindBytes, Lockstep: val(ls[i].binlog), Anchor: anchor, AnchorV: ptv(func(r watchRates) float64 { return r.binlog }, i)})
	}
	ptRow := func(v []float64, f func([]float64) float64) Value {
		if ptErr != nil {
			return missing("pt-heartbeat not installed")
		}
		return millisVal(f(v))
	}
	res.add(Row{Metric: "lag error, mean |reading − truth|", Kind: KindMillis, Lockstep: millisVal(meanAbs(lsErr)), Anchor: anchor, AnchorV: ptRow(ptErrs, meanAbs)})
	res.add(Row{Metric: "lag error, max |reading − truth|", Kind: KindMillis, Lockstep: millisVal(maxAbs(lsErr)), Anchor: anchor, AnchorV: ptRow(ptErrs, maxAbs)})
	res.note("Cost: an idle pair, each tool alone, measured over %s per node: Questions delta (our %d probe statements subtracted), transactions in the node's own GTID domain (the heartbeat writes), and the growth of SHOW BINARY LOGS. Idle pair without any watcher: db1 %.2f statements/s, db2 %.2f.", window, watchProbeStatements, idle[0].questions, idle[1].questions)
	res.note("lockstep: `lockstep repl supervise` at its defaults (interval, conflict detector on; its binlog readers are replication connections, which Questions does not count). pt-heartbeat: `--update` on both masters and `--monitor --master-server-id <peer>` on each, all at the default 1 s.")
	res.note("Lag error: db1 takes 100 inserts/s; in each of %d runs db2's SQL thread is stopped at T and both tools are read once at a random instant 0.3–1.8 s after T; truth = t − T. lockstep: its `lockstep_repl_lag_seconds` gauge scraped from /metrics; pt-heartbeat: now − ts of db1's row on db2 (what --check computes).", len(lsErr))
	res.note("lockstep error samples (ms): %s", fmtMillis(lsErr))
	if ptErr == nil {
		res.note("pt-heartbeat error samples (ms): %s", fmtMillis(ptErrs))
	}
	return nil
}
