package checksum

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
)

// skippedSchemas are never compared: server metadata differs per node by
// design, and lockstep's own schema holds per-node heartbeats.
var skippedSchemas = []string{"mysql", "information_schema", "performance_schema", "sys", "lockstep"}

type column struct {
	Name     string
	Type     string // DATA_TYPE
	Nullable bool
	Collate  string
	Unsigned bool
}

type tableDef struct {
	Schema, Name string
	Columns      []column
	PK           []int // indexes into Columns, in key order
	// KeyIndex is the index PK comes from: PRIMARY, or a unique key whose
	// columns are all NOT NULL when the table has no primary key.
	KeyIndex string
	EstRows  int64
}

// keyLabel names the key rows are identified by.
func (t *tableDef) keyLabel() string {
	if t.KeyIndex == "" || t.KeyIndex == "PRIMARY" {
		return "primary key"
	}
	return "unique key " + t.KeyIndex
}

// forceKey is the index hint that makes a chunk scan follow the key.
func (t *tableDef) forceKey() string {
	return " FORCE INDEX (" + quoteIdent(t.KeyIndex) + ")"
}

func (t *tableDef) qualified() string { return quoteIdent(t.Schema) + "." + quoteIdent(t.Name) }

func quoteIdent(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }

// listTables returns "schema.table" → estimated rows for the base tables
// selected by filter on one node.
func listTables(ctx context.Context, db Querier, database, table string) (map[[2]string]int64, error) {
	q := "SELECT TABLE_SCHEMA, TABLE_NAME, COALESCE(TABLE_ROWS, 0) FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN (" +
		placeholders(len(skippedSchemas)) + ")"
	args := make([]any, 0, len(skippedSchemas)+2)
	for _, s := range skippedSchemas {
		args = append(args, s)
	}
	if database != "" {
		q += " AND TABLE_SCHEMA = ?"
		args = append(args, database)
	}
	if table != "" {
		q += " AND TABLE_NAME = ?"
		args = append(args, table)
	}
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[[2]string]int64{}
	for rows.Next() {
		var s, t string
		var n int64
		if err := rows.Scan(&s, &t, &n); err != nil {
			return nil, err
		}
		out[[2]string{s, t}] = n
	}
	return out, rows.Err()
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}

// loadTableDef reads the columns and primary key of one table. Virtual
// generated columns are left out: they are derived from stored ones.
func loadTableDef(ctx context.Context, db Querier, schema, name string) (*tableDef, error) {
	t := &tableDef{Schema: schema, Name: name}
	rows, err := db.QueryContext(ctx, `SELECT COLUMN_NAME, DATA_TYPE, IS_NULLABLE = 'YES', COALESCE(COLLATION_NAME, ''),
			COLUMN_TYPE LIKE '%unsigned%'
		FROM information_schema.COLUMNS
		WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND EXTRA NOT LIKE '%VIRTUAL%'
		ORDER BY ORDINAL_POSITION`, schema, name)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var c column
		if err := rows.Scan(&c.Name, &c.Type, &c.Nullable, &c.Collate, &c.Unsigned); err != nil {
			rows.Close()
			return nil, err
		}
		t.Columns = append(t.Columns, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(t.Columns) == 0 {
		return nil, fmt.Errorf("table %s.%s has no columns (dropped during the run?)", schema, name)
	}
	// The primary key, or else the unique key with the fewest columns
	// all of which are NOT NULL (such a key identifies a row as well as a
	// primary key does; a nullable unique key does not, NULLs repeat).
	rows, err = db.QueryContext(ctx, `SELECT s.INDEX_NAME, s.COLUMN_NAME, s.SEQ_IN_INDEX, c.IS_NULLABLE = 'YES'
		FROM information_schema.STATISTICS s
		JOIN information_schema.COLUMNS c ON c.TABLE_SCHEMA = s.TABLE_SCHEMA AND c.TABLE_NAME = s.TABLE_NAME AND c.COLUMN_NAME = s.COLUMN_NAME
		WHERE s.TABLE_SCHEMA = ? AND s.TABLE_NAME = ? AND s.NON_UNIQUE = 0
		ORDER BY s.INDEX_NAME = 'PRIMARY' DESC, s.INDEX_NAME, s.SEQ_IN_INDEX`, schema, name)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	type key struct {
		name string
		cols []int
		ok   bool
	}
	var keys []*key
	for rows.Next() {
		var idx, c string
		var seq int
		var nullable bool
		if err := rows.Scan(&idx, &c, &seq, &nullable); err != nil {
			return nil, err
		}
		if len(keys) == 0 || keys[len(keys)-1].name != idx {
			keys = append(keys, &key{name: idx, ok: true})
		}
		k := keys[len(keys)-1]
		pos := -1
		for i, col := range t.Columns {
			if col.Name == c {
				pos = i
			}
		}
		// A key over a virtual column cannot be chunked on reliably, and
		// a nullable column does not identify a row.
		if pos < 0 || (nullable && idx != "PRIMARY") {
			k.ok = false
			continue
		}
		k.cols = append(k.cols, pos)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var best *key
	for _, k := range keys {
		if !k.ok {
			if k.name == "PRIMARY" {
				// compare the whole table, as before unique keys counted
				return t, nil
			}
			continue
		}
		if k.name == "PRIMARY" {
			best = k
			break
		}
		if best == nil || len(k.cols) < len(best.cols) {
			best = k
		}
	}
	if best != nil {
		t.PK, t.KeyIndex = best.cols, best.name
	}
	return t, nil
}

// sameShape reports how two nodes' definitions of a table differ, or "".
func sameShape(a, b *tableDef) string {
	sig := func(t *tableDef) string {
		parts := make([]string, len(t.Columns))
		for i, c := range t.Columns {
			parts[i] = c.Name + " " + c.Type
		}
		pk := make([]string, len(t.PK))
		for i, p := range t.PK {
			pk[i] = t.Columns[p].Name
		}
		return "(" + strings.Join(parts, ", ") + ") " + t.keyLabel() + " (" + strings.Join(pk, ", ") + ")"
	}
	sa, sb := sig(a), sig(b)
	if sa == sb {
		return ""
	}
	return sa + " vs " + sb
}

func isIntegerType(t string) bool {
	switch strings.ToLower(t) {
	case "tinyint", "smallint", "mediumint", "int", "integer", "bigint":
		return true
	}
	return false
}

func isStringType(t string) bool {
	switch strings.ToLower(t) {
	case "char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set":
		return true
	}
	return false
}

// rowHashExpr is the per-row hash: CRC32 over the columns joined by '#',
// plus a NULL marker per nullable column, because CONCAT_WS skips NULLs
// and would otherwise make (NULL,'x') and ('x',NULL) hash alike.
func (t *tableDef) rowHashExpr() string {
	// Strings of different collations cannot be concatenated; comparing
	// their bytes is what a drift check wants anyway.
	collations := map[string]bool{}
	for _, c := range t.Columns {
		if isStringType(c.Type) && c.Collate != "" {
			collations[c.Collate] = true
		}
	}
	binary := len(collations) > 1
	cols := make([]string, 0, len(t.Columns)+1)
	var nulls []string
	for _, c := range t.Columns {
		ref := c.valueExpr()
		if binary && isStringType(c.Type) {
			ref = "CAST(" + ref + " AS BINARY)"
		}
		cols = append(cols, ref)
		if c.Nullable {
			nulls = append(nulls, "ISNULL("+quoteIdent(c.Name)+")")
		}
	}
	if len(nulls) > 0 {
		cols = append(cols, "CONCAT("+strings.Join(nulls, ",")+")")
	}
	return "CRC32(CONCAT_WS('#'," + strings.Join(cols, ",") + "))"
}

func (t *tableDef) pkList() string {
	parts := make([]string, len(t.PK))
	for i, p := range t.PK {
		parts[i] = quoteIdent(t.Columns[p].Name)
	}
	return strings.Join(parts, ",")
}

// valueExpr is how a column's value is read for hashing and reporting.
// A FLOAT converted to text keeps 6 significant digits, so 4.5 and
// 4.5000005 would read alike: widened to DOUBLE (exact) it converts to
// the shortest text that round-trips, which tells every bit apart.
func (c column) valueExpr() string {
	if strings.EqualFold(c.Type, "float") {
		return "CAST(" + quoteIdent(c.Name) + " AS DOUBLE)"
	}
	return quoteIdent(c.Name)
}

// columnList is the select list of a table's values (see valueExpr).
func (t *tableDef) columnList() string {
	parts := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		parts[i] = c.valueExpr()
	}
	return strings.Join(parts, ",")
}

// keyCompare renders "pk <op> (values)" for a composite key as the
// expanded OR form, which MariaDB's range optimizer turns into an index
// range (row constructors are not reliably optimized).
func (t *tableDef) keyCompare(op string, vals []any) (string, []any) {
	strict := op[:1] // "<" or ">"
	var ors []string
	var args []any
	for i := range t.PK {
		var ands []string
		for j := 0; j < i; j++ {
			ands = append(ands, quoteIdent(t.Columns[t.PK[j]].Name)+" = ?")
			args = append(args, vals[j])
		}
		o := strict
		if i == len(t.PK)-1 {
			o = op
		}
		ands = append(ands, quoteIdent(t.Columns[t.PK[i]].Name)+" "+o+" ?")
		args = append(args, vals[i])
		ors = append(ors, "("+strings.Join(ands, " AND ")+")")
	}
	return "(" + strings.Join(ors, " OR ") + ")", args
}

// keyIn renders "pk IN (...)" for n keys.
func (t *tableDef) keyIn(keys [][]any) (string, []any) {
	var args []any
	if len(t.PK) == 1 {
		for _, k := range keys {
			args = append(args, k[0])
		}
		return quoteIdent(t.Columns[t.PK[0]].Name) + " IN (" + placeholders(len(keys)) + ")", args
	}
	tuple := "(" + placeholders(len(t.PK)) + ")"
	tuples := make([]string, len(keys))
	for i, k := range keys {
		tuples[i] = tuple
		args = append(args, k...)
	}
	return "(" + t.pkList() + ") IN (" + strings.Join(tuples, ",") + ")", args
}

// keyArgs turns primary key values read as text into statement
// arguments of the column's kind. Passing an integer as a string would
// make the server compare as DOUBLE (wrong above 2^53), and bytes would
// be sent as a binary string, comparing without the column's collation:
// either way chunk bounds would not match ORDER BY.
func (t *tableDef) keyArgs(raw []sql.RawBytes) ([]any, error) {
	out := make([]any, len(t.PK))
	for i, p := range t.PK {
		col := t.Columns[p]
		s := string(raw[i])
		if !isIntegerType(col.Type) {
			out[i] = s
			continue
		}
		var err error
		if col.Unsigned {
			out[i], err = strconv.ParseUint(s, 10, 64)
		} else {
			out[i], err = strconv.ParseInt(s, 10, 64)
		}
		if err != nil {
			return nil, fmt.Errorf("primary key column %s: %w", col.Name, err)
		}
	}
	return out, nil
}
