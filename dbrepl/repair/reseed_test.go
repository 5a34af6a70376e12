package repair_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/lockstep-ha/lockstep/dbrepl/repair"
	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
)

// TestReseedAwkwardValues: a reseed copies bytes that are special to
// LOAD DATA's format or to SQL literals (tab, newline, carriage return,
// backslash, quote, NUL, 0x1a), NULL beside the text 'NULL' and '\N',
// latin1 and utf8mb4 text, binary data, BIT, and an AUTO_INCREMENT key of
// 0, identically — by LOAD DATA LOCAL INFILE and by the INSERT fallback.
func TestReseedAwkwardValues(t *testing.T) {
	p := mariadbpair.Start(t)
	db1, db2 := p.Nodes[0], p.Nodes[1]
	run(t, db1.DB, "CREATE DATABASE odd CHARACTER SET utf8mb4",
		"CREATE TABLE odd.t (id INT AUTO_INCREMENT PRIMARY KEY, l VARCHAR(40) CHARACTER SET latin1, u VARCHAR(40) CHARACTER SET utf8mb4, b BLOB, bits BIT(8), n INT, d DATETIME(6), x DECIMAL(10,3), KEY l_idx (l))",
		"SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'NO_AUTO_VALUE_ON_ZERO')",
		`INSERT INTO odd.t VALUES
			(0, 'zero', 'zéro', NULL, b'0', 0, '2000-01-01 00:00:00', 0),
			(1, 'a\tb\nc\\d\re''f"g', 'tab\there\\N', X'00090a0d5c27ff1a', b'10100101', NULL, '2024-02-29 23:59:59.123456', -12.345),
			(2, 'caf\xe9', '😀 ünï', X'', b'11111111', -2147483648, NULL, NULL),
			(3, 'NULL', '\\N', X'5c4e', NULL, 2147483647, '1970-01-01 00:00:01', 9999999.999),
			(4, '', '', NULL, NULL, NULL, NULL, NULL)`)
	ctx := context.Background()
	if err := p.WaitSynced(ctx, 30e9); err != nil {
		t.Fatal(err)
	}
	dump := func(db *sql.DB) []string {
		rows, err := db.Query("SELECT CONCAT_WS('|', id, HEX(l), HEX(u), COALESCE(HEX(b), 'null'), COALESCE(HEX(bits), 'null'), COALESCE(n, 'null'), COALESCE(d, 'null'), COALESCE(x, 'null')) FROM odd.t ORDER BY id")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			out = append(out, s)
		}
		return out
	}
	want := dump(db1.DB)
	if len(want) != 5 {
		t.Fatalf("source rows: %v", want)
	}
	for _, insert := range []bool{false, true} {
		repair.SetNoLoadData(insert)
		execLocal(t, db2.DB, "UPDATE odd.t SET u = 'drift' WHERE id = 4")
		r, err := repair.Run(ctx, config(t, p), repair.Options{Source: "db1", Target: "db2", Databases: []string{"odd"}, Method: repair.MethodReseed})
		repair.SetNoLoadData(false)
		mustClean(t, r, err)
		if tr := tableReport(t, r, "odd.t"); tr.Copied != 5 {
			t.Errorf("insert=%v: %+v", insert, tr)
		}
		got := dump(db2.DB)
		for i := range want {
			if i >= len(got) || got[i] != want[i] {
				t.Errorf("insert=%v: row %d: got %q, want %q", insert, i, got, want)
				break
			}
		}
	}
}
