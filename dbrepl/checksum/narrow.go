package checksum

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// maxWholeTableNarrow bounds the rows of a table without a primary key
// whose row multiset is fetched to name the differing rows.
const maxWholeTableNarrow = 2_000_000

// keyedRow is the primary key of a row that differs.
type keyedRow struct {
	key  []any    // primary key values, as statement arguments
	ks   string   // encoded raw key: the map key across nodes
	text []string // raw key values, for the report
}

func encodeKey(vals []sql.RawBytes) string {
	var b bytes.Buffer
	var n [binary.MaxVarintLen64]byte
	for _, v := range vals {
		b.Write(n[:binary.PutUvarint(n[:], uint64(len(v)))])
		b.Write(v)
	}
	return b.String()
}

// rowHashes fetches primary key and row hash of the rows matching where
// on node i, in key order.
func (c *Checker) rowHashes(ctx context.Context, i int, t *tableDef, where string, args []any) ([]string, map[string]string, error) {
	q := "SELECT " + t.pkList() + ", " + t.rowHashExpr() + " FROM " + t.qualified() + t.forceKey()
	if where != "" {
		q += " WHERE " + where
	}
	q += " ORDER BY " + t.pkList()
	rows, err := c.nodes[i].DB.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", c.nodes[i].Name, err)
	}
	defer rows.Close()
	return scanKeyHashes(rows, len(t.PK))
}

// scanKeyHashes reads rows of (key columns..., row hash) in key order.
// Only the few differing rows need their key as arguments: it keeps just
// the encoded key and the hash for the many that match.
func scanKeyHashes(rows *sql.Rows, keyCols int) (order []string, hashes map[string]string, err error) {
	raw := make([]sql.RawBytes, keyCols+1)
	dest := make([]any, len(raw))
	for j := range raw {
		dest[j] = &raw[j]
	}
	hashes = map[string]string{}
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return nil, nil, err
		}
		k := encodeKey(raw[:keyCols])
		order = append(order, k)
		hashes[k] = string(raw[keyCols])
	}
	return order, hashes, rows.Err()
}

// decodeKey is the inverse of encodeKey.
func decodeKey(k string) []sql.RawBytes {
	var out []sql.RawBytes
	b := []byte(k)
	for len(b) > 0 {
		n, w := binary.Uvarint(b)
		out = append(out, b[w:w+int(n)])
		b = b[w+int(n):]
	}
	return out
}

func (t *tableDef) keyed(k string) (keyedRow, error) {
	raw := decodeKey(k)
	key, err := t.keyArgs(raw)
	if err != nil {
		return keyedRow{}, err
	}
	text := make([]string, len(raw))
	for j := range raw {
		text[j] = string(raw[j])
	}
	return keyedRow{key: key, ks: k, text: text}, nil
}

// diffHashes returns the rows that differ or exist on one side only, in
// key order of the first node, then the second node's extra rows.
func (c *Checker) diffHashes(ctx context.Context, t *tableDef, where string, args []any) ([]keyedRow, error) {
	var order [2][]string
	var m [2]map[string]string
	g, gctx := errgroup.WithContext(ctx)
	for i := range c.nodes {
		g.Go(func() error {
			var err error
			order[i], m[i], err = c.rowHashes(gctx, i, t, where, args)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var out []keyedRow
	add := func(k string) error {
		kr, err := t.keyed(k)
		out = append(out, kr)
		return err
	}
	for _, k := range order[0] {
		if b, ok := m[1][k]; !ok || b != m[0][k] {
			if err := add(k); err != nil {
				return nil, err
			}
		}
	}
	for _, k := range order[1] {
		if _, ok := m[0][k]; !ok {
			if err := add(k); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// stillDiffer re-reads the candidate rows on both nodes and keeps those
// that still differ.
func (c *Checker) stillDiffer(ctx context.Context, t *tableDef, cands []keyedRow) ([]keyedRow, error) {
	var out []keyedRow
	for start := 0; start < len(cands); start += verifyBatch {
		batch := cands[start:min(start+verifyBatch, len(cands))]
		keys := make([][]any, len(batch))
		for i, k := range batch {
			keys[i] = k.key
		}
		where, args := t.keyIn(keys)
		d, err := c.diffHashes(ctx, t, where, args)
		if err != nil {
			return nil, err
		}
		out = append(out, d...)
	}
	return out, nil
}

// narrow names the rows of a mismatching chunk. Only rows that differ in
// every one of Attempts reads, each taken after the nodes caught up with
// each other, are reported: a row written concurrently converges.
func (c *Checker) narrow(ctx context.Context, t *tableDef, tr *TableResult, where string, args []any) error {
	st := time.Now()
	if err := c.settle(ctx); err != nil {
		return err
	}
	settled := time.Since(st)
	cands, err := c.diffHashes(ctx, t, where, args)
	if err != nil {
		return err
	}
	c.log.Debug("narrowed chunk", "table", tr.Name(), "settle", settled, "diff", time.Since(st)-settled, "candidates", len(cands))
	for attempt := 1; attempt < c.opts.Attempts && len(cands) > 0; attempt++ {
		if err := c.settle(ctx); err != nil {
			return err
		}
		if cands, err = c.stillDiffer(ctx, t, cands); err != nil {
			return err
		}
	}
	if len(cands) == 0 {
		return nil
	}
	room := c.opts.MaxRowsReported - len(tr.Diffs)
	show := cands
	if len(cands) > room {
		tr.DiffsTruncated = true
		show = cands[:max(room, 0)]
	}
	diffs, err := c.describe(ctx, t, show)
	if err != nil {
		return err
	}
	// A listed row that vanished from both nodes meanwhile is no drift.
	tr.DiffCount += len(cands) - (len(show) - len(diffs))
	tr.Diffs = append(tr.Diffs, diffs...)
	return nil
}

// fetchRows reads full rows by primary key from node i.
func (c *Checker) fetchRows(ctx context.Context, i int, t *tableDef, keys [][]any) (map[string][]*string, error) {
	where, args := t.keyIn(keys)
	q := "SELECT " + t.pkList() + ", " + t.columnList() + " FROM " + t.qualified() + " WHERE " + where
	rows, err := c.nodes[i].DB.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.nodes[i].Name, err)
	}
	defer rows.Close()
	raw := make([]sql.RawBytes, len(t.PK)+len(t.Columns))
	dest := make([]any, len(raw))
	for j := range raw {
		dest[j] = &raw[j]
	}
	out := map[string][]*string{}
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		out[encodeKey(raw[:len(t.PK)])] = toStrings(raw[len(t.PK):])
	}
	return out, rows.Err()
}

func toStrings(raw []sql.RawBytes) []*string {
	vals := make([]*string, len(raw))
	for j, v := range raw {
		if v != nil {
			s := string(v)
			vals[j] = &s
		}
	}
	return vals
}

func eqVal(a, b *string) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

// describe turns differing keys into reported rows with their values.
func (c *Checker) describe(ctx context.Context, t *tableDef, cands []keyedRow) ([]RowDiff, error) {
	if len(cands) == 0 {
		return nil, nil
	}
	keys := make([][]any, len(cands))
	for i, k := range cands {
		keys[i] = k.key
	}
	var full [2]map[string][]*string
	g, gctx := errgroup.WithContext(ctx)
	for i := range c.nodes {
		g.Go(func() error {
			var err error
			full[i], err = c.fetchRows(gctx, i, t, keys)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var out []RowDiff
	for _, k := range cands {
		a, inA := full[0][k.ks]
		b, inB := full[1][k.ks]
		d := RowDiff{PrimaryKey: t.renderKey(k.text)}
		switch {
		case inA && inB:
			d.Kind = KindDiffers
			for j, col := range t.Columns {
				if !eqVal(a[j], b[j]) {
					cd := ColumnDiff{Column: col.Name, Values: map[string]*string{c.nodes[0].Name: a[j], c.nodes[1].Name: b[j]}}
					if a[j] != nil && b[j] != nil {
						off := firstDifference(*a[j], *b[j])
						cd.FirstDifferenceAt = &off
					}
					d.Columns = append(d.Columns, cd)
				}
			}
			if len(d.Columns) == 0 {
				continue // converged between the last check and now
			}
		case inA || inB:
			d.Kind = KindMissing
			vals, only, missing := a, 0, 1
			if inB {
				vals, only, missing = b, 1, 0
			}
			d.OnlyOn, d.MissingOn = c.nodes[only].Name, c.nodes[missing].Name
			d.Row = t.rowMap(vals)
		default:
			continue
		}
		out = append(out, d)
	}
	return out, nil
}

func (t *tableDef) renderKey(key []string) string {
	parts := make([]string, len(key))
	for i, v := range key {
		parts[i] = t.Columns[t.PK[i]].Name + "=" + v
	}
	return strings.Join(parts, ",")
}

func (t *tableDef) rowMap(vals []*string) map[string]*string {
	m := make(map[string]*string, len(vals))
	for j, col := range t.Columns {
		m[col.Name] = vals[j]
	}
	return m
}

// compareWhole compares a table without a primary key as a multiset of
// rows: COUNT and SUM of the row hashes (SUM, unlike XOR, does not cancel
// duplicate rows out).
func (c *Checker) compareWhole(ctx context.Context, t *tableDef, tr *TableResult) error {
	expr := t.rowHashExpr()
	q := "SELECT COUNT(*), COALESCE(SUM(" + expr + "), 0) FROM " + t.qualified()
	s, _, err := c.sums(ctx, q, nil)
	if err != nil {
		return err
	}
	tr.Chunks = 1
	c.rowsDone.Add(s[0].n)
	for attempt := 1; s[0] != s[1] && attempt < c.opts.Attempts; attempt++ {
		tr.Rechecks++
		if err := c.settle(ctx); err != nil {
			return err
		}
		if s, _, err = c.sums(ctx, q, nil); err != nil {
			return err
		}
	}
	tr.Rows = s[0].n
	if s[0] == s[1] {
		return nil
	}
	if max(s[0].n, s[1].n) > maxWholeTableNarrow {
		tr.DiffCount = 1
		tr.Note += fmt.Sprintf("; %s has %d rows, %s has %d, contents differ (too large to list rows)", c.nodes[0].Name, s[0].n, c.nodes[1].Name, s[1].n)
		return nil
	}
	var counts [2]map[string]int64
	g, gctx := errgroup.WithContext(ctx)
	for i := range c.nodes {
		g.Go(func() error {
			rows, err := c.nodes[i].DB.QueryContext(gctx, "SELECT "+expr+" AS h, COUNT(*) FROM "+t.qualified()+" GROUP BY h")
			if err != nil {
				return fmt.Errorf("%s: %w", c.nodes[i].Name, err)
			}
			defer rows.Close()
			counts[i] = map[string]int64{}
			for rows.Next() {
				var h string
				var n int64
				if err := rows.Scan(&h, &n); err != nil {
					return err
				}
				counts[i][h] = n
			}
			return rows.Err()
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	type extra struct {
		h    string
		side int
		n    int64
	}
	var extras []extra
	for h, n := range counts[0] {
		if d := n - counts[1][h]; d > 0 {
			extras = append(extras, extra{h, 0, d})
		}
	}
	for h, n := range counts[1] {
		if d := n - counts[0][h]; d > 0 {
			extras = append(extras, extra{h, 1, d})
		}
	}
	sort.Slice(extras, func(i, j int) bool { return extras[i].h < extras[j].h })
	if len(extras) == 0 {
		// The sums differed but the multisets agree: a row changed
		// between the two reads.
		return nil
	}
	for _, e := range extras {
		tr.DiffCount += int(e.n)
		if len(tr.Diffs) >= c.opts.MaxRowsReported {
			tr.DiffsTruncated = true
			continue
		}
		row, err := c.rowByHash(ctx, e.side, t, expr, e.h)
		if err != nil {
			return err
		}
		tr.Diffs = append(tr.Diffs, RowDiff{
			Kind: KindMissing, OnlyOn: c.nodes[e.side].Name, MissingOn: c.nodes[1-e.side].Name,
			Count: int(e.n), Row: row,
		})
	}
	return nil
}

func (c *Checker) rowByHash(ctx context.Context, i int, t *tableDef, expr, h string) (map[string]*string, error) {
	rows, err := c.nodes[i].DB.QueryContext(ctx, "SELECT "+t.columnList()+" FROM "+t.qualified()+" WHERE "+expr+" = ? LIMIT 1", h)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.nodes[i].Name, err)
	}
	defer rows.Close()
	raw := make([]sql.RawBytes, len(t.Columns))
	dest := make([]any, len(raw))
	for j := range raw {
		dest[j] = &raw[j]
	}
	if !rows.Next() {
		return nil, rows.Err()
	}
	if err := rows.Scan(dest...); err != nil {
		return nil, err
	}
	return t.rowMap(toStrings(raw)), rows.Err()
}
