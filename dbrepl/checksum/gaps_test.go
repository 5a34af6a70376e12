package checksum_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/lockstep-ha/lockstep/dbrepl/checksum"
	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
)

// TestChecksumGaps covers three ways drift used to be misreported, on the
// real pair: a FLOAT changed in its last bits, a table keyed only by a
// NOT NULL unique key, and a BLOB that differs deep inside.
func TestChecksumGaps(t *testing.T) {
	p := mariadbpair.Start(t)
	ctx := context.Background()
	db1, db2 := p.Nodes[0].DB, p.Nodes[1].DB
	run(t, db1,
		"CREATE DATABASE gaps",
		"CREATE TABLE gaps.f (id INT PRIMARY KEY, v FLOAT, d DOUBLE)",
		"INSERT INTO gaps.f VALUES (1, 4.5, 0.1), (2, 1.25, 0.2), (3, 7, 0.3)",
		// Only key: a NOT NULL unique key (a nullable one beside it must
		// not be chosen: NULLs repeat).
		"CREATE TABLE gaps.u (code VARCHAR(10) NOT NULL, alt INT NULL, n INT, UNIQUE KEY by_alt (alt), UNIQUE KEY by_code (code))",
		"INSERT INTO gaps.u VALUES ('a', 1, 1), ('b', NULL, 2), ('c', NULL, 3)",
		"CREATE TABLE gaps.b (id INT PRIMARY KEY, payload LONGBLOB)",
		"INSERT INTO gaps.b VALUES (1, REPEAT('x', 5000)), (2, 'short')",
	)
	if err := p.WaitSynced(ctx, 30e9); err != nil {
		t.Fatal(err)
	}
	opts := checksum.Options{Database: "gaps"}
	r, err := newChecker(t, p, opts).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Consistent {
		var out bytes.Buffer
		_ = r.WriteText(&out)
		t.Fatalf("fresh tables reported drift:\n%s", out.String())
	}
	if u := table(t, r, "gaps.u"); u.Method != checksum.MethodChunks || !strings.Contains(u.Note, "unique key by_code") {
		t.Errorf("gaps.u not compared by its NOT NULL unique key: %+v", u)
	}

	execLocal(t, db2,
		"UPDATE gaps.f SET v = 4.5000005 WHERE id = 1", // differs in the last bit of the FLOAT
		"UPDATE gaps.u SET n = 20 WHERE code = 'b'",
		"UPDATE gaps.b SET payload = CONCAT(REPEAT('x', 4000), 'Y', REPEAT('x', 999)) WHERE id = 1",
	)
	r, err = newChecker(t, p, opts).Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	_ = r.WriteText(&out)
	t.Logf("report:\n%s", out.String())

	f := table(t, r, "gaps.f")
	if f.DiffCount != 1 || len(f.Diffs) != 1 || f.Diffs[0].PrimaryKey != "id=1" || len(f.Diffs[0].Columns) != 1 || f.Diffs[0].Columns[0].Column != "v" {
		t.Errorf("FLOAT last-bit change: %+v", f)
	} else if a, b := f.Diffs[0].Columns[0].Values["db1"], f.Diffs[0].Columns[0].Values["db2"]; *a == *b {
		t.Errorf("FLOAT values shown alike: %s vs %s", *a, *b)
	}

	u := table(t, r, "gaps.u")
	if u.DiffCount != 1 || len(u.Diffs) != 1 || u.Diffs[0].Kind != checksum.KindDiffers || u.Diffs[0].PrimaryKey != "code=b" {
		t.Errorf("unique-keyed table: one changed row must be one differing row: %+v", u)
	}

	b := table(t, r, "gaps.b")
	if b.DiffCount != 1 || len(b.Diffs) != 1 || len(b.Diffs[0].Columns) != 1 {
		t.Fatalf("BLOB: %+v", b)
	}
	cd := b.Diffs[0].Columns[0]
	if cd.FirstDifferenceAt == nil || *cd.FirstDifferenceAt != 4000 {
		t.Errorf("BLOB first difference: %v, want 4000", cd.FirstDifferenceAt)
	}
	if !strings.Contains(out.String(), "first difference at byte 4000") || !strings.Contains(out.String(), "Y") {
		t.Errorf("text report does not show the BLOB where it differs:\n%s", out.String())
	}
	if n := table(t, r, "gaps.f"); n.Status != checksum.StatusDrift {
		t.Errorf("gaps.f status %s", n.Status)
	}
}
