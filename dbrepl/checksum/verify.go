package checksum

import (
	"context"
	"fmt"
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
