package checksum

import (
	"context"
	"fmt"
	"strconv"
)

// Chunk is one compared chunk of a table: its bounds and the source's
// count and hash. Kept by a repair, it lets the target be verified
// against the source's snapshot afterwards by reading the target alone:
// the source, which keeps serving, is not read a second time.
type Chunk struct {
	where string
	args  []any
	src   chunkSum
}

// chunkQuery is a chunk's COUNT and BIT_XOR of the row hashes.
func (t *Table) chunkQuery(where string) string {
	d := t.def
	q := "SELECT COUNT(*), COALESCE(BIT_XOR(" + d.rowHashExpr() + "), 0) FROM " + d.qualified() + d.forceKey()
	if where != "" {
		q += " WHERE " + where
	}
	return q
}

// VerifyChunks hashes every chunk on dst and returns how many differ
// from the source's sums. The chunks of a Walk partition the whole key
// space, rows only dst has included.
func (t *Table) VerifyChunks(ctx context.Context, dst Querier, chunks []Chunk) (differ int, err error) {
	for _, c := range chunks {
		var s chunkSum
		if err := dst.QueryRowContext(ctx, t.chunkQuery(c.where), c.args...).Scan(&s.n, &s.h); err != nil {
			return differ, err
		}
		if s != c.src {
			differ++
		}
	}
	return differ, nil
}

// WholeSum is a whole table's row count and two aggregates of its row
// hashes. The sum is there for keyless tables, whose rows may repeat:
// BIT_XOR cancels a pair of equal rows, SUM does not.
type WholeSum struct {
	n   int64
	xor string
	sum string
}

// Whole reads the table's WholeSum on q.
func (t *Table) Whole(ctx context.Context, q Querier) (WholeSum, error) {
	d := t.def
	h := d.rowHashExpr()
	var w WholeSum
	err := q.QueryRowContext(ctx, "SELECT COUNT(*), COALESCE(BIT_XOR("+h+"), 0), COALESCE(SUM("+h+"), 0) FROM "+d.qualified()).Scan(&w.n, &w.xor, &w.sum)
	if err != nil {
		return w, fmt.Errorf("%s: %w", t.Name(), err)
	}
	return w, nil
}

// SelectAllHashed is SelectAll with the row hash as one more column: a
// copy reads the source once and takes its WholeSum on the way (see
// WholeAcc), instead of hashing the table in a second pass.
func (t *Table) SelectAllHashed() string {
	return "SELECT " + t.plainColumns() + "," + t.def.rowHashExpr() + " FROM " + t.def.qualified()
}

// WholeAcc accumulates a WholeSum from row hashes read one by one.
type WholeAcc struct {
	n        int64
	xor, sum uint64
}

// Add counts one row by its hash (the text of the last column of
// SelectAllHashed).
func (w *WholeAcc) Add(hash []byte) error {
	h, err := strconv.ParseUint(string(hash), 10, 32)
	if err != nil {
		return fmt.Errorf("row hash %q: %w", hash, err)
	}
	w.n++
	w.xor ^= h
	w.sum += h // below 2^32 per row: no overflow before 2^32 rows
	return nil
}

// Sum is the WholeSum of the rows added, as Whole renders it.
func (w *WholeAcc) Sum() WholeSum {
	return WholeSum{n: w.n, xor: strconv.FormatUint(w.xor, 10), sum: strconv.FormatUint(w.sum, 10)}
}
