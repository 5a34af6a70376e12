package checksum

import (
	"bytes"
	"strings"
	"testing"
)

func TestMissingFrom(t *testing.T) {
	peer, err := parseGTIDPos("1-1-100,2-2-50,0-1-7")
	if err != nil {
		t.Fatal(err)
	}
	have, _ := parseGTIDPos("1-1-90,2-2-50")
	got := peer.missingFrom(have)
	// Domain 2 is covered (the node's own writes); 1 and 0 are not.
	for _, want := range []string{"1-1-100", "0-1-7"} {
		if !strings.Contains(got, want) {
			t.Errorf("missingFrom = %q, lacks %s", got, want)
		}
	}
	if strings.Contains(got, "2-2-50") {
		t.Errorf("missingFrom = %q waits for a covered domain", got)
	}
	if s := peer.missingFrom(peer); s != "" {
		t.Errorf("nothing is missing from itself, got %q", s)
	}
	for _, bad := range []string{"1-1", "a-b-c", "1-1-1-1"} {
		if _, err := parseGTIDPos(bad); err == nil {
			t.Errorf("parseGTIDPos(%q) accepted", bad)
		}
	}
	if p, err := parseGTIDPos(""); err != nil || len(p) != 0 {
		t.Errorf("empty position: %v %v", p, err)
	}
}

func TestKeyCompareExpandsComposite(t *testing.T) {
	td := &tableDef{Schema: "s", Name: "t", Columns: []column{{Name: "a", Type: "int"}, {Name: "b", Type: "varchar"}, {Name: "c", Type: "int"}}, PK: []int{0, 1, 2}}
	w, args := td.keyCompare("<=", []any{1, "x", 3})
	want := "((`a` < ?) OR (`a` = ? AND `b` < ?) OR (`a` = ? AND `b` = ? AND `c` <= ?))"
	if w != want || len(args) != 6 {
		t.Fatalf("got %s %v", w, args)
	}
	w, _ = td.keyIn([][]any{{1, "x", 3}, {2, "y", 4}})
	if w != "(`a`,`b`,`c`) IN ((?,?,?),(?,?,?))" {
		t.Fatalf("keyIn = %s", w)
	}
}

func TestRowHashExprMarksNulls(t *testing.T) {
	td := &tableDef{Columns: []column{{Name: "id", Type: "int"}, {Name: "n", Type: "varchar", Nullable: true, Collate: "utf8mb4_general_ci"},
		{Name: "m", Type: "text", Nullable: true, Collate: "latin1_swedish_ci"}}}
	e := td.rowHashExpr()
	if !strings.Contains(e, "CONCAT(ISNULL(`n`),ISNULL(`m`))") {
		t.Errorf("no NULL markers: %s", e)
	}
	// Mixed collations are compared as bytes.
	if !strings.Contains(e, "CAST(`n` AS BINARY)") {
		t.Errorf("mixed collations not cast: %s", e)
	}
}

func TestTextReportBounded(t *testing.T) {
	long := strings.Repeat("x", 500)
	r := &Result{Nodes: [2]string{"db1", "db2"}, Tables: []TableResult{{Schema: "a", Table: "b", Status: StatusDrift, Method: MethodChunks,
		DiffCount: 30, DiffsTruncated: true, Diffs: []RowDiff{{PrimaryKey: "id=1", Kind: KindDiffers,
			Columns: []ColumnDiff{{Column: "v", Values: map[string]*string{"db1": &long, "db2": nil}}}}}}}}
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if strings.Contains(out, long) || !strings.Contains(out, "(500 bytes)") || !strings.Contains(out, "db2=NULL") || !strings.Contains(out, "29 more row(s)") {
		t.Errorf("report:\n%s", out)
	}
}
