package repair_test

import (
	"context"
	"strings"
	"testing"

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
