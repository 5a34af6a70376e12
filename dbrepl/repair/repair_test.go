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

	_ "github.com/go-sql-driver/mysql"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/dbrepl/repair"
	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
)

func run(t *testing.T, db *sql.DB, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		if _, err := db.Exec(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// execLocal writes on one node behind replication's back.
func execLocal(t *testing.T, db *sql.DB, stmts ...string) {
	t.Helper()
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	run1 := func(s string) {
		if _, err := conn.ExecContext(context.Background(), s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	run1("SET SESSION sql_log_bin = 0")
	for _, s := range stmts {
		run1(s)
	}
	run1("SET SESSION sql_log_bin = 1")
}

// config: repair needs an account that may write on a read-only target
// and control replication: root over the socket here.
func config(t *testing.T, p *mariadbpair.Pair) dbrepl.Config {
	cfg := dbrepl.Config{StateDir: t.TempDir()}
	for _, n := range p.Nodes {
		cfg.Nodes = append(cfg.Nodes, dbrepl.NodeConfig{Name: n.Name, DSN: n.RootDSN()})
	}
	cfg.SetDefaults()
	return cfg
}

func seed(t *testing.T, p *mariadbpair.Pair) {
	t.Helper()
	db1 := p.Nodes[0].DB
	run(t, db1, "CREATE DATABASE app",
		"CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(40), f FLOAT)",
		"CREATE TABLE app.nokey (a INT, b VARCHAR(10))",
		"CREATE TABLE app.w (id INT PRIMARY KEY, at DATETIME(6))")
	var b strings.Builder
	b.WriteString("INSERT INTO app.t VALUES ")
	for i := 1; i <= 3000; i++ {
		if i > 1 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "(%d,'v%d',%d.5)", i, i, i)
	}
	run(t, db1, b.String(), "INSERT INTO app.nokey VALUES (1,'a'),(1,'a'),(2,'b')")
	if err := p.WaitSynced(context.Background(), 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

func tableReport(t *testing.T, r *repair.Report, name string) repair.TableReport {
	t.Helper()
	for _, tr := range r.Tables {
		if tr.Table == name {
			return tr
		}
	}
	t.Fatalf("%s not in report %+v", name, r.Tables)
	return repair.TableReport{}
}

func readOnly(t *testing.T, n *mariadbpair.Node) bool {
	t.Helper()
	ro, err := n.ReadOnly(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ro
}

func mustClean(t *testing.T, r *repair.Report, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("repair: %v (report %+v)", err, r)
	}
	if !r.Verified || !r.Replicating || !r.Unfenced {
		t.Fatalf("repair did not finish clean: verified=%v replicating=%v unfenced=%v notes=%v", r.Verified, r.Replicating, r.Unfenced, r.Notes)
	}
}

// TestRepairDriftWhileWriting: rows updated, missing and extra on the
// target (replication healthy) and a keyless table are repaired while a
// client writes on the source throughout; every row it wrote is on both
// nodes at the end. A dry run first changes nothing.
func TestRepairDriftWhileWriting(t *testing.T) {
	p := mariadbpair.Start(t)
	seed(t, p)
	db1, db2 := p.Nodes[0], p.Nodes[1]
	execLocal(t, db2.DB,
		"UPDATE app.t SET f = 4.5000005 WHERE id = 4",
		"UPDATE app.t SET v = 'changed' WHERE id = 5",
		"DELETE FROM app.t WHERE id = 6",
		"INSERT INTO app.t VALUES (100001, 'extra', 0)",
		// Below the source's smallest key: the key-range walk starts at
		// the smaller minimum of both sides.
		"INSERT INTO app.t VALUES (-5, 'below', 0)",
		"DELETE FROM app.nokey WHERE a = 1 LIMIT 1",
		"INSERT INTO app.nokey VALUES (2,'b'),(3,NULL)")
	cfg := config(t, p)
	ctx := context.Background()

	dry, err := repair.Run(ctx, cfg, repair.Options{Source: "db1", Target: "db2", DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if tr := tableReport(t, dry, "app.t"); tr.Method != repair.MethodRows || tr.Updated != 2 || tr.Inserted != 1 || tr.Deleted != 2 {
		t.Errorf("dry run app.t: %+v", tr)
	}
	// Keyless: matched by value with counts — one (1,'a') missing, one
	// (2,'b') and the (3,NULL) extra.
	if tr := tableReport(t, dry, "app.nokey"); tr.Method != repair.MethodRows || !strings.Contains(tr.Why, "matched by value") || tr.Inserted != 1 || tr.Deleted != 2 {
		t.Errorf("dry run app.nokey: %+v", tr)
	}
	var v string
	if err := db2.DB.QueryRow("SELECT v FROM app.t WHERE id = 5").Scan(&v); err != nil || v != "changed" || readOnly(t, db2) {
		t.Fatalf("dry run changed the target: v=%q err=%v", v, err)
	}

	// A client writes on the source for the whole repair.
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var written []int
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; wctx.Err() == nil; i++ {
			// Not wctx: an INSERT cancelled in flight may still commit,
			// and would then be missing from written.
			if _, err := db1.DB.ExecContext(ctx, "INSERT INTO app.w VALUES (?, NOW(6))", i); err != nil {
				werr = err
				return
			}
			written = append(written, i)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { stop(); wg.Wait() })
	time.Sleep(100 * time.Millisecond)

	var progressed int
	r, err := repair.Run(ctx, cfg, repair.Options{Source: "db1", Target: "db2", ChunkRows: 500,
		Progress: func(repair.Progress) { progressed++ }})
	mustClean(t, r, err)
	stop()
	wg.Wait()
	if werr != nil {
		t.Fatalf("writer: %v", werr)
	}
	if tr := tableReport(t, r, "app.t"); tr.Updated != 2 || tr.Inserted != 1 || tr.Deleted != 2 {
		t.Errorf("app.t: %+v", tr)
	}
	if progressed == 0 {
		t.Error("no progress reported")
	}
	if err := p.WaitSynced(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, n := range p.Nodes {
		var cnt, mx int
		if err := n.DB.QueryRow("SELECT COUNT(*), COALESCE(MAX(id),0) FROM app.w").Scan(&cnt, &mx); err != nil {
			t.Fatal(err)
		}
		if cnt != len(written) || mx != written[len(written)-1] {
			t.Errorf("%s: %d rows up to %d of the writer's %d", n.Name, cnt, mx, len(written))
		}
	}
	var multiset string
	if err := db2.DB.QueryRow("SELECT GROUP_CONCAT(CONCAT(a, ':', IFNULL(b, 'NULL')) ORDER BY a, b) FROM app.nokey").Scan(&multiset); err != nil || multiset != "1:a,1:a,2:b" {
		t.Errorf("app.nokey on db2: %q %v", multiset, err)
	}
	if tr := tableReport(t, r, "app.nokey"); tr.Method != repair.MethodRows || tr.Inserted != 1 || tr.Deleted != 2 {
		t.Errorf("app.nokey: %+v", tr)
	}
	if err := db2.DB.QueryRow("SELECT v FROM app.t WHERE id = 5").Scan(&v); err != nil || v != "v5" {
		t.Errorf("app.t id=5 on db2: %q %v", v, err)
	}
	if readOnly(t, db2) || readOnly(t, db1) {
		t.Error("a node read-only after the repair")
	}
	t.Logf("repaired in %s; %d rows written on the source meanwhile", r.Duration, len(written))
}

// TestRepairBrokenBothWays: the same key written on both nodes breaks
// replication in both directions (1062), and the target has an errant
// transaction besides. The repair names the errors, skips the target's
// transactions on the source (listed with GTIDs), and both directions run.
func TestRepairBrokenBothWays(t *testing.T) {
	p := mariadbpair.Start(t)
	seed(t, p)
	ctx := context.Background()
	db1, db2 := p.Nodes[0], p.Nodes[1]
	for _, n := range p.Nodes {
		if err := n.StopIOThread(ctx); err != nil {
			t.Fatal(err)
		}
	}
	run(t, db1.DB, "INSERT INTO app.t VALUES (5000, 'from-db1', 1)")
	run(t, db2.DB, "INSERT INTO app.t VALUES (5000, 'from-db2', 2)", "UPDATE app.t SET v = 'errant' WHERE id = 7")
	for _, n := range p.Nodes {
		if err := n.StartIOThread(ctx); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		s1, _ := db1.Replication(ctx)
		s2, _ := db2.Replication(ctx)
		if s1.SQLRunning == "No" && s2.SQLRunning == "No" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replication did not break both ways: %+v %+v", s1, s2)
		}
		time.Sleep(100 * time.Millisecond)
	}
	r, err := repair.Run(ctx, config(t, p), repair.Options{Source: "db1", Target: "db2"})
	mustClean(t, r, err)
	if len(r.BreakErrors) != 2 || !strings.Contains(strings.Join(r.BreakErrors, "\n"), "1062") {
		t.Errorf("break errors: %q", r.BreakErrors)
	}
	if len(r.SkippedGTIDs) != 1 || !strings.HasPrefix(r.SkippedGTIDs[0], "2-2-") {
		t.Errorf("skipped GTIDs: %q", r.SkippedGTIDs)
	}
	var v string
	if err := db2.DB.QueryRow("SELECT v FROM app.t WHERE id = 5000").Scan(&v); err != nil || v != "from-db1" {
		t.Errorf("id 5000 on db2: %q %v", v, err)
	}
	if err := db2.DB.QueryRow("SELECT v FROM app.t WHERE id = 7").Scan(&v); err != nil || v != "v7" {
		t.Errorf("errant row on db2: %q %v", v, err)
	}
	// Both directions replicate again.
	run(t, db2.DB, "INSERT INTO app.t VALUES (6002, 'after', 0)")
	run(t, db1.DB, "INSERT INTO app.t VALUES (6001, 'after', 0)")
	if err := p.WaitSynced(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, n := range p.Nodes {
		var c int
		if err := n.DB.QueryRow("SELECT COUNT(*) FROM app.t WHERE id IN (6001, 6002)").Scan(&c); err != nil || c != 2 {
			t.Errorf("%s: %d of the rows written after the repair", n.Name, c)
		}
	}
	t.Logf("break errors %q; skipped %q", r.BreakErrors, r.SkippedGTIDs)
}

// TestRepairSchemaDiffInterrupted: a column added on the target only
// makes the table a reseed; a repair cancelled mid-way leaves the target
// fenced (never writable and different), and a second run finishes it.
func TestRepairSchemaDiffInterrupted(t *testing.T) {
	p := mariadbpair.Start(t)
	seed(t, p)
	ctx := context.Background()
	db2 := p.Nodes[1]
	execLocal(t, db2.DB, "ALTER TABLE app.t ADD COLUMN extra INT", "UPDATE app.w SET at = NOW() WHERE id = 1", "INSERT INTO app.w VALUES (9, NOW())")
	// A database the target lacks entirely.
	execLocal(t, p.Nodes[0].DB, "CREATE DATABASE extra CHARACTER SET latin1", "CREATE TABLE extra.x (id INT PRIMARY KEY)", "INSERT INTO extra.x VALUES (1)")
	cfg := config(t, p)

	cctx, cancel := context.WithCancel(ctx)
	_, err := repair.Run(cctx, cfg, repair.Options{Source: "db1", Target: "db2",
		AfterTable: func(string) { cancel() }})
	cancel()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted repair: %v", err)
	}
	if !readOnly(t, db2) {
		t.Fatal("target writable after an interrupted repair")
	}
	if rec, err := (dbrepl.FenceStore{Dir: cfg.StateDir}).Load("db2"); err != nil || rec == nil || !rec.Manual {
		t.Fatalf("fence record after an interrupted repair: %+v %v", rec, err)
	}

	r, err := repair.Run(ctx, cfg, repair.Options{Source: "db1", Target: "db2"})
	mustClean(t, r, err)
	// Tables are repaired four at a time: the interrupted run may already
	// have begun reseeding app.t or extra.x (dropped it, copied part or
	// all of it), and then this run finds it missing, different, or clean.
	if tr := tableReport(t, r, "app.t"); tr.Method != repair.MethodReseed && tr.Method != repair.MethodRows && tr.Method != "clean" {
		t.Errorf("app.t: %+v", tr)
	}
	var cs string
	if err := db2.DB.QueryRow("SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'extra'").Scan(&cs); err != nil || cs != "latin1" {
		t.Errorf("database extra on db2: charset %q %v", cs, err)
	}
	// extra.x has no secondary key: created but not (fully) copied by the
	// interrupted run, it has the source's definition and is fixed by rows.
	if tr := tableReport(t, r, "extra.x"); !(tr.Method == repair.MethodReseed && tr.Copied == 1 || tr.Method == "clean" && tr.Rows == 1 ||
		tr.Method == repair.MethodRows && tr.Inserted == 1) {
		t.Errorf("extra.x: %+v", tr)
	}
	var n int
	if err := db2.DB.QueryRow("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA='app' AND TABLE_NAME='t' AND COLUMN_NAME='extra'").Scan(&n); err != nil || n != 0 {
		t.Errorf("column extra still on db2: %d %v", n, err)
	}

	// Bad input is ErrUsage.
	for _, o := range []repair.Options{{Source: "db1", Target: "db1"}, {Source: "db1", Target: "nosuch"}, {Source: "db1", Target: "db2", Method: "magic"}} {
		if _, err := repair.Run(ctx, cfg, o); !errors.Is(err, repair.ErrUsage) {
			t.Errorf("%+v: %v, want a usage error", o, err)
		}
	}
	// A read-only source is refused without --force.
	run(t, p.Nodes[0].DB, "SET GLOBAL read_only = ON")
	if _, err := repair.Run(ctx, cfg, repair.Options{Source: "db1", Target: "db2", DryRun: true}); !errors.Is(err, repair.ErrUsage) || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("read-only source: %v", err)
	}
	if _, err := repair.Run(ctx, cfg, repair.Options{Source: "db1", Target: "db2", DryRun: true, Force: true}); err != nil {
		t.Errorf("--force: %v", err)
	}
	run(t, p.Nodes[0].DB, "SET GLOBAL read_only = OFF")
}
