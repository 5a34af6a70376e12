package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/lockstep-ha/lockstep/internal/testbed/mariadb"
)

// Scenario 12: repairing 3 drifted rows in sysbench tables, lockstep repl
// repair (source db1, target db2) vs pt-table-sync --execute --no-bin-log
// between the same two servers. The same drift is injected before each
// tool runs; each run is then checked clean with lockstep repl checksum.
func runRepair(ctx context.Context, e *Env, res *Result) error {
	d, cfg, checkClean, err := e.sysbenchPair(ctx, "s12", "repair")
	if err != nil {
		return err
	}
	defer d.close()
	db1, db2 := d.pair.Nodes[0], d.pair.Nodes[1]
	sz := e.Sizes
	res.note("Data: sysbench oltp tables, %d × %d rows; before each tool, 3 rows drifted on db2 with sql_log_bin=0 (one updated, one deleted, one extra).", sz.ChecksumTables, sz.ChecksumRows)
	tbl := func(i int) string { return fmt.Sprintf("sbtest.sbtest%d", 1+i%sz.ChecksumTables) }
	var maxID int64
	if err := db1.DB.QueryRowContext(ctx, "SELECT MAX(id) FROM "+tbl(2)).Scan(&maxID); err != nil {
		return err
	}
	inject := func(round int) error {
		return execDrift(ctx, db2.DB,
			fmt.Sprintf("UPDATE %s SET c = 'drifted%d' WHERE id = 17", tbl(0), round),
			fmt.Sprintf("DELETE FROM %s WHERE id = %d", tbl(1), 43+2*round),
			fmt.Sprintf("INSERT INTO %s (id, k, c, pad) VALUES (%d, 1, 'extra', 'extra')", tbl(2), maxID+1000+int64(round)))
	}

	if err := inject(0); err != nil {
		return err
	}
	t1 := time.Now()
	out, err := exec.CommandContext(ctx, e.Lockstep, "repl", "repair", "-c", cfg, "--source", "db1", "--target", "db2",
		"--database", "sbtest", "--yes").CombinedOutput()
	lsTime := time.Since(t1)
	if err != nil {
		return fmt.Errorf("lockstep repl repair: %v\n%s", err, truncate(string(out), 2000))
	}
	if err := checkClean("lockstep repl repair"); err != nil {
		return err
	}
	res.note("lockstep repl repair: %s (fence, snapshot, compare, fix, resume both directions, verifying checksum, unfence); it said: %s", lsTime.Round(time.Millisecond), lastLine(string(out)))
	lsV := seconds(lsTime)

	ptPath, perr := lookTool("pt-table-sync")
	if perr != nil {
		res.add(Row{Metric: "wall time, repair of 3 drifted rows", Kind: KindDuration, Lockstep: lsV, Anchor: "pt-table-sync", AnchorV: missing("not installed")})
		return nil
	}
	if err := inject(1); err != nil {
		return err
	}
	t2 := time.Now()
	pt := exec.CommandContext(ctx, ptPath, "--no-version-check", "--execute", "--no-bin-log", "--no-check-slave",
		"--databases", "sbtest", "h=localhost,S="+db1.Socket+",u=root", "h=localhost,S="+db2.Socket+",u=root")
	ptOut, ptErr := pt.CombinedOutput()
	ptTime := time.Since(t2)
	var ee *exec.ExitError
	// pt-table-sync exits 2 when it found and fixed differences.
	if ptErr != nil && !(errors.As(ptErr, &ee) && ee.ExitCode() == 2) {
		return fmt.Errorf("pt-table-sync: %v\n%s", ptErr, truncate(string(ptOut), 2000))
	}
	if err := checkClean("pt-table-sync"); err != nil {
		return err
	}
	res.note("pt-table-sync --execute --no-bin-log: %s (compares and fixes only: no fencing, no snapshot, no replication repair, no verification).", ptTime.Round(time.Millisecond))
	res.add(Row{Metric: "wall time, repair of 3 drifted rows", Kind: KindDuration, Lockstep: lsV, Anchor: "pt-table-sync", AnchorV: seconds(ptTime)})
	return nil
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// sysbenchPair starts scenarios 12 and 14: a pair with sysbench's oltp
// tables made on db1 and replicated to db2, the configured account granted
// what the README asks for repair (it writes on the fenced target and
// moves replication positions), a config written as name, and
// checkClean, which fails unless lockstep repl checksum finds the pair
// identical.
func (e *Env) sysbenchPair(ctx context.Context, id, name string) (d *dbEnv, cfg string, checkClean func(who string) error, err error) {
	if err := lockstepHas(ctx, e.Lockstep, "repl", "repair"); err != nil {
		return nil, "", nil, errNotRun{err.Error()}
	}
	sysbench, err := lookTool("sysbench")
	if err != nil {
		return nil, "", nil, skipf("sysbench not installed (generates the tables): %v", err)
	}
	if d, err = e.startPair(ctx, id); err != nil {
		return nil, "", nil, err
	}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	db1 := d.pair.Nodes[0]
	if err := execOnOneConn(ctx, db1.DB, "CREATE DATABASE sbtest", fmt.Sprintf("GRANT ALL ON *.* TO '%s'@'%%'", mariadb.MonitorUser)); err != nil {
		return nil, "", nil, err
	}
	sz := e.Sizes
	if _, err := runCmd(ctx, sysbench, "oltp_read_write", "--db-driver=mysql", "--mysql-socket="+db1.Socket, "--mysql-user=root",
		"--mysql-db=sbtest", fmt.Sprintf("--tables=%d", sz.ChecksumTables), fmt.Sprintf("--table-size=%d", sz.ChecksumRows), "prepare"); err != nil {
		return nil, "", nil, err
	}
	if err := d.pair.WaitSynced(ctx, 3*time.Minute); err != nil {
		return nil, "", nil, err
	}
	if cfg, err = d.writeConfig(name, ""); err != nil {
		return nil, "", nil, err
	}
	checkClean = func(who string) error {
		out, err := exec.CommandContext(ctx, e.Lockstep, "repl", "checksum", "-c", cfg, "--database", "sbtest").CombinedOutput()
		if err != nil {
			return fmt.Errorf("after %s the pair is not clean: %v\n%s", who, err, truncate(string(out), 1500))
		}
		return nil
	}
	return d, cfg, checkClean, nil
}
