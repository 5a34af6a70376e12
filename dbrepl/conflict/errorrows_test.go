package conflict_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl/conflict"
	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
)

func waitSQLStopped(t *testing.T, n *mariadbpair.Node, code string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := n.Replication(context.Background())
		// The thread state and its error are not updated atomically.
		if err == nil && st.SQLRunning == "No" && st.LastSQLError != "" {
			if !strings.Contains(st.LastSQLError, code) {
				t.Fatalf("%s: SQL thread stopped with %q, want %s", n.Name, st.LastSQLError, code)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: SQL thread still running (%+v, %v)", n.Name, st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func src(n *mariadbpair.Node) conflict.Source {
	return conflict.Source{Name: n.Name, DSN: n.RootDSN()}
}

// TestFetchErrorRows stops db2's replication on a duplicate key, then on
// a missing row, and expects the row shown as it is on both nodes.
func TestFetchErrorRows(t *testing.T) {
	p := mariadbpair.Start(t)
	ctx := context.Background()
	db1, db2 := p.Nodes[0], p.Nodes[1]
	mustExec(t, db1, "CREATE DATABASE app", "CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(20))", "INSERT INTO app.t VALUES (1, 'one')")
	if err := p.WaitSynced(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := conflict.FetchErrorRows(ctx, src(db2), src(db1), 10, nil); err == nil {
		t.Fatal("a healthy pair reported a failing transaction")
	}

	// 1062: db2 got id=100 behind replication's back, then db1 inserts it.
	mustExec(t, db2, "SET STATEMENT sql_log_bin=0 FOR INSERT INTO app.t VALUES (100, 'db2-local')")
	mustExec(t, db1, "INSERT INTO app.t VALUES (100, 'db1-new')")
	waitSQLStopped(t, db2, "1062")
	st := time.Now()
	rep, err := conflict.FetchErrorRows(ctx, src(db2), src(db1), 10, nil)
	t.Logf("fetch took %s", time.Since(st))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rep.GTID, "1-1-") || rep.Origin != "db1" || rep.BrokenNode != "db2" || len(rep.Rows) != 1 {
		t.Fatalf("report = %+v", rep)
	}
	r := rep.Rows[0]
	if r.Schema != "app" || r.Table != "t" || r.PrimaryKey != "id=100" || r.Event != "insert" ||
		*r.Versions["db1"]["v"] != "db1-new" || *r.Versions["db2"]["v"] != "db2-local" {
		t.Fatalf("row = %+v (db1 %v, db2 %v)", r, r.Versions["db1"], r.Versions["db2"])
	}

	// Resolve by taking db1's version, then break it with a 1032.
	mustExec(t, db2, "SET STATEMENT sql_log_bin=0 FOR DELETE FROM app.t WHERE id = 100")
	if err := db2.StartSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitSynced(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	mustExec(t, db2, "SET STATEMENT sql_log_bin=0 FOR DELETE FROM app.t WHERE id = 1")
	mustExec(t, db1, "UPDATE app.t SET v = 'uno' WHERE id = 1")
	waitSQLStopped(t, db2, "1032")
	rep, err = conflict.FetchErrorRows(ctx, src(db2), src(db1), 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rows) != 1 || rep.Rows[0].PrimaryKey != "id=1" || rep.Rows[0].Event != "update" ||
		rep.Rows[0].Versions["db2"] != nil || *rep.Rows[0].Versions["db1"]["v"] != "uno" {
		t.Fatalf("1032 report = %+v", rep)
	}
}
