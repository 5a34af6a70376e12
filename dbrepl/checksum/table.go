package checksum

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sync/errgroup"
)

// Querier is what the table walk needs from a connection: a *sql.DB, or
// a *sql.Conn holding a consistent snapshot (`repl repair` reads its
// source that way).
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Table is one table's definition as the checksum sees it (columns, key),
// exported for `repl repair`, which walks the same chunks and rows.
type Table struct {
	def *tableDef
	// lockDst makes Walk's reads on dst locking reads (see LockTarget).
	lockDst bool
}

// LockTarget makes every read Walk takes on its dst a locking read
// (SELECT ... FOR UPDATE): inside a transaction on dst, each row compared
// and each gap between keys stays locked against every other writer until
// that transaction ends, so a chunk found identical stays identical. The
// chunks of a walk cover the whole key space, gaps included (see
// walkIntKey). Only meaningful for a transactional engine (InnoDB).
// `repl repair` locks this way only the tables it cannot hold under LOCK
// TABLES (foreign keys, triggers): a locking read costs the target about a
// quarter more CPU than a plain one.
func (t *Table) LockTarget(on bool) { t.lockDst = on }

// dstSuffix is what ends a query Walk runs on dst.
func (t *Table) dstSuffix() string {
	if t.lockDst {
		return " FOR UPDATE"
	}
	return ""
}

// LoadTable reads a table's definition on q.
func LoadTable(ctx context.Context, q Querier, schema, name string) (*Table, error) {
	d, err := loadTableDef(ctx, q, schema, name)
	if err != nil {
		return nil, err
	}
	return &Table{def: d}, nil
}

// ListTables returns the base tables of database on q (system schemas and
// lockstep's own are never listed) with their estimated row counts.
func ListTables(ctx context.Context, q Querier, database string) (map[string]int64, error) {
	l, err := listTables(ctx, q, database, "")
	if err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(l))
	for k, n := range l {
		out[k[1]] = n
	}
	return out, nil
}

// Schema is the table's database.
func (t *Table) Schema() string { return t.def.Schema }

// Name is `db.table`.
func (t *Table) Name() string { return t.def.Schema + "." + t.def.Name }

// Qualified is the quoted `db`.`table`.
func (t *Table) Qualified() string { return t.def.qualified() }

// Keyed reports whether rows have a key (primary, or NOT NULL unique).
func (t *Table) Keyed() bool { return len(t.def.PK) > 0 }

// KeyLabel names the key rows are identified by.
func (t *Table) KeyLabel() string { return t.def.keyLabel() }

// SameShape says how two definitions differ ("" when they match).
func (t *Table) SameShape(o *Table) string { return sameShape(t.def, o.def) }

// ChunkDiff is the outcome of comparing one chunk of a table between a
// source and a target: the keys to copy from the source (rows that
// differ or are missing on the target) and the keys to delete on the
// target (rows the source does not have).
type ChunkDiff struct {
	Rows    int64 // rows in the chunk on the source
	Update  [][]any
	Insert  [][]any
	Delete  [][]any
	Differs bool
	// Chunk is the chunk's bounds and source sums (see VerifyChunks).
	Chunk Chunk
}

// Walk compares the table between src and dst chunk by chunk in key
// order (the checksum's chunk hash, then row hashes for a chunk that
// differs) and calls fn for every chunk. A walk never writes; fn may
// write to dst (each chunk is compared before fn sees it and the next
// chunk's bounds come from src alone).
func (t *Table) Walk(ctx context.Context, src, dst Querier, chunkRows int64, fn func(ChunkDiff) error) error {
	d := t.def
	if len(d.PK) == 0 {
		return fmt.Errorf("%s has no key: compare it as a whole", t.Name())
	}
	if len(d.PK) == 1 && isIntegerType(d.Columns[d.PK[0]].Type) {
		if ok, err := t.walkIntKey(ctx, src, dst, chunkRows, fn); ok {
			return err
		}
	}
	n := max(chunkRows, 1)
	var lower []any
	for {
		q := "SELECT " + d.pkList() + " FROM " + d.qualified() + d.forceKey()
		var args []any
		if lower != nil {
			w, a := d.keyCompare(">", lower)
			q += " WHERE " + w
			args = a
		}
		q += " ORDER BY " + d.pkList() + " LIMIT 1 OFFSET " + strconv.FormatInt(n-1, 10)
		upper, found, err := readKey(ctx, src, d, q, args)
		if err != nil {
			return err
		}
		var conds []string
		var cargs []any
		if lower != nil {
			w, a := d.keyCompare(">", lower)
			conds, cargs = append(conds, w), append(cargs, a...)
		}
		if found {
			w, a := d.keyCompare("<=", upper)
			conds, cargs = append(conds, w), append(cargs, a...)
		}
		where := strings.Join(conds, " AND ")
		cd, err := t.compareChunk(ctx, src, dst, where, cargs)
		if err != nil {
			return err
		}
		if err := fn(cd); err != nil {
			return err
		}
		if !found {
			return nil
		}
		lower = upper
	}
}

func readKey(ctx context.Context, q Querier, d *tableDef, query string, args []any) ([]any, bool, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	if !rows.Next() {
		return nil, false, rows.Err()
	}
	raw := make([]sql.RawBytes, len(d.PK))
	dest := make([]any, len(raw))
	for i := range raw {
		dest[i] = &raw[i]
	}
	if err := rows.Scan(dest...); err != nil {
		return nil, false, err
	}
	k, err := d.keyArgs(raw)
	return k, err == nil, err
}

func (t *Table) compareChunk(ctx context.Context, src, dst Querier, where string, args []any) (ChunkDiff, error) {
	d := t.def
	q := t.chunkQuery(where)
	qs := [2]string{q, q + t.dstSuffix()}
	// Both sides at once: the source's snapshot session and the target.
	var s [2]chunkSum
	g, gctx := errgroup.WithContext(ctx)
	for i, db := range []Querier{src, dst} {
		g.Go(func() error { return db.QueryRowContext(gctx, qs[i], args...).Scan(&s[i].n, &s[i].h) })
	}
	if err := g.Wait(); err != nil {
		return ChunkDiff{}, err
	}
	cd := ChunkDiff{Rows: s[0].n, Chunk: Chunk{where: where, args: args, src: s[0]}}
	if s[0] == s[1] {
		return cd, nil
	}
	cd.Differs = true
	var order [2][]string
	var m [2]map[string]string
	g, gctx = errgroup.WithContext(ctx)
	for i, db := range []Querier{src, dst} {
		suffix := ""
		if i == 1 {
			suffix = t.dstSuffix()
		}
		g.Go(func() error {
			var err error
			order[i], m[i], err = rowHashesOn(gctx, db, d, where, args, suffix)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return ChunkDiff{}, err
	}
	key := func(k string) ([]any, error) {
		kr, err := d.keyed(k)
		return kr.key, err
	}
	for _, k := range order[0] {
		b, ok := m[1][k]
		if ok && b == m[0][k] {
			continue
		}
		kv, err := key(k)
		if err != nil {
			return ChunkDiff{}, err
		}
		if ok {
			cd.Update = append(cd.Update, kv)
		} else {
			cd.Insert = append(cd.Insert, kv)
		}
	}
	for _, k := range order[1] {
		if _, ok := m[0][k]; !ok {
			kv, err := key(k)
			if err != nil {
				return ChunkDiff{}, err
			}
			cd.Delete = append(cd.Delete, kv)
		}
	}
	return cd, nil
}

func rowHashesOn(ctx context.Context, q Querier, t *tableDef, where string, args []any, suffix string) ([]string, map[string]string, error) {
	query := "SELECT " + t.pkList() + ", " + t.rowHashExpr() + " FROM " + t.qualified() + t.forceKey()
	if where != "" {
		query += " WHERE " + where
	}
	query += " ORDER BY " + t.pkList() + suffix
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	return scanKeyHashes(rows, len(t.PK))
}

// plainColumns is the select and insert list of the stored columns, read
// as they are (no conversion): what a copy writes back.
func (t *Table) plainColumns() string {
	parts := make([]string, len(t.def.Columns))
	for i, c := range t.def.Columns {
		parts[i] = quoteIdent(c.Name)
	}
	return strings.Join(parts, ",")
}

// SelectAll is the statement that reads every row for a copy.
func (t *Table) SelectAll() string {
	return "SELECT " + t.plainColumns() + " FROM " + t.def.qualified()
}

// NumColumns is the number of stored columns a row holds.
func (t *Table) NumColumns() int { return len(t.def.Columns) }

// SelectKeys is the statement (and arguments) reading the full rows of
// keys.
func (t *Table) SelectKeys(keys [][]any) (string, []any) {
	w, a := t.def.keyIn(keys)
	return "SELECT " + t.plainColumns() + " FROM " + t.def.qualified() + " WHERE " + w, a
}

// DeleteKeys is the statement deleting the rows of keys.
func (t *Table) DeleteKeys(keys [][]any) (string, []any) {
	w, a := t.def.keyIn(keys)
	return "DELETE FROM " + t.def.qualified() + " WHERE " + w, a
}

// InsertRows is the statement inserting rows (each NumColumns values).
func (t *Table) InsertRows(rows [][]any) (string, []any) {
	tuple := "(" + placeholders(len(t.def.Columns)) + ")"
	tuples := make([]string, len(rows))
	var args []any
	for i, r := range rows {
		tuples[i] = tuple
		args = append(args, r...)
	}
	return "INSERT INTO " + t.def.qualified() + " (" + t.plainColumns() + ") VALUES " + strings.Join(tuples, ","), args
}

// RowDigestExpr is an MD5 of the row image the checksum hashes (FLOATs
// exact, NULLs marked): it identifies a row by its values, for tables
// without a key, where CRC32's 32 bits would collide.
func (t *Table) RowDigestExpr() string {
	h := t.def.rowHashExpr()
	return "MD5(" + strings.TrimSuffix(strings.TrimPrefix(h, "CRC32("), ")") + ")"
}

// InsertPrefix is "INSERT INTO `db`.`t` (columns) VALUES ": a copy
// appends the rows as literals (see BinaryColumns).
func (t *Table) InsertPrefix() string {
	return "INSERT INTO " + t.def.qualified() + " (" + t.plainColumns() + ") VALUES "
}

// BinaryColumns says per stored column whether a value read as text is
// written back as a binary string literal (numbers, dates, binary
// strings, BLOBs, BIT, geometry: bytes the server converts from as they
// are) rather than as a string in the connection's character set (the
// character types, which the server converted into it when reading).
func (t *Table) BinaryColumns() []bool {
	out := make([]bool, len(t.def.Columns))
	for i, c := range t.def.Columns {
		out[i] = !isStringType(c.Type)
	}
	return out
}

// ColumnList is the stored columns' names, quoted and comma-separated
// (SelectAll's and InsertPrefix's order).
func (t *Table) ColumnList() string { return t.plainColumns() }
