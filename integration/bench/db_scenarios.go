package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lockstep-ha/lockstep/internal/testbed/mariadb"
)

// dbEnv is a MariaDB pair plus the lockstep config that points at it.
type dbEnv struct {
	pair *mariadb.Pair
	dir  string
}

// startSupervise runs lockstep repl supervise on d's pair with cfg,
// serving its metrics on metricsAddr, logging to logName in d's directory.
func (e *Env) startSupervise(d *dbEnv, logName, cfg, metricsAddr string) (*Proc, error) {
	return StartProc("lockstep repl supervise", filepath.Join(d.dir, logName), nil, e.Lockstep,
		"repl", "supervise", "-c", cfg, "--metrics-addr", metricsAddr)
}

func (e *Env) startPair(ctx context.Context, name string) (*dbEnv, error) {
	if err := mariadb.Available(); err != nil {
		return nil, skipf("MariaDB pair unavailable: %v", err)
	}
	dir, err := e.scenarioDir(name)
	if err != nil {
		return nil, err
	}
	p, err := mariadb.New(ctx, mariadb.Options{})
	if err != nil {
		return nil, fmt.Errorf("start MariaDB pair: %w", err)
	}
	return &dbEnv{pair: p, dir: dir}, nil
}

func (d *dbEnv) close() { _ = d.pair.Close() }

// writeConfig writes a lockstep config with the pair's repl section.
func (d *dbEnv) writeConfig(name, extra string) (string, error) {
	cfg := "node: bench\n" + d.pair.ReplConfigYAML(filepath.Join(d.dir, "state-"+name), extra)
	path := filepath.Join(d.dir, name+".yaml")
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}

// steadyWriter inserts into bench.ticks on db1 at rate per second until
// ctx ends, so that replication carries a steady stream like production.
func steadyWriter(ctx context.Context, db *sql.DB, rate int, wg *sync.WaitGroup) {
	defer wg.Done()
	t := time.NewTicker(time.Second / time.Duration(rate))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_, _ = db.ExecContext(ctx, "INSERT INTO bench.ticks (at) VALUES (NOW(6))")
		}
	}
}

// lockstepLag scrapes the supervisor's lockstep_repl_lag_seconds gauge
// for node: its live reading, as a monitoring system sees it (stale by at
// most one interval, which counts against lockstep).
func lockstepLag(ctx context.Context, metricsURL, node string) (float64, time.Time, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return 0, time.Time{}, err
	}
	t0 := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("scrape %s: %w", metricsURL, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	at := t0.Add(time.Since(t0) / 2)
	if err != nil {
		return 0, time.Time{}, err
	}
	v, err := gaugeValue(string(body), "lockstep_repl_lag_seconds", "node", node)
	if err != nil {
		return 0, time.Time{}, err
	}
	if math.IsNaN(v) {
		return 0, time.Time{}, fmt.Errorf("lockstep reports the lag of %s as unknown", node)
	}
	return v, at, nil
}

// gaugeValue finds name{label="value"} in a Prometheus text exposition.
func gaugeValue(exposition, name, label, value string) (float64, error) {
	want := fmt.Sprintf("%s=%q", label, value)
	for _, line := range strings.Split(exposition, "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		end := strings.IndexByte(line, '}')
		if end < 0 || !strings.Contains(line[:end], want) {
			continue
		}
		f := strings.Fields(line[end+1:])
		if len(f) == 0 {
			break
		}
		return strconv.ParseFloat(f[0], 64)
	}
	return 0, fmt.Errorf("metric %s{%s} not found", name, want)
}

// ptHeartbeatLag computes pt-heartbeat's reading on db the way
// `pt-heartbeat --check` does (now − ts of the master's row), at a known
// instant instead of after a Perl start-up of unknown length.
func ptHeartbeatLag(ctx context.Context, db *sql.DB, masterID int) (float64, time.Time, error) {
	var ts string
	if err := db.QueryRowContext(ctx, "SELECT ts FROM percona.heartbeat WHERE server_id = ?", masterID).Scan(&ts); err != nil {
		return 0, time.Time{}, fmt.Errorf("read pt-heartbeat row: %w", err)
	}
	now := time.Now()
	t, err := time.ParseInLocation("2006-01-02T15:04:05.999999", ts, time.UTC)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("parse pt-heartbeat ts %q: %w", ts, err)
	}
	return now.Sub(t).Seconds(), now, nil
}

// Scenario 7: per-direction lag reading vs pt-heartbeat and vs the truth,
// then time from crossing max_lag to read_only ON.
func runLag(ctx context.Context, e *Env, res *Result) error {
	if err := lockstepHas(ctx, e.Lockstep, "repl", "supervise"); err != nil {
		return errNotRun{err.Error()}
	}
	ptPath, ptErr := lookTool("pt-heartbeat")
	d, err := e.startPair(ctx, "s7")
	if err != nil {
		return err
	}
	defer d.close()
	db1, db2 := d.pair.Nodes[0], d.pair.Nodes[1]
	if err := execOnOneConn(ctx, db1.DB, "CREATE DATABASE bench", "CREATE TABLE bench.ticks (id BIGINT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6))", "CREATE DATABASE percona"); err != nil {
		return err
	}
	// max_lag must exceed the poll interval (1 s by default).
	const maxLag, unfenceLag, unfenceHold = 2 * time.Second, 300 * time.Millisecond, time.Second
	cfg, err := d.writeConfig("repl", fmt.Sprintf("  fence:\n    max_lag: %s\n    unfence_lag: %s\n    unfence_hold: %s\n", maxLag, unfenceLag, unfenceHold))
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

	var pt *Proc
	if ptErr == nil {
		pt, err = StartProc("pt-heartbeat --update", filepath.Join(d.dir, "pt-heartbeat.log"), nil, ptPath,
			"--update", "--create-table", "--utc", "--database", "percona", "--interval", "1",
			"-u", "root", "-S", db1.Socket, "-h", "localhost")
		if err != nil {
			return err
		}
		defer pt.Stop(5 * time.Second)
	} else {
		res.note("pt-heartbeat not installed: anchor column missing (%v).", ptErr)
	}

	wctx, stopWriter := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopWriter(); wg.Wait() }()
	wg.Add(1)
	go steadyWriter(wctx, db1.DB, 100, &wg)

	// Warm-up: both heartbeats flowing, lockstep reading a lag for db2.
	if err := waitFor(ctx, 30*time.Second, func() error {
		if err := sup.ErrIfExited(); err != nil {
			return backoffStop{err}
		}
		if pt != nil {
			if err := pt.ErrIfExited(); err != nil {
				return backoffStop{err}
			}
			if _, _, err := ptHeartbeatLag(ctx, db2.DB, db1.ServerID); err != nil {
				return err
			}
		}
		_, _, err := lockstepLag(ctx, metricsURL, db2.Name)
		return err
	}); err != nil {
		return fmt.Errorf("warm-up: %w\n--- supervise log ---\n%s", err, sup.LogTail(1500))
	}
	time.Sleep(1500 * time.Millisecond)

	// Each run stops db2's SQL thread: from then on db2's true lag grows
	// 1:1 with time, so a reading taken at instant t should say t − T.
	// Both tools are read once per run, 60% of max_lag after the stop (each
	// stop falls at a different phase of both heartbeat cycles), then
	// read_only is polled until the fence.
	var delays []time.Duration
	var lsErr, ptErrs []float64
	for run := 0; run < e.Sizes.FenceRuns; run++ {
		if err := waitFor(ctx, 30*time.Second, func() error {
			if err := sup.ErrIfExited(); err != nil {
				return backoffStop{err}
			}
			ro, err := db2.ReadOnly(ctx)
			if err != nil {
				return err
			}
			if ro {
				return errors.New("db2 still read_only (fenced) after catching up")
			}
			return nil
		}); err != nil {
			return fmt.Errorf("run %d: wait for unfence: %w\n--- supervise log ---\n%s", run, err, sup.LogTail(1500))
		}
		time.Sleep(300 * time.Millisecond)
		tA := time.Now()
		if err := db2.StopSQLThread(ctx); err != nil {
			return err
		}
		tStop := tA.Add(time.Since(tA) / 2)
		crossing := tStop.Add(maxLag)
		time.Sleep(time.Until(tStop.Add(maxLag * 6 / 10)))
		lag, at, err := lockstepLag(ctx, metricsURL, db2.Name)
		if err != nil {
			return err
		}
		lsErr = append(lsErr, (lag-at.Sub(tStop).Seconds())*1000)
		if pt != nil {
			lag, at, err := ptHeartbeatLag(ctx, db2.DB, db1.ServerID)
			if err != nil {
				return err
			}
			ptErrs = append(ptErrs, (lag-at.Sub(tStop).Seconds())*1000)
		}
		var fencedAt time.Time
		deadline := time.Now().Add(maxLag + 15*time.Second)
		for time.Now().Before(deadline) {
			ro, err := db2.ReadOnly(ctx)
			if err != nil {
				return err
			}
			if ro {
				fencedAt = time.Now()
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		if err := db2.StartSQLThread(ctx); err != nil {
			return err
		}
		if fencedAt.IsZero() {
			return fmt.Errorf("run %d: db2 not read_only within max_lag + 15s\n--- supervise log ---\n%s", run, sup.LogTail(1500))
		}
		delays = append(delays, fencedAt.Sub(crossing))
	}
	res.note("Lag: db1 takes 100 inserts/s; in each of %d runs db2's SQL thread is stopped at T, so db2's true lag at instant t is t − T; both tools are read once per run, %s after T. Error = reading − truth at the reading's instant (lockstep: the supervisor's `lockstep_repl_lag_seconds` gauge scraped from its /metrics, i.e. its live reading; pt-heartbeat: now − ts of db1's row on db2, exactly what `pt-heartbeat --check` computes, read in-process at a known instant).", len(lsErr), maxLag*6/10)
	res.note("lockstep runs with its default 1 s interval (lag between polls from the binlog streams); pt-heartbeat --update with its default 1 s interval (both as an admin would run them). A positive error means the tool over-reports lag.")
	res.note("lockstep error samples (ms): %s", fmtMillis(lsErr))
	if pt != nil {
		res.note("pt-heartbeat error samples (ms): %s", fmtMillis(ptErrs))
	}
	ptRow := func(v []float64, f func([]float64) float64) Value {
		if pt == nil {
			return missing("pt-heartbeat not installed")
		}
		return millisVal(f(v))
	}
	res.add(Row{Metric: "lag error, mean |reading − truth|", Kind: KindMillis, Lockstep: millisVal(meanAbs(lsErr)), Anchor: "pt-heartbeat (1 s)", AnchorV: ptRow(ptErrs, meanAbs)})
	res.add(Row{Metric: "lag error, max |reading − truth|", Kind: KindMillis, Lockstep: millisVal(maxAbs(lsErr)), Anchor: "pt-heartbeat (1 s)", AnchorV: ptRow(ptErrs, maxAbs)})
	sort.Slice(delays, func(i, j int) bool { return delays[i] < delays[j] })
	res.note("Fencing: max_lag %s, default interval; db2's SQL thread stopped, read_only polled on db2 every 2 ms; %d runs. Delays after the crossing (ms): %s", maxLag, len(delays), fmtDurMillis(delays))
	res.note("No anchor tool fences a co-master on lag (pt-heartbeat only measures; orchestrator polls every 5 s, replication-manager every 2 s, ProxySQL every 10 s, per their docs); the anchor column is issue 3's target (≤ 0.5 s after the crossing).")
	target := seconds(500 * time.Millisecond)
	res.add(Row{Metric: "max_lag crossing → read_only ON, p50", Kind: KindDuration, Lockstep: seconds(Percentile(delays, 50)), Anchor: "target (issue 3)", AnchorV: target})
	res.add(Row{Metric: "… p90", Kind: KindDuration, Lockstep: seconds(Percentile(delays, 90)), Anchor: "target (issue 3)", AnchorV: target})
	res.add(Row{Metric: "… max", Kind: KindDuration, Lockstep: seconds(Percentile(delays, 100)), Anchor: "target (issue 3)", AnchorV: target})
	return nil
}

// backoffStop ends waitFor early with its error.
type backoffStop struct{ err error }

func (b backoffStop) Error() string { return b.err.Error() }

// waitFor retries fn every 50ms until it returns nil, a backoffStop, or
// the timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, fn func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		var stop backoffStop
		if errors.As(err, &stop) {
			return stop.err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func meanAbs(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	var s float64
	for _, x := range xs {
		s += math.Abs(x)
	}
	return s / float64(len(xs))
}

func maxAbs(xs []float64) float64 {
	m := math.NaN()
	for _, x := range xs {
		if math.IsNaN(m) || math.Abs(x) > m {
			m = math.Abs(x)
		}
	}
	return m
}

func fmtMillis(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.FormatFloat(x, 'f', 0, 64)
	}
	return strings.Join(parts, ", ")
}

func fmtDurMillis(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 0, 64)
	}
	return strings.Join(parts, ", ")
}

// Scenario 8: data-drift checksum, lockstep vs pt-table-checksum.
func runChecksum(ctx context.Context, e *Env, res *Result) error {
	lsAvail := lockstepHas(ctx, e.Lockstep, "repl", "checksum")
	_, ptMissing := lookTool("pt-table-checksum")
	if lsAvail != nil && ptMissing != nil {
		return errNotRun{lsAvail.Error()}
	}
	sysbench, err := lookTool("sysbench")
	if err != nil {
		return skipf("sysbench not installed (generates the tables): %v", err)
	}
	d, err := e.startPair(ctx, "s8")
	if err != nil {
		return err
	}
	defer d.close()
	db1, db2 := d.pair.Nodes[0], d.pair.Nodes[1]
	// The checksum reads every table: the monitoring user needs SELECT.
	if err := execOnOneConn(ctx, db1.DB, "CREATE DATABASE sbtest", fmt.Sprintf("GRANT SELECT ON *.* TO '%s'@'%%'", mariadb.MonitorUser)); err != nil {
		return err
	}
	sz := e.Sizes
	t0 := time.Now()
	if _, err := runCmd(ctx, sysbench, "oltp_read_write", "--db-driver=mysql", "--mysql-socket="+db1.Socket, "--mysql-user=root",
		"--mysql-db=sbtest", fmt.Sprintf("--tables=%d", sz.ChecksumTables), fmt.Sprintf("--table-size=%d", sz.ChecksumRows), "prepare"); err != nil {
		return err
	}
	if err := d.pair.WaitSynced(ctx, 3*time.Minute); err != nil {
		return err
	}
	res.note("Data: sysbench oltp tables, %d × %d rows, prepared on db1 and replicated (%s).", sz.ChecksumTables, sz.ChecksumRows, time.Since(t0).Round(time.Second))

	// Drift on db2 behind replication's back, in different tables.
	tbl := func(i int) string { return fmt.Sprintf("sbtest.sbtest%d", 1+i%sz.ChecksumTables) }
	// db1 allocates odd ids (auto_increment_increment=2, offset 1): the
	// rows touched must exist, and each statement must change one row.
	var maxID int64
	if err := db2.DB.QueryRowContext(ctx, "SELECT MAX(id) FROM "+tbl(2)).Scan(&maxID); err != nil {
		return err
	}
	extraID := maxID + 1000
	drift := []string{
		fmt.Sprintf("UPDATE %s SET c = 'drifted' WHERE id = 17", tbl(0)),
		fmt.Sprintf("DELETE FROM %s WHERE id = 43", tbl(1)),
		fmt.Sprintf("INSERT INTO %s (id, k, c, pad) VALUES (%d, 1, 'extra', 'extra')", tbl(2), extraID),
	}
	if err := execDrift(ctx, db2.DB, drift...); err != nil {
		return err
	}
	res.note("Injected on db2 with sql_log_bin=0 (each statement changed exactly one row): %s id=17 column c updated, %s id=43 deleted, %s id=%d inserted.", tbl(0), tbl(1), tbl(2), extraID)

	lsV := missing("`lockstep repl checksum` not available in this build")
	if lsAvail == nil {
		cfg, err := d.writeConfig("checksum", "")
		if err != nil {
			return err
		}
		t1 := time.Now()
		cmd := exec.CommandContext(ctx, e.Lockstep, "repl", "checksum", "-c", cfg, "--database", "sbtest", "--json")
		out, cerr := cmd.Output()
		lsTime := time.Since(t1)
		code := 0
		var ee *exec.ExitError
		if errors.As(cerr, &ee) {
			code = ee.ExitCode()
		} else if cerr != nil {
			return cerr
		}
		if code != 1 {
			stderr := ""
			if ee != nil {
				stderr = string(ee.Stderr)
			}
			return fmt.Errorf("lockstep repl checksum exited %d (want 1: drift found)\nstdout: %s\nstderr: %s", code, truncate(string(out), 1500), truncate(stderr, 1500))
		}
		res.note("lockstep repl checksum: exit %d after %s; reported: %s", code, lsTime.Round(time.Millisecond), summarizeChecksumJSON(out))
		lsV = seconds(lsTime)
	}
	done := func() error {
		if lsAvail != nil {
			return errNotRun{lsAvail.Error()}
		}
		return nil
	}

	ptPath, perr := lookTool("pt-table-checksum")
	if perr != nil {
		res.add(Row{Metric: "wall time (whole schema)", Kind: KindDuration, Lockstep: lsV, Anchor: "pt-table-checksum", AnchorV: missing("not installed")})
		return done()
	}
	// pt-table-checksum finds replicas through a DSN table (there is no
	// SHOW SLAVE HOSTS entry in a pair without report_host).
	if err := execOnOneConn(ctx, db1.DB,
		"CREATE DATABASE IF NOT EXISTS percona",
		"CREATE TABLE percona.dsns (id INT AUTO_INCREMENT PRIMARY KEY, parent_id INT, dsn VARCHAR(255) NOT NULL)",
		fmt.Sprintf("INSERT INTO percona.dsns (dsn) VALUES ('h=localhost,S=%s,u=root')", db2.Socket)); err != nil {
		return err
	}
	if err := d.pair.WaitSynced(ctx, 30*time.Second); err != nil {
		return err
	}
	t2 := time.Now()
	ptCmd := exec.CommandContext(ctx, ptPath, "--no-version-check", "--databases", "sbtest",
		"--recursion-method", "dsn=h=localhost,S="+db1.Socket+",u=root,D=percona,t=dsns",
		"--no-check-binlog-format", "--no-check-replication-filters",
		"h=localhost,S="+db1.Socket+",u=root")
	ptOut, ptRunErr := ptCmd.CombinedOutput()
	ptTime := time.Since(t2)
	ptCode := 0
	var ee *exec.ExitError
	if errors.As(ptRunErr, &ee) {
		ptCode = ee.ExitCode()
	} else if ptRunErr != nil {
		return ptRunErr
	}
	ptSummary, diffs := summarizePT(string(ptOut))
	res.note("pt-table-checksum: exit %d after %s; reported: %s", ptCode, ptTime.Round(time.Millisecond), ptSummary)
	res.note("pt-table-checksum names chunks (DIFFS per table), not rows: finding the rows needs pt-table-sync afterwards, not timed here.")
	ptV := seconds(ptTime)
	if diffs == 0 {
		ptV = Value{V: ptTime.Seconds(), Valid: true}
		res.note("pt-table-checksum reported no differing chunk although 3 rows differ (output below).")
		res.note("pt-table-checksum output: %s", truncate(oneLine(string(ptOut)), 1500))
	}
	res.add(Row{Metric: "wall time (whole schema)", Kind: KindDuration, Lockstep: lsV, Anchor: "pt-table-checksum", AnchorV: ptV})
	return done()
}

// execDrift runs statements on db without binlogging them, insisting
// that each changes exactly one row.
func execDrift(ctx context.Context, db *sql.DB, stmts ...string) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SET SESSION sql_log_bin=0"); err != nil {
		return err
	}
	for _, s := range stmts {
		r, err := conn.ExecContext(ctx, s)
		if err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
		if n, _ := r.RowsAffected(); n != 1 {
			return fmt.Errorf("%s: changed %d rows, want 1", s, n)
		}
	}
	return nil
}

func execOnOneConn(ctx context.Context, db *sql.DB, stmts ...string) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	for _, s := range stmts {
		if _, err := conn.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

// summarizeChecksumJSON condenses lockstep's --json report for the notes:
// per table its status and the primary keys named.
func summarizeChecksumJSON(b []byte) string {
	var doc struct {
		RowsChecked int64 `json:"rows_checked"`
		Tables      []struct {
			Schema, Table, Status string
			Chunks                int `json:"chunks"`
			Diffs                 []struct {
				Kind       string `json:"kind"`
				PrimaryKey string `json:"primary_key"`
				OnlyOn     string `json:"only_on"`
				Columns    []struct {
					Column string `json:"column"`
				} `json:"columns"`
			} `json:"diffs"`
		} `json:"tables"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return "unparseable JSON: " + truncate(string(b), 300)
	}
	var parts []string
	for _, t := range doc.Tables {
		p := fmt.Sprintf("%s.%s: %s (%d chunks)", t.Schema, t.Table, t.Status, t.Chunks)
		var rows []string
		for _, d := range t.Diffs {
			r := d.PrimaryKey + " " + d.Kind
			if d.OnlyOn != "" {
				r += " (only on " + d.OnlyOn + ")"
			}
			for _, c := range d.Columns {
				r += " column " + c.Column
			}
			rows = append(rows, r)
		}
		if len(rows) > 0 {
			p += ": " + strings.Join(rows, "; ")
		}
		parts = append(parts, p)
	}
	return fmt.Sprintf("%d rows checked; %s", doc.RowsChecked, strings.Join(parts, "; "))
}

var ptLine = regexp.MustCompile(`^\S+\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+(\S+)$`)

// summarizePT extracts per-table DIFFS from pt-table-checksum's table:
// TS ERRORS DIFFS ROWS DIFF_ROWS CHUNKS SKIPPED TIME TABLE.
func summarizePT(out string) (string, int) {
	var parts []string
	total := 0
	for _, line := range strings.Split(out, "\n") {
		m := ptLine.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		diffs, _ := strconv.Atoi(m[2])
		total += diffs
		parts = append(parts, fmt.Sprintf("%s: %s errors, %d differing chunk(s) of %s, %s rows", m[8], m[1], diffs, m[5], m[3]))
	}
	if len(parts) == 0 {
		return "no result table: " + truncate(oneLine(out), 800), 0
	}
	return strings.Join(parts, "; "), total
}

// freeLoopbackAddr returns a 127.0.0.1 address with a port free right now.
func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
