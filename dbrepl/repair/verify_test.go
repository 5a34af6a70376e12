package repair_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/lockstep-ha/lockstep/dbrepl/repair"
	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
)

// TestRepairVerifiesAgainstSnapshot: a write on the target behind the
// repair's back after a table was repaired. On a keyed InnoDB table the
// table's guard still holds its table lock: the write, by a client that
// may write on the fenced target, waits and fails (lock wait timeout), the
// row stays as repaired. On a keyless table
// (not guarded) the write lands and the default verification (the target
// hashed again against the snapshot's sums) catches it: not verified, the
// target stays fenced. A second run with --verify live repairs it and
// verifies with a checksum of both live nodes.
func TestRepairVerifiesAgainstSnapshot(t *testing.T) {
	p := mariadbpair.Start(t)
	seed(t, p)
	db2 := p.Nodes[1]
	execLocal(t, db2.DB, "UPDATE app.t SET v = 'drift' WHERE id = 3")
	cfg := config(t, p)
	ctx := context.Background()
	var guardedErr, keylessErr error
	r, err := repair.Run(ctx, cfg, repair.Options{Source: "db1", Target: "db2", ChunkRows: 500,
		AfterTable: func(table string) {
			switch table {
			case "app.t":
				guardedErr = tryLocal(db2.DB, "SET SESSION lock_wait_timeout = 1", "SET SESSION innodb_lock_wait_timeout = 1", "UPDATE app.t SET v = 'late' WHERE id = 2000")
			case "app.nokey":
				keylessErr = tryLocal(db2.DB, "INSERT INTO app.nokey VALUES (9, 'late')")
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	var me *mysql.MySQLError
	if !errors.As(guardedErr, &me) || me.Number != 1205 {
		t.Errorf("write on a guarded table during the repair: %v, want a lock wait timeout (1205)", guardedErr)
	}
	if keylessErr != nil {
		t.Fatal(keylessErr)
	}
	if r.Verified || r.Unfenced || r.VerifiedAgainst != "snapshot" {
		t.Fatalf("late write not caught: verified=%v unfenced=%v against=%q notes=%v", r.Verified, r.Unfenced, r.VerifiedAgainst, r.Notes)
	}
	notes := strings.Join(r.Notes, "\n")
	if !strings.Contains(notes, "app.nokey") || strings.Contains(notes, "app.t:") {
		t.Errorf("notes should name app.nokey alone: %v", r.Notes)
	}
	var v string
	if err := db2.DB.QueryRow("SELECT v FROM app.t WHERE id = 2000").Scan(&v); err != nil || v != "v2000" {
		t.Errorf("app.t id 2000 on the target: %q %v, want v2000", v, err)
	}
	if !readOnly(t, db2) {
		t.Fatal("target writable after a repair that did not verify")
	}

	r, err = repair.Run(ctx, cfg, repair.Options{Source: "db1", Target: "db2", VerifyLive: true})
	mustClean(t, r, err)
	if r.VerifiedAgainst != "live" || len(r.Checksum) == 0 {
		t.Errorf("second run verified against %q with %d checksum results", r.VerifiedAgainst, len(r.Checksum))
	}
	if tr := tableReport(t, r, "app.nokey"); tr.Deleted != 1 {
		t.Errorf("app.nokey: %+v", tr)
	}
	if tr := tableReport(t, r, "app.t"); tr.Method != "clean" {
		t.Errorf("app.t: %+v", tr)
	}
}

// tryLocal writes on one node behind replication's back and returns the
// error (for use off the test's goroutine).
func tryLocal(db *sql.DB, stmts ...string) error {
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	for _, s := range append([]string{"SET SESSION sql_log_bin = 0"}, stmts...) {
		if _, err := conn.ExecContext(ctx, s); err != nil {
			return err
		}
	}
	_, err = conn.ExecContext(ctx, "SET SESSION sql_log_bin = 1")
	return err
}

// TestRepairReseedsMissingKey: a target that lacks a secondary key of the
// source (a reseed interrupted before its keys were built) has the same
// columns, so only the full definition tells: the table is reseeded, its
// key built after the load, and the definitions end up identical.
func TestRepairReseedsMissingKey(t *testing.T) {
	p := mariadbpair.Start(t)
	seed(t, p)
	db1, db2 := p.Nodes[0], p.Nodes[1]
	run(t, db1.DB, "ALTER TABLE app.t ADD INDEX f_idx (f), ADD INDEX v_idx (v(5))")
	if err := p.WaitSynced(context.Background(), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	execLocal(t, db2.DB, "ALTER TABLE app.t DROP INDEX v_idx")
	r, err := repair.Run(context.Background(), config(t, p), repair.Options{Source: "db1", Target: "db2"})
	mustClean(t, r, err)
	if tr := tableReport(t, r, "app.t"); tr.Method != repair.MethodReseed || !strings.Contains(tr.Why, "keys or table options") || tr.Copied != 3000 {
		t.Errorf("app.t: %+v", tr)
	}
	show := func(db *sql.DB) string {
		var name, create string
		if err := db.QueryRow("SHOW CREATE TABLE app.t").Scan(&name, &create); err != nil {
			t.Fatal(err)
		}
		return create
	}
	if a, b := show(db1.DB), show(db2.DB); a != b {
		t.Errorf("definitions differ after the repair:\n%s\n%s", a, b)
	}
}

// TestRepairGuardsRelatedTables: tables linked by a foreign key are
// guarded by locking reads (LOCK TABLES on one would wait for the other's
// guard), an unrelated table by its table lock; all three are compared at
// once and repaired. A write behind the repair's back on a table already
// repaired waits and fails under either guard.
func TestRepairGuardsRelatedTables(t *testing.T) {
	p := mariadbpair.Start(t)
	db1, db2 := p.Nodes[0], p.Nodes[1]
	run(t, db1.DB, "CREATE DATABASE fk",
		"CREATE TABLE fk.p (id INT PRIMARY KEY, v INT)",
		"CREATE TABLE fk.c (id INT PRIMARY KEY, pid INT, v INT, FOREIGN KEY (pid) REFERENCES fk.p (id) ON DELETE CASCADE)",
		"CREATE TABLE fk.q (id INT PRIMARY KEY, v INT)",
		"INSERT INTO fk.p SELECT seq, seq FROM mysql.seq_1_to_2000",
		"INSERT INTO fk.c SELECT seq, seq, seq FROM mysql.seq_1_to_2000",
		"INSERT INTO fk.q SELECT seq, seq FROM mysql.seq_1_to_2000")
	if err := p.WaitSynced(context.Background(), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	execLocal(t, db2.DB, "UPDATE fk.p SET v = -1 WHERE id = 7", "UPDATE fk.c SET v = -1 WHERE id = 1500",
		"SET SESSION foreign_key_checks = 0", "DELETE FROM fk.p WHERE id = 900", "DELETE FROM fk.q WHERE id = 3")
	cfg := config(t, p)
	late := map[string]error{}
	var mu sync.Mutex
	r, err := repair.Run(context.Background(), cfg, repair.Options{Source: "db1", Target: "db2", Databases: []string{"fk"}, ChunkRows: 300,
		AfterTable: func(table string) {
			var err error
			switch table {
			case "fk.p":
				err = tryLocal(db2.DB, "SET SESSION lock_wait_timeout = 1", "SET SESSION innodb_lock_wait_timeout = 1", "UPDATE fk.p SET v = -2 WHERE id = 11")
			case "fk.q":
				err = tryLocal(db2.DB, "SET SESSION lock_wait_timeout = 1", "SET SESSION innodb_lock_wait_timeout = 1", "INSERT INTO fk.q VALUES (5000, 1)")
			default:
				return
			}
			mu.Lock()
			late[table] = err
			mu.Unlock()
		}})
	mustClean(t, r, err)
	for _, tb := range []string{"fk.p", "fk.q"} {
		var me *mysql.MySQLError
		if err := late[tb]; !errors.As(err, &me) || me.Number != 1205 {
			t.Errorf("write on %s during the repair: %v, want a lock wait timeout (1205)", tb, err)
		}
	}
	for _, tb := range []string{"fk.p", "fk.c", "fk.q"} {
		if tr := tableReport(t, r, tb); tr.Method != repair.MethodRows {
			t.Errorf("%s: %+v, want rows", tb, tr)
		}
		var a, b string
		q := "SELECT CONCAT(COUNT(*), ':', BIT_XOR(CRC32(CONCAT_WS('#', id, v)))) FROM " + tb
		if err := db1.DB.QueryRow(q).Scan(&a); err != nil {
			t.Fatal(err)
		}
		if err := db2.DB.QueryRow(q).Scan(&b); err != nil {
			t.Fatal(err)
		}
		if a != b {
			t.Errorf("%s: source %s, target %s", tb, a, b)
		}
	}
}

// TestRepairWithoutLockTablesPrivilege: an account that may write the
// repaired tables but not LOCK TABLES them repairs with the locking-read
// guard instead; a write behind its back still waits and fails.
func TestRepairWithoutLockTablesPrivilege(t *testing.T) {
	p := mariadbpair.Start(t)
	seed(t, p)
	db1, db2 := p.Nodes[0], p.Nodes[1]
	run(t, db1.DB, "CREATE USER 'nolock'@'%' IDENTIFIED BY 'nolock-pw'",
		"GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, INDEX, PROCESS, SUPER, REPLICATION SLAVE, BINLOG MONITOR, SLAVE MONITOR, READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, CONNECTION ADMIN ON *.* TO 'nolock'@'%'")
	if err := p.WaitSynced(context.Background(), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	execLocal(t, db2.DB, "UPDATE app.t SET v = 'drift' WHERE id = 3")
	cfg := config(t, p)
	for i, n := range p.Nodes {
		cfg.Nodes[i].DSN = fmt.Sprintf("nolock:nolock-pw@tcp(127.0.0.1:%d)/", n.Port)
	}
	var lateErr error
	r, err := repair.Run(context.Background(), cfg, repair.Options{Source: "db1", Target: "db2", Databases: []string{"app"}, ChunkRows: 500,
		AfterTable: func(table string) {
			if table == "app.t" {
				lateErr = tryLocal(db2.DB, "SET SESSION lock_wait_timeout = 1", "SET SESSION innodb_lock_wait_timeout = 1", "UPDATE app.t SET v = 'late' WHERE id = 2000")
			}
		}})
	mustClean(t, r, err)
	var me *mysql.MySQLError
	if !errors.As(lateErr, &me) || me.Number != 1205 {
		t.Errorf("write on a guarded table during the repair: %v, want a lock wait timeout (1205)", lateErr)
	}
	if tr := tableReport(t, r, "app.t"); tr.Updated != 1 {
		t.Errorf("app.t: %+v", tr)
	}
}
