// Package checksum compares the data of the two nodes of a master-master
// pair row by row and names the rows that drifted apart.
//
// Tables are walked in primary-key chunks whose size adapts to a time
// target; each chunk is hashed on both nodes at once (COUNT and BIT_XOR of
// a per-row CRC32). Under live writes a chunk can differ only because a
// transaction has not replicated yet, so a mismatching chunk is compared
// again after each node has applied everything its peer had logged, and
// only rows that still differ after several such rounds are reported.
package checksum

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// Defaults: 200ms chunks keep each statement short enough not to hold up
// replication or other sessions, and large enough that per-statement
// overhead stays small.
const (
	DefaultChunkTime       = 200 * time.Millisecond
	DefaultWorkers         = 2
	DefaultAttempts        = 3
	DefaultCatchUpTimeout  = 10 * time.Second
	DefaultMaxRowsReported = 20
	DefaultChunkRows       = 5000
	minChunkRows           = 100
	verifyBatch            = 500
)

// Node is one side of the comparison.
type Node struct {
	Name string
	DB   *sql.DB
}

// Options tune a run. The zero value plus SetDefaults is usable.
type Options struct {
	Database string // only this schema ("" = all)
	Table    string // only this table (needs Database)
	// ChunkTime is the target duration of one chunk's checksum.
	ChunkTime time.Duration
	// ChunkRows is the size of a table's first chunk, before the size
	// adapts to ChunkTime.
	ChunkRows int64
	// Workers is the number of tables compared concurrently.
	Workers int
	// Attempts is how many times a mismatch is re-checked after the nodes
	// caught up with each other before it is reported as drift.
	Attempts int
	// CatchUpTimeout bounds each wait for a node to apply its peer's
	// transactions.
	CatchUpTimeout time.Duration
	// MaxRowsReported bounds the rows listed per table (all are counted).
	MaxRowsReported int
	// Progress, when set, is called after every chunk (from several
	// goroutines, serialized by the checker).
	Progress func(Progress)
	Logger   *slog.Logger
}

// Progress is a snapshot of a running comparison.
type Progress struct {
	TablesDone, TablesTotal int
	RowsDone, RowsEstimated int64
	Table                   string
}

// SetDefaults fills in unset options.
func (o *Options) SetDefaults() {
	if o.ChunkTime == 0 {
		o.ChunkTime = DefaultChunkTime
	}
	if o.ChunkRows == 0 {
		o.ChunkRows = DefaultChunkRows
	}
	if o.Workers == 0 {
		o.Workers = DefaultWorkers
	}
	if o.Attempts == 0 {
		o.Attempts = DefaultAttempts
	}
	if o.CatchUpTimeout == 0 {
		o.CatchUpTimeout = DefaultCatchUpTimeout
	}
	if o.MaxRowsReported == 0 {
		o.MaxRowsReported = DefaultMaxRowsReported
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate rejects contradictory options.
func (o *Options) Validate() error {
	var errs []error
	if o.Table != "" && o.Database == "" {
		errs = append(errs, errors.New("--table needs --database"))
	}
	if o.ChunkTime < time.Millisecond {
		errs = append(errs, fmt.Errorf("chunk time %s is below 1ms", o.ChunkTime))
	}
	if o.ChunkRows < 1 {
		errs = append(errs, fmt.Errorf("chunk rows: %d, need at least 1", o.ChunkRows))
	}
	if o.Workers < 1 {
		errs = append(errs, fmt.Errorf("workers: %d, need at least 1", o.Workers))
	}
	if o.Attempts < 1 {
		errs = append(errs, fmt.Errorf("attempts: %d, need at least 1", o.Attempts))
	}
	if o.MaxRowsReported < 1 {
		errs = append(errs, fmt.Errorf("max rows reported: %d, need at least 1", o.MaxRowsReported))
	}
	return errors.Join(errs...)
}

// Checker compares the two nodes of a pair.
type Checker struct {
	nodes [2]Node
	opts  Options
	log   *slog.Logger

	rowsDone      atomic.Int64
	tablesDone    atomic.Int64
	tablesTotal   int
	rowsEstimated int64
	progressMu    sync.Mutex

	// notCaughtUp is set once a catch-up wait timed out: replication is
	// not running, so later waits are shortened instead of repeating the
	// full timeout for every chunk.
	notCaughtUp atomic.Bool
	warnMu      sync.Mutex
	warnings    []string
}

// New prepares a comparison of a and b.
func New(a, b Node, opts Options) (*Checker, error) {
	opts.SetDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if a.DB == nil || b.DB == nil {
		return nil, errors.New("checksum: both nodes need a database handle")
	}
	if a.Name == b.Name {
		return nil, fmt.Errorf("checksum: both nodes are named %q", a.Name)
	}
	return &Checker{nodes: [2]Node{a, b}, opts: opts, log: opts.Logger.With("component", "checksum")}, nil
}

// Run compares the selected tables. A table-level problem (a query
// failing on one table) is reported in that table's result; the error
// return is for failures that make the whole run meaningless.
func (c *Checker) Run(ctx context.Context) (*Result, error) {
	start := time.Now()
	var lists [2]map[[2]string]int64
	g, gctx := errgroup.WithContext(ctx)
	for i := range c.nodes {
		g.Go(func() error {
			l, err := listTables(gctx, c.nodes[i].DB, c.opts.Database, c.opts.Table)
			if err != nil {
				return fmt.Errorf("%s: listing tables: %w", c.nodes[i].Name, err)
			}
			lists[i] = l
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	type job struct {
		key [2]string
		est int64
	}
	var jobs []job
	res := &Result{Nodes: [2]string{c.nodes[0].Name, c.nodes[1].Name}}
	for k, n := range lists[0] {
		if _, ok := lists[1][k]; !ok {
			res.Tables = append(res.Tables, TableResult{Schema: k[0], Table: k[1], Status: StatusMissing, MissingOn: c.nodes[1].Name, Method: "-"})
			continue
		}
		jobs = append(jobs, job{k, n})
	}
	for k := range lists[1] {
		if _, ok := lists[0][k]; !ok {
			res.Tables = append(res.Tables, TableResult{Schema: k[0], Table: k[1], Status: StatusMissing, MissingOn: c.nodes[0].Name, Method: "-"})
		}
	}
	if c.opts.Database != "" && len(jobs) == 0 && len(res.Tables) == 0 {
		what := c.opts.Database
		if c.opts.Table != "" {
			what += "." + c.opts.Table
		}
		return nil, fmt.Errorf("no table matches %s on either node", what)
	}
	// Largest tables first, so that the workers finish together.
	sort.Slice(jobs, func(i, j int) bool { return jobs[i].est > jobs[j].est })
	c.tablesTotal = len(jobs)
	for _, j := range jobs {
		c.rowsEstimated += j.est
	}

	results := make([]TableResult, len(jobs))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(c.opts.Workers, max(len(jobs), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				results[i] = c.checkTable(ctx, jobs[i].key[0], jobs[i].key[1])
				c.tablesDone.Add(1)
				c.report(jobs[i].key[0] + "." + jobs[i].key[1])
			}
		}()
	}
feed:
	for i := range jobs {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	res.Tables = append(res.Tables, results...)
	sort.Slice(res.Tables, func(i, j int) bool { return res.Tables[i].Name() < res.Tables[j].Name() })
	res.Consistent = true
	for _, t := range res.Tables {
		res.TablesChecked++
		res.RowsChecked += t.Rows
		if t.Status != StatusConsistent {
			res.Consistent = false
		}
		if t.Status == StatusDrift || t.Status == StatusMissing {
			res.TablesDrifted++
		}
	}
	res.Warnings = c.warnings
	res.DurationSeconds = time.Since(start).Seconds()
	return res, nil
}

func (c *Checker) report(table string) {
	if c.opts.Progress == nil {
		return
	}
	c.progressMu.Lock()
	defer c.progressMu.Unlock()
	c.opts.Progress(Progress{
		TablesDone: int(c.tablesDone.Load()), TablesTotal: c.tablesTotal,
		RowsDone: c.rowsDone.Load(), RowsEstimated: c.rowsEstimated, Table: table,
	})
}

func (c *Checker) warn(msg string) {
	c.warnMu.Lock()
	defer c.warnMu.Unlock()
	for _, w := range c.warnings {
		if w == msg {
			return
		}
	}
	c.warnings = append(c.warnings, msg)
}

func (c *Checker) checkTable(ctx context.Context, schema, name string) TableResult {
	tr := TableResult{Schema: schema, Table: name, Status: StatusConsistent}
	err := c.compareTable(ctx, &tr)
	if err != nil && ctx.Err() == nil {
		tr.Status = StatusError
		tr.Error = err.Error()
		c.log.Warn("table comparison failed", "table", tr.Name(), "err", err)
	}
	if tr.Status == StatusConsistent && tr.DiffCount > 0 {
		tr.Status = StatusDrift
	}
	return tr
}

func (c *Checker) compareTable(ctx context.Context, tr *TableResult) error {
	var defs [2]*tableDef
	g, gctx := errgroup.WithContext(ctx)
	for i := range c.nodes {
		g.Go(func() error {
			d, err := loadTableDef(gctx, c.nodes[i].DB, tr.Schema, tr.Table)
			if err != nil {
				return fmt.Errorf("%s: reading definition: %w", c.nodes[i].Name, err)
			}
			defs[i] = d
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if diff := sameShape(defs[0], defs[1]); diff != "" {
		tr.Status = StatusDrift
		tr.Method = MethodSchemaOff
		tr.Note = fmt.Sprintf("table definitions differ, rows not compared: %s: %s", c.nodes[0].Name, strings.Replace(diff, " vs ", "; "+c.nodes[1].Name+": ", 1))
		return nil
	}
	t := defs[0]
	if len(t.PK) == 0 {
		tr.Method = MethodWhole
		tr.Note = "no primary key: compared as a whole table (row multiset), rows identified by their values"
		return c.compareWhole(ctx, t, tr)
	}
	tr.Method = MethodChunks
	if t.KeyIndex != "PRIMARY" {
		tr.Note = "no primary key: rows identified by NOT NULL " + t.keyLabel()
	}
	if len(t.PK) == 1 && isIntegerType(t.Columns[t.PK[0]].Type) {
		return c.walkIntKey(ctx, t, tr)
	}
	return c.walkKeyset(ctx, t, tr)
}

// chunkSum is one node's checksum of a chunk.
type chunkSum struct {
	n int64
	h string
}

// sums computes a chunk's checksum on both nodes at once and returns the
// slower node's duration, which is what the chunk size adapts to.
func (c *Checker) sums(ctx context.Context, q string, args []any) ([2]chunkSum, time.Duration, error) {
	var out [2]chunkSum
	var took [2]time.Duration
	g, gctx := errgroup.WithContext(ctx)
	for i := range c.nodes {
		g.Go(func() error {
			st := time.Now()
			if err := c.nodes[i].DB.QueryRowContext(gctx, q, args...).Scan(&out[i].n, &out[i].h); err != nil {
				return fmt.Errorf("%s: %w", c.nodes[i].Name, err)
			}
			took[i] = time.Since(st)
			return nil
		})
	}
	err := g.Wait()
	return out, max(took[0], took[1]), err
}

func (c *Checker) adapt(rows int64, took time.Duration) int64 {
	f := 4.0
	if took > 0 {
		f = float64(c.opts.ChunkTime) / float64(took)
	}
	f = min(max(f, 0.5), 4)
	return max(int64(float64(rows)*f), min(minChunkRows, c.opts.ChunkRows))
}

func (c *Checker) catchUpWait() time.Duration {
	if c.notCaughtUp.Load() {
		return 500 * time.Millisecond
	}
	return c.opts.CatchUpTimeout
}

// settle waits for both nodes to apply each other's transactions. A node
// that cannot catch up (replication stopped) is a warning, not an error:
// the data can still be compared, only not at a guaranteed common point.
func (c *Checker) settle(ctx context.Context) error {
	err := c.catchUp(ctx, c.catchUpWait())
	var nc *errNotCaughtUp
	if errors.As(err, &nc) {
		c.notCaughtUp.Store(true)
		c.warn(nc.Error())
		return nil
	}
	return err
}

// compareChunk checks one chunk and, if it still differs once the nodes
// caught up, narrows it down to rows.
func (c *Checker) compareChunk(ctx context.Context, t *tableDef, tr *TableResult, where string, args []any) (chunkSum, time.Duration, error) {
	q := "SELECT COUNT(*), COALESCE(BIT_XOR(" + t.rowHashExpr() + "), 0) FROM " + t.qualified() + t.forceKey()
	if where != "" {
		q += " WHERE " + where
	}
	s, took, err := c.sums(ctx, q, args)
	if err != nil {
		return chunkSum{}, 0, err
	}
	tr.Chunks++
	c.rowsDone.Add(s[0].n)
	c.report(tr.Name())
	// One recheck after catching up clears what was in flight; what
	// still differs is narrowed to rows, which are re-verified Attempts
	// times, so repeating the whole chunk here would only cost time.
	if s[0] != s[1] {
		tr.Rechecks++
		st := time.Now()
		if err := c.settle(ctx); err != nil {
			return chunkSum{}, 0, err
		}
		st2 := time.Now()
		if s, _, err = c.sums(ctx, q, args); err != nil {
			return chunkSum{}, 0, err
		}
		c.log.Debug("rechecked chunk", "table", tr.Name(), "rows", s[0].n, "first", took, "settle", st2.Sub(st), "recheck", time.Since(st2))
	}
	if s[0] != s[1] {
		if err := c.narrow(ctx, t, tr, where, args); err != nil {
			return chunkSum{}, 0, err
		}
	}
	return s[0], took, nil
}

// walkIntKey chunks a single integer primary key by value ranges: no
// boundary query is needed, and empty gaps are skipped.
func (c *Checker) walkIntKey(ctx context.Context, t *tableDef, tr *TableResult) error {
	pk := quoteIdent(t.Columns[t.PK[0]].Name)
	var lo, hi sql.NullInt64
	var bounds [2][2]sql.NullInt64
	g, gctx := errgroup.WithContext(ctx)
	for i := range c.nodes {
		g.Go(func() error {
			return c.nodes[i].DB.QueryRowContext(gctx, "SELECT MIN("+pk+"), MAX("+pk+") FROM "+t.qualified()).Scan(&bounds[i][0], &bounds[i][1])
		})
	}
	if err := g.Wait(); err != nil {
		// An unsigned BIGINT above int64 does not fit: chunk by keyset.
		if strings.Contains(err.Error(), "converting") {
			return c.walkKeyset(ctx, t, tr)
		}
		return err
	}
	for _, b := range bounds {
		if b[0].Valid && (!lo.Valid || b[0].Int64 < lo.Int64) {
			lo = b[0]
		}
		if b[1].Valid && (!hi.Valid || b[1].Int64 > hi.Int64) {
			hi = b[1]
		}
	}
	if !lo.Valid {
		s, _, err := c.compareChunk(ctx, t, tr, "", nil)
		tr.Rows += s.n
		return err
	}
	width := int64(c.opts.ChunkRows)
	a := lo.Int64
	first := true
	for {
		b := a + width
		last := b <= a || b > hi.Int64
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
		s, took, err := c.compareChunk(ctx, t, tr, where, args)
		if err != nil {
			return err
		}
		tr.Rows += s.n
		if last {
			return nil
		}
		first = false
		a = b
		if s.n == 0 {
			// Skip a gap in the key space in one step.
			var nexts [2]sql.NullInt64
			g, gctx := errgroup.WithContext(ctx)
			for i := range c.nodes {
				g.Go(func() error {
					return c.nodes[i].DB.QueryRowContext(gctx, "SELECT MIN("+pk+") FROM "+t.qualified()+" WHERE "+pk+" >= ?", a).Scan(&nexts[i])
				})
			}
			if err := g.Wait(); err != nil {
				return err
			}
			if !nexts[0].Valid && !nexts[1].Valid {
				return nil
			}
			n := nexts[0]
			if !n.Valid || (nexts[1].Valid && nexts[1].Int64 < n.Int64) {
				n = nexts[1]
			}
			a = n.Int64
			// Rows may sit sparsely in the key space: re-learn the width.
			width = c.opts.ChunkRows
			continue
		}
		// Scale the key-space width by the rows it held: what takes time
		// is rows, not key values.
		width = max(int64(float64(width)*float64(c.adapt(s.n, took))/float64(max(s.n, 1))), 1)
	}
}

// walkKeyset chunks any primary key by reading the upper bound of the
// next n keys on the first node.
func (c *Checker) walkKeyset(ctx context.Context, t *tableDef, tr *TableResult) error {
	n := int64(c.opts.ChunkRows)
	var lower []any
	for {
		q := "SELECT " + t.pkList() + " FROM " + t.qualified() + t.forceKey()
		var args []any
		if lower != nil {
			w, a := t.keyCompare(">", lower)
			q += " WHERE " + w
			args = a
		}
		q += " ORDER BY " + t.pkList() + " LIMIT 1 OFFSET " + strconv.FormatInt(n-1, 10)
		var upper []any
		dest := make([]any, len(t.PK))
		raw := make([]sql.RawBytes, len(t.PK))
		for i := range raw {
			dest[i] = &raw[i]
		}
		found := true
		rows, err := c.nodes[0].DB.QueryContext(ctx, q, args...)
		if err != nil {
			return fmt.Errorf("%s: %w", c.nodes[0].Name, err)
		}
		if rows.Next() {
			if err := rows.Scan(dest...); err != nil {
				rows.Close()
				return err
			}
			if upper, err = t.keyArgs(raw); err != nil {
				rows.Close()
				return err
			}
		} else {
			found = false
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		var conds []string
		var cargs []any
		if lower != nil {
			w, a := t.keyCompare(">", lower)
			conds, cargs = append(conds, w), append(cargs, a...)
		}
		if found {
			w, a := t.keyCompare("<=", upper)
			conds, cargs = append(conds, w), append(cargs, a...)
		}
		s, took, err := c.compareChunk(ctx, t, tr, strings.Join(conds, " AND "), cargs)
		if err != nil {
			return err
		}
		tr.Rows += s.n
		if !found {
			return nil
		}
		lower = upper
		n = c.adapt(n, took)
	}
}
