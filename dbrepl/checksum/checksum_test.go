package checksum_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"

	"github.com/lockstep-ha/lockstep/dbrepl/checksum"
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

// execLocal runs statements on one node only, without binlogging them:
// the way drift is injected behind replication's back.
func execLocal(t *testing.T, db *sql.DB, stmts ...string) {
	t.Helper()
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(context.Background(), "SET SESSION sql_log_bin = 0"); err != nil {
		t.Fatal(err)
	}
	for _, s := range stmts {
		if _, err := conn.ExecContext(context.Background(), s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	// The session goes back to the pool: restore binlogging for it.
	if _, err := conn.ExecContext(context.Background(), "SET SESSION sql_log_bin = 1"); err != nil {
		t.Fatal(err)
	}
}

func newChecker(t *testing.T, p *mariadbpair.Pair, opts checksum.Options) *checksum.Checker {
	t.Helper()
	c, err := checksum.New(
		checksum.Node{Name: p.Nodes[0].Name, DB: p.Nodes[0].DB},
		checksum.Node{Name: p.Nodes[1].Name, DB: p.Nodes[1].DB}, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func table(t *testing.T, r *checksum.Result, name string) checksum.TableResult {
	t.Helper()
	for _, tr := range r.Tables {
		if tr.Name() == name {
			return tr
		}
	}
	t.Fatalf("table %s not in result", name)
	return checksum.TableResult{}
}

func seed(t *testing.T, p *mariadbpair.Pair) {
	t.Helper()
	db1 := p.Nodes[0].DB
	run(t, db1,
		"CREATE DATABASE app",
		"CREATE TABLE app.users (id INT PRIMARY KEY, name VARCHAR(40), email VARCHAR(80) NULL, score DOUBLE)",
		"CREATE TABLE app.orders (region CHAR(2), num INT, item VARCHAR(20), PRIMARY KEY (region, num))",
		"CREATE TABLE app.events (id BIGINT UNSIGNED PRIMARY KEY, payload BLOB)",
		"CREATE TABLE app.log (at INT, msg VARCHAR(20))", // no primary key
		"CREATE TABLE app.clean (id INT PRIMARY KEY, v INT)",
		"CREATE TABLE app.clean2 (id INT PRIMARY KEY, v INT)",
		// Case-insensitive text key: chunk bounds must follow the collation.
		"CREATE TABLE app.tags (name VARCHAR(20) PRIMARY KEY, n INT) COLLATE utf8mb4_general_ci",
	)
	var b strings.Builder
	for _, tbl := range []struct {
		name string
		n    int
		row  func(i int) string
	}{
		{"users", 3000, func(i int) string { return fmt.Sprintf("(%d,'user%d',IF(%d%%7=0,NULL,'u%d@x'),%d.5)", i, i, i, i, i) }},
		{"orders", 2000, func(i int) string { return fmt.Sprintf("('%s',%d,'item%d')", []string{"eu", "us", "ap"}[i%3], i, i) }},
		{"events", 2000, func(i int) string { return fmt.Sprintf("(%d,REPEAT('p%d',%d))", i*1000, i, i%50) }},
		{"log", 500, func(i int) string { return fmt.Sprintf("(%d,'m%d')", i%100, i%100) }},
		{"clean", 1000, func(i int) string { return fmt.Sprintf("(%d,%d)", i, i) }},
		{"tags", 800, func(i int) string { return fmt.Sprintf("('%s%d',%d)", []string{"a", "B", "c", "D", "é"}[i%5], i, i) }},
	} {
		b.Reset()
		fmt.Fprintf(&b, "INSERT INTO app.%s VALUES ", tbl.name)
		for i := 1; i <= tbl.n; i++ {
			if i > 1 {
				b.WriteString(",")
			}
			b.WriteString(tbl.row(i))
		}
		run(t, db1, b.String())
	}
	if err := p.WaitSynced(context.Background(), 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestDriftNamesRows injects drift behind replication's back and expects
// each differing primary key named with its column values, and nothing
// else reported.
func TestDriftNamesRows(t *testing.T) {
	p := mariadbpair.Start(t)
	seed(t, p)
	ctx := context.Background()

	// Small chunks so that the drift sits in the middle of a multi-chunk
	// walk rather than in one whole-table chunk.
	opts := checksum.Options{Database: "app", ChunkTime: 2 * time.Millisecond, ChunkRows: 150}
	r, err := newChecker(t, p, opts).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Consistent {
		var out bytes.Buffer
		_ = r.WriteText(&out)
		t.Fatalf("fresh pair reported drift:\n%s", out.String())
	}
	for name, want := range map[string]int64{"app.users": 3000, "app.orders": 2000, "app.events": 2000, "app.tags": 800, "app.log": 500} {
		if tr := table(t, r, name); tr.Rows != want || (name != "app.log" && tr.Chunks < 2) {
			t.Errorf("%s: %d rows in %d chunks, want %d rows in several chunks", name, tr.Rows, tr.Chunks, want)
		}
	}

	execLocal(t, p.Nodes[1].DB,
		"UPDATE app.users SET email = NULL WHERE id = 1500",           // value → NULL
		"UPDATE app.users SET name = 'mallory' WHERE id = 2999",       // changed column
		"DELETE FROM app.orders WHERE region = 'us' AND num = 1000",   // missing on db2
		"INSERT INTO app.events VALUES (18446744073709551000, 'big')", // extra on db2, above int64
		"DELETE FROM app.log WHERE at = 42 LIMIT 1",                   // no-PK table: one copy gone
	)
	execLocal(t, p.Nodes[0].DB, "INSERT INTO app.orders VALUES ('zz', 1, 'only-db1')",
		"CREATE TABLE app.only1 (id INT PRIMARY KEY)",          // table missing on db2
		"ALTER TABLE app.clean2 ADD COLUMN extra INT",          // definitions differ
		"CREATE DATABASE lockstep",                             // per-node heartbeats: never compared
		"CREATE TABLE lockstep.heartbeat (id INT PRIMARY KEY)", //
	)

	r, err = newChecker(t, p, opts).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	_ = r.WriteText(&out)
	t.Logf("report:\n%s", out.String())
	if r.Consistent || r.TablesDrifted != 6 {
		t.Fatalf("consistent=%v drifted=%d, want drift in 6 tables", r.Consistent, r.TablesDrifted)
	}
	if o := table(t, r, "app.only1"); o.Status != checksum.StatusMissing || o.MissingOn != "db2" {
		t.Errorf("app.only1: %+v", o)
	}
	if c := table(t, r, "app.clean2"); c.Status != checksum.StatusDrift || c.Method != checksum.MethodSchemaOff || !strings.Contains(c.Note, "extra") {
		t.Errorf("app.clean2: %+v", c)
	}

	users := table(t, r, "app.users")
	if users.Status != checksum.StatusDrift || users.DiffCount != 2 || len(users.Diffs) != 2 {
		t.Fatalf("app.users: %+v", users)
	}
	byKey := map[string]checksum.RowDiff{}
	for _, d := range users.Diffs {
		byKey[d.PrimaryKey] = d
	}
	d := byKey["id=1500"]
	if d.Kind != checksum.KindDiffers || len(d.Columns) != 1 || d.Columns[0].Column != "email" ||
		d.Columns[0].Values["db1"] == nil || *d.Columns[0].Values["db1"] != "u1500@x" || d.Columns[0].Values["db2"] != nil {
		t.Errorf("id=1500: %+v", d)
	}
	d = byKey["id=2999"]
	if d.Kind != checksum.KindDiffers || len(d.Columns) != 1 || d.Columns[0].Column != "name" || *d.Columns[0].Values["db2"] != "mallory" {
		t.Errorf("id=2999: %+v", d)
	}

	orders := table(t, r, "app.orders")
	if orders.DiffCount != 2 {
		t.Fatalf("app.orders: %+v", orders)
	}
	byKey = map[string]checksum.RowDiff{}
	for _, d := range orders.Diffs {
		byKey[d.PrimaryKey] = d
	}
	if d := byKey["region=us,num=1000"]; d.Kind != checksum.KindMissing || d.OnlyOn != "db1" || d.MissingOn != "db2" {
		t.Errorf("orders us/1000: %+v", d)
	}
	if d := byKey["region=zz,num=1"]; d.Kind != checksum.KindMissing || d.OnlyOn != "db1" || *d.Row["item"] != "only-db1" {
		t.Errorf("orders zz/1: %+v", d)
	}

	events := table(t, r, "app.events")
	if events.DiffCount != 1 || events.Diffs[0].PrimaryKey != "id=18446744073709551000" || events.Diffs[0].OnlyOn != "db2" {
		t.Errorf("app.events: %+v", events)
	}

	logt := table(t, r, "app.log")
	if logt.Method != checksum.MethodWhole || !strings.Contains(logt.Note, "no primary key") {
		t.Errorf("app.log method %q note %q", logt.Method, logt.Note)
	}
	if logt.DiffCount != 1 || len(logt.Diffs) != 1 || logt.Diffs[0].OnlyOn != "db1" || *logt.Diffs[0].Row["at"] != "42" {
		t.Errorf("app.log: %+v", logt)
	}

	if c := table(t, r, "app.clean"); c.Status != checksum.StatusConsistent {
		t.Errorf("app.clean: %+v", c)
	}
	for _, want := range []string{"id=1500", "id=2999", "region=us,num=1000", "region=zz,num=1", "id=18446744073709551000"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("text report does not name %s", want)
		}
	}

	// Without --database every schema is compared, except the system
	// ones and lockstep's own.
	all, err := newChecker(t, p, checksum.Options{}).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if all.TablesDrifted != 6 {
		t.Errorf("all schemas: %d tables drifted, want 6", all.TablesDrifted)
	}
	for _, tr := range all.Tables {
		if tr.Schema != "app" {
			t.Errorf("compared %s, which must be skipped", tr.Name())
		}
	}

	// --table narrows the run to one table.
	r, err = newChecker(t, p, checksum.Options{Database: "app", Table: "clean"}).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Consistent || len(r.Tables) != 1 {
		t.Fatalf("--table app.clean: consistent=%v tables=%d", r.Consistent, len(r.Tables))
	}
	if _, err := newChecker(t, p, checksum.Options{Database: "nosuch"}).Run(ctx); err == nil {
		t.Fatal("a database that does not exist was not an error")
	}
}

// TestNoFalsePositiveUnderWrites runs the checksum while both nodes take
// writes: chunks read mid-replication must converge, not be reported.
func TestNoFalsePositiveUnderWrites(t *testing.T) {
	p := mariadbpair.Start(t)
	seed(t, p)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var writes [2]int
	var werr [2]error
	for i, n := range p.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each node writes its own rows (odd / even ids) so that the
			// pair itself never conflicts; the checksum still sees every
			// write mid-flight on the other node.
			for k := 0; ctx.Err() == nil; k++ {
				id := 1 + (k*2+i)%3000
				_, err := n.DB.ExecContext(ctx, "UPDATE app.users SET score = score + 1, name = CONCAT('w', ?) WHERE id = ?", k, id)
				if err == nil {
					_, err = n.DB.ExecContext(ctx, "INSERT INTO app.orders VALUES (?, ?, 'live') ON DUPLICATE KEY UPDATE item = CONCAT(item, '+')", fmt.Sprintf("n%d", i), k%500)
				}
				if err != nil {
					if ctx.Err() == nil {
						werr[i] = err
					}
					return
				}
				writes[i]++
			}
		}()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	time.Sleep(300 * time.Millisecond)

	rechecks := 0
	for round := 0; round < 3; round++ {
		r, err := newChecker(t, p, checksum.Options{Database: "app", ChunkTime: 2 * time.Millisecond, ChunkRows: 150}).Run(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !r.Consistent {
			var out bytes.Buffer
			_ = r.WriteText(&out)
			t.Fatalf("drift reported under live writes (round %d):\n%s", round, out.String())
		}
		for _, tr := range r.Tables {
			rechecks += tr.Rechecks
		}
	}
	cancel()
	wg.Wait()
	for i, err := range werr {
		if err != nil {
			t.Fatalf("writer on %s: %v", p.Nodes[i].Name, err)
		}
	}
	t.Logf("writes db1=%d db2=%d; chunk rechecks after catch-up: %d", writes[0], writes[1], rechecks)
	if writes[0] == 0 || writes[1] == 0 {
		t.Fatal("writers did not run during the checksum")
	}
}
