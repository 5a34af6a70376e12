package checksum

import (
	"context"
	"database/sql"
	"strings"

	"golang.org/x/sync/errgroup"
)

// walkIntKey is Walk for a single integer key: chunks are ranges of key
// values, so no boundary query reads each chunk's rows a second time on
// the source (LIMIT 1 OFFSET n scans the n rows it skips), which made
// the source's side of a repair twice the target's. The width in key
// values is scaled by the rows a chunk held, and empty gaps of the key
// space are skipped in one step. ok is false when the key does not fit
// an int64 (an unsigned BIGINT above it): the caller walks by offset.
func (t *Table) walkIntKey(ctx context.Context, src, dst Querier, chunkRows int64, fn func(ChunkDiff) error) (ok bool, err error) {
	d := t.def
	pk := quoteIdent(d.Columns[d.PK[0]].Name)
	var bounds [2][2]sql.NullInt64
	g, gctx := errgroup.WithContext(ctx)
	for i, q := range []Querier{src, dst} {
		g.Go(func() error {
			return q.QueryRowContext(gctx, "SELECT MIN("+pk+"), MAX("+pk+") FROM "+d.qualified()).Scan(&bounds[i][0], &bounds[i][1])
		})
	}
	if err := g.Wait(); err != nil {
		if strings.Contains(err.Error(), "converting") {
			return false, nil
		}
		return true, err
	}
	var lo, hi sql.NullInt64
	for _, b := range bounds {
		if b[0].Valid && (!lo.Valid || b[0].Int64 < lo.Int64) {
			lo = b[0]
		}
		if b[1].Valid && (!hi.Valid || b[1].Int64 > hi.Int64) {
			hi = b[1]
		}
	}
	if !lo.Valid {
		cd, err := t.compareChunk(ctx, src, dst, "", nil)
		if err != nil {
			return true, err
		}
		return true, fn(cd)
	}
	width := max(chunkRows, 1)
	// a is the chunk's lower bound, base what its width counts from: the
	// same, except after a jump over an empty stretch, which then belongs
	// to the next chunk (the chunks must cover every gap: VerifyChunks
	// hashes them again).
	a, first := lo.Int64, true
	base := a
	for {
		b := base + width
		last := b <= base || b > hi.Int64
		var where string
		var args []any
		switch {
		case last && first:
		case last:
			where, args = pk+" >= ?", []any{a}
		case first:
			where, args = pk+" < ?", []any{b}
		default:
			where, args = pk+" >= ? AND "+pk+" < ?", []any{a, b}
		}
		cd, err := t.compareChunk(ctx, src, dst, where, args)
		if err != nil {
			return true, err
		}
		if err := fn(cd); err != nil {
			return true, err
		}
		if last {
			return true, nil
		}
		first, a, base = false, b, b
		if cd.Rows > 0 {
			// What takes time is rows, not key values.
			// At most 8× wider at a time: a sparse stretch must not make
			// one chunk of a dense one that follows.
			width = max(min(int64(float64(width)*float64(chunkRows)/float64(cd.Rows)), 8*width), 1)
			continue
		}
		// An empty chunk on the source: jump to the next key on either side.
		var nexts [2]sql.NullInt64
		g, gctx := errgroup.WithContext(ctx)
		for i, q := range []Querier{src, dst} {
			g.Go(func() error {
				return q.QueryRowContext(gctx, "SELECT MIN("+pk+") FROM "+d.qualified()+" WHERE "+pk+" >= ?", a).Scan(&nexts[i])
			})
		}
		if err := g.Wait(); err != nil {
			return true, err
		}
		if !nexts[0].Valid && !nexts[1].Valid {
			// The rest of the key space is empty: one last (empty) chunk
			// covers it, so that hashing the chunks again (VerifyChunks)
			// sees a row written there since.
			cd, err := t.compareChunk(ctx, src, dst, pk+" >= ?", []any{a})
			if err != nil {
				return true, err
			}
			return true, fn(cd)
		}
		n := nexts[0]
		if !n.Valid || nexts[1].Valid && nexts[1].Int64 < n.Int64 {
			n = nexts[1]
		}
		base, width = max(n.Int64, a), max(chunkRows, 1)
	}
}
