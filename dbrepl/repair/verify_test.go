package repair_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl/repair"
	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
)

// TestRepairVerifiesAgainstSnapshot: a row changed on the target behind
// the repair's back after its table was fixed is caught by the default
// verification (the target hashed again against the snapshot's sums):
// not verified, the target stays fenced. A second run with --verify live
// repairs it and verifies with a checksum of both live nodes.
func TestRepairVerifiesAgainstSnapshot(t *testing.T) {
	p := mariadbpair.Start(t)
	seed(t, p)
	db2 := p.Nodes[1]
	execLocal(t, db2.DB, "UPDATE app.t SET v = 'drift' WHERE id = 3")
	cfg := config(t, p)
	ctx := context.Background()
	r, err := repair.Run(ctx, cfg, repair.Options{Source: "db1", Target: "db2", ChunkRows: 500,
		AfterTable: func(table string) {
			if table == "app.t" {
				execLocal(t, db2.DB, "UPDATE app.t SET v = 'late' WHERE id = 2000")
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Verified || r.Unfenced || r.VerifiedAgainst != "snapshot" {
		t.Fatalf("late write not caught: verified=%v unfenced=%v against=%q notes=%v", r.Verified, r.Unfenced, r.VerifiedAgainst, r.Notes)
	}
	if !strings.Contains(strings.Join(r.Notes, "\n"), "app.t: 1 of ") {
		t.Errorf("notes do not name app.t's differing chunk: %v", r.Notes)
	}
	if !readOnly(t, db2) {
		t.Fatal("target writable after a repair that did not verify")
	}

	r, err = repair.Run(ctx, cfg, repair.Options{Source: "db1", Target: "db2", VerifyLive: true})
	mustClean(t, r, err)
	if r.VerifiedAgainst != "live" || len(r.Checksum) == 0 {
		t.Errorf("second run verified against %q with %d checksum results", r.VerifiedAgainst, len(r.Checksum))
	}
	if tr := tableReport(t, r, "app.t"); tr.Updated != 1 {
		t.Errorf("app.t: %+v", tr)
	}
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
