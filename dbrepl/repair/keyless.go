package repair

import (
	"context"
	"database/sql"
	"fmt"
	"sort"

	"github.com/lockstep-ha/lockstep/dbrepl/checksum"
)

// A table without a primary or NOT NULL unique key has no row identity,
// but its rows still have values: the rows method matches them by value
// with counts (a multiset), instead of copying the whole table. Each side
// is grouped by the MD5 of the row image the checksum hashes; a row the
// target holds more often than the snapshot is deleted that many times
// (DELETE … WHERE digest … LIMIT n), one it holds less often is copied
// from the snapshot that many times. Each differing value costs a scan
// of the table, so past keylessMaxDiff differing values the table is
// reseeded instead (method auto), and past keylessMaxRows distinct rows
// it is not grouped in memory at all.
const (
	keylessMaxDiff = 100
	keylessMaxRows = 1_000_000
)

// digestCounts groups a table by row digest.
func digestCounts(ctx context.Context, q checksum.Querier, t *checksum.Table) (map[string]int64, error) {
	d := t.RowDigestExpr()
	rows, err := q.QueryContext(ctx, "SELECT "+d+", COUNT(*) FROM "+t.Qualified()+" GROUP BY 1")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var k string
		var n int64
		if err := rows.Scan(&k, &n); err != nil {
			return nil, err
		}
		out[k] = n
		if len(out) > keylessMaxRows {
			return nil, errTooMany
		}
	}
	return out, rows.Err()
}

// valueDiff is one row value whose count differs: add > 0 copies to
// insert on the target, < 0 copies to delete.
type valueDiff struct {
	digest string
	add    int64
}

// diffByValue compares the snapshot's and the target's multisets of rows.
// errTooMany when more than limit values differ (limit < 0: no limit).
func diffByValue(ctx context.Context, snap *sql.Conn, tgt *sql.DB, t *checksum.Table, limit int) ([]valueDiff, int64, error) {
	src, err := digestCounts(ctx, snap, t)
	if err != nil {
		return nil, 0, err
	}
	dst, err := digestCounts(ctx, tgt, t)
	if err != nil {
		return nil, 0, err
	}
	var rows int64
	var out []valueDiff
	for k, n := range src {
		rows += n
		if m := dst[k]; m != n {
			out = append(out, valueDiff{k, n - m})
		}
	}
	for k, m := range dst {
		if _, ok := src[k]; !ok {
			out = append(out, valueDiff{k, -m})
		}
	}
	if limit >= 0 && len(out) > limit {
		return nil, rows, errTooMany
	}
	sort.Slice(out, func(i, j int) bool { return out[i].digest < out[j].digest })
	return out, rows, nil
}

// fixByValue applies the differences on the target's writer session.
func fixByValue(ctx context.Context, snap *sql.Conn, w *sql.Conn, t *checksum.Table, diffs []valueDiff) error {
	d := t.RowDigestExpr()
	for _, v := range diffs {
		if v.add < 0 {
			if _, err := w.ExecContext(ctx, "DELETE FROM "+t.Qualified()+" WHERE "+d+" = ? LIMIT "+fmt.Sprint(-v.add), v.digest); err != nil {
				return err
			}
			continue
		}
		vals, err := readRows(ctx, snap, t.SelectAll()+" WHERE "+d+" = ? LIMIT 1", []any{v.digest}, t.NumColumns())
		if err != nil {
			return err
		}
		if len(vals) == 0 {
			return fmt.Errorf("row %s vanished from the snapshot", v.digest)
		}
		copies := make([][]any, v.add)
		for i := range copies {
			copies[i] = vals[0]
		}
		for start := 0; start < len(copies); start += batchRows {
			q, a := t.InsertRows(copies[start:min(start+batchRows, len(copies))])
			if _, err := w.ExecContext(ctx, q, a...); err != nil {
				return err
			}
		}
	}
	return nil
}

// repairKeyless is the rows method for a table without a key.
func repairKeyless(ctx context.Context, snap *sql.Conn, tgt *sql.DB, w *sql.Conn, t *checksum.Table, opts Options, tr *TableReport, progress func(int64), plan *verifyPlan) error {
	limit := -1
	if opts.Method == MethodAuto {
		limit = keylessMaxDiff
	}
	diffs, rows, err := diffByValue(ctx, snap, tgt, t, limit)
	if err == errTooMany {
		tr.Method = MethodReseed
		tr.Why = fmt.Sprintf("no primary or NOT NULL unique key, and over %d row values differ (or over %d distinct rows): copied whole", keylessMaxDiff, keylessMaxRows)
		if opts.DryRun {
			if err := snap.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+t.Qualified()).Scan(&tr.Rows); err != nil {
				return err
			}
			tr.Copied = tr.Rows
			return nil
		}
		return reseedPlanned(ctx, snap, w, t, tr, progress, plan)
	}
	if err != nil {
		return err
	}
	tr.Rows = rows
	progress(rows)
	for _, v := range diffs {
		if v.add > 0 {
			tr.Inserted += v.add
		} else {
			tr.Deleted -= v.add
		}
	}
	tr.Method = "clean"
	if len(diffs) > 0 {
		tr.Method = MethodRows
		tr.Why = fmt.Sprintf("no primary or NOT NULL unique key: %d row value(s) differ, matched by value with counts", len(diffs))
	}
	if opts.DryRun {
		return nil
	}
	if err := fixByValue(ctx, snap, w, t, diffs); err != nil {
		return err
	}
	// Verified as a whole: count, XOR and SUM of the row hashes.
	ws, err := t.Whole(ctx, snap)
	if err != nil {
		return err
	}
	plan.whole = &ws
	return nil
}
