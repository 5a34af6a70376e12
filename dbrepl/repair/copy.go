package repair

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
	"golang.org/x/sync/errgroup"

	"github.com/lockstep-ha/lockstep/dbrepl/checksum"
)

// copyPass opens the source snapshot and brings every table of dbs on the
// target to it (dry: only counts).
func copyPass(ctx context.Context, log *slog.Logger, src, tgt node, dbs []string, opts Options, rep *Report) error {
	snapStart := time.Now()
	snaps, at, err := openSnapshots(ctx, src.db, compareWorkers)
	if err != nil {
		return fmt.Errorf("%s: snapshot: %w", src.name, err)
	}
	defer func() {
		for _, c := range snaps {
			closeSnapshot(c)
		}
	}()
	snap := snaps[0]
	if at.file == "" {
		return fmt.Errorf("%s: no binlog_snapshot_file: is the binary log enabled?", src.name)
	}
	gtidOf := snapshotGTID(ctx, src.db, at)
	rep.SnapshotTime = time.Since(snapStart)
	log.Info("source snapshot", "source", src.name, "binlog", at.file, "position", at.pos, "sessions", len(snaps))

	// The target's writers: one session per worker, never binlogged.
	ws := make([]*sql.Conn, 0, len(snaps))
	defer func() {
		for _, w := range ws {
			// Back to the pool binlogging again, or not at all.
			if _, err := w.ExecContext(context.Background(), "SET SESSION sql_log_bin=1"); err != nil {
				_ = w.Raw(func(any) error { return driver.ErrBadConn })
			}
			w.Close()
		}
	}()
	for range snaps {
		w, err := tgt.db.Conn(ctx)
		if err != nil {
			return err
		}
		ws = append(ws, w)
		if err := execAll(ctx, w, "SET SESSION sql_log_bin=0", "SET SESSION foreign_key_checks=0", "SET SESSION unique_checks=1", noAutoValueOnZero); err != nil {
			return fmt.Errorf("%s: %w", tgt.name, err)
		}
	}

	// Guards: one target session per keyed InnoDB table compared, whose
	// transaction holds the locks of its locking reads (see guard.go)
	// until every table is done; committed at the end, rolled back on
	// any failure.
	gs := &guards{db: tgt.db, dry: opts.DryRun}
	defer gs.rollback()

	type job struct{ db, table string }
	var jobs []job
	var total int64
	for _, d := range dbs {
		st, err := checksum.ListTables(ctx, snap, d)
		if err != nil {
			return err
		}
		tt, err := checksum.ListTables(ctx, tgt.db, d)
		if err != nil {
			return err
		}
		names := map[string]bool{}
		for n, est := range st {
			names[n] = true
			total += est
		}
		for n := range tt {
			names[n] = true
		}
		for n := range names {
			jobs = append(jobs, job{d, n})
		}
		if !opts.DryRun {
			var create string
			var name string
			if err := snap.QueryRowContext(ctx, "SHOW CREATE DATABASE "+quote(d)).Scan(&name, &create); err != nil {
				return err
			}
			// Same character set and collation as on the source.
			create = strings.Replace(create, "CREATE DATABASE ", "CREATE DATABASE IF NOT EXISTS ", 1)
			if _, err := ws[0].ExecContext(ctx, create); err != nil {
				return fmt.Errorf("%s: %w", tgt.name, err)
			}
		}
	}
	sort.Slice(jobs, func(i, j int) bool { return jobs[i].db+"."+jobs[i].table < jobs[j].db+"."+jobs[j].table })

	// Workers take the tables in order, each on its own snapshot session
	// and target writer.
	var mu sync.Mutex
	var done int64
	tablesDone := 0
	plans := make([]*verifyPlan, len(jobs))
	copies := make(chan struct{}, copyWorkers)
	next := make(chan int)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(next)
		for i := range jobs {
			select {
			case next <- i:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for wi := range snaps {
		g.Go(func() error {
			for i := range next {
				j := jobs[i]
				plans[i] = &verifyPlan{copies: copies}
				tstart := time.Now()
				tr, err := repairTable(gctx, snaps[wi], tgt.db, ws[wi], gs, j.db, j.table, opts, func(n int64) {
					mu.Lock()
					defer mu.Unlock()
					done += n
					if opts.Progress != nil {
						opts.Progress(Progress{TablesDone: tablesDone, TablesTotal: len(jobs), RowsDone: done, RowsTotal: max(total, done), Table: j.db + "." + j.table})
					}
				}, plans[i])
				if err != nil {
					return fmt.Errorf("%s.%s: %w", j.db, j.table, err)
				}
				tr.Time = time.Since(tstart)
				mu.Lock()
				rep.Tables = append(rep.Tables, tr)
				rep.FixTime += plans[i].fixTime
				tablesDone++
				log.Info("table", "table", tr.Table, "method", tr.Method, "why", tr.Why, "inserted", tr.Inserted, "updated", tr.Updated, "deleted", tr.Deleted, "copied", tr.Copied,
					"time", tr.Time, "fixes", plans[i].fixTime, "tables_done", tablesDone, "tables", len(jobs), "rows_done", done, "rows_estimated", total)
				if opts.Progress != nil {
					opts.Progress(Progress{TablesDone: tablesDone, TablesTotal: len(jobs), RowsDone: done, RowsTotal: max(total, done), Table: tr.Table})
				}
				mu.Unlock()
				if opts.AfterTable != nil {
					opts.AfterTable(tr.Table)
				}
			}
			return nil
		})
	}
	err = g.Wait()
	sort.Slice(rep.Tables, func(i, j int) bool { return rep.Tables[i].Table < rep.Tables[j].Table })
	gtid, gerr := gtidOf()
	if err != nil {
		return err
	}
	if gerr != nil {
		return fmt.Errorf("%s: %w", src.name, gerr)
	}
	rep.SnapshotGTID = gtid
	log.Info("source snapshot position", "source", src.name, "binlog", at.file, "position", at.pos, "gtid", gtid)
	if opts.DryRun {
		return nil
	}
	if !opts.VerifyLive {
		if err := runSnapshotVerify(ctx, tgt, plans, rep); err != nil {
			return err
		}
	}
	// The fixes of the guarded tables become durable only now, verified.
	commitStart := time.Now()
	defer func() { rep.CommitTime = time.Since(commitStart) }()
	if err := gs.commit(ctx); err != nil {
		rep.Verified = false
		return fmt.Errorf("%s: committing the fixes: %w", tgt.name, err)
	}
	return nil
}

// noAutoValueOnZero: a copied AUTO_INCREMENT key of 0 stays 0 (as in a
// dump) instead of taking the next value.
const noAutoValueOnZero = "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'NO_AUTO_VALUE_ON_ZERO')"

func quote(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }

// repairTable brings one table of the target to the snapshot.
func repairTable(ctx context.Context, snap *sql.Conn, tgt *sql.DB, w *sql.Conn, gs *guards, db, table string, opts Options, progress func(int64), plan *verifyPlan) (TableReport, error) {
	tr := TableReport{Table: db + "." + table}
	plan.name, plan.db, plan.table = tr.Table, db, table
	var onSrc, onTgt *checksum.Table
	var err error
	if onSrc, _, err = loadIfExists(ctx, snap, db, table); err != nil {
		return tr, err
	}
	var tgtEngine string
	if onTgt, tgtEngine, err = loadIfExists(ctx, tgt, db, table); err != nil {
		return tr, err
	}
	var srcCreate, tgtCreate string
	if onSrc != nil && onTgt != nil {
		if srcCreate, err = showCreate(ctx, snap, onSrc.Qualified()); err != nil {
			return tr, err
		}
		if tgtCreate, err = showCreate(ctx, tgt, onTgt.Qualified()); err != nil {
			return tr, err
		}
	}
	switch {
	case onSrc == nil:
		tr.Method, tr.Why = "drop", "not on the source"
		plan.dropped = true
		if !opts.DryRun {
			_, err = w.ExecContext(ctx, "DROP TABLE IF EXISTS "+quote(db)+"."+quote(table))
		}
		return tr, err
	case onTgt == nil:
		tr.Method, tr.Why = MethodReseed, "missing on the target"
	case onSrc.SameShape(onTgt) != "":
		tr.Method, tr.Why = MethodReseed, "definitions differ: "+onSrc.SameShape(onTgt)
	case srcCreate != tgtCreate:
		tr.Method, tr.Why = MethodReseed, "definitions differ: keys or table options (SHOW CREATE TABLE)"
	case opts.Method == MethodReseed:
		tr.Method, tr.Why = MethodReseed, "--method reseed"
	}
	if tr.Method == MethodReseed {
		if opts.DryRun {
			var n int64
			if err := snap.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+onSrc.Qualified()).Scan(&n); err != nil {
				return tr, err
			}
			tr.Rows, tr.Copied = n, n
			return tr, nil
		}
		return tr, reseedPlanned(ctx, snap, w, onSrc, &tr, progress, plan)
	}
	plan.src, plan.create = onSrc, srcCreate
	if !onSrc.Keyed() {
		return tr, repairKeyless(ctx, snap, tgt, w, onSrc, opts, &tr, progress, plan)
	}

	// rows: collect the differing keys against the snapshot. On a
	// guard session, the target's table is read and fixed under the
	// guard's table lock, or with its locking reads, which its
	// transaction keeps (guard.go).
	var dst checksum.Querier = tgt
	var fixer execer = w
	g, err := gs.open(ctx, tgtEngine, onSrc, db, table)
	if err != nil {
		return tr, err
	}
	if g != nil {
		dst, fixer = g.conn, g.conn
	}
	var ups, ins, dels [][]any
	var differ []checksum.Chunk
	limit := int64(-1)
walk:
	err = onSrc.Walk(ctx, snap, dst, opts.ChunkRows, func(cd checksum.ChunkDiff) error {
		tr.Rows += cd.Rows
		plan.chunks = append(plan.chunks, cd.Chunk)
		if cd.Differs {
			differ = append(differ, cd.Chunk)
		}
		progress(cd.Rows)
		ups, ins, dels = append(ups, cd.Update...), append(ins, cd.Insert...), append(dels, cd.Delete...)
		n := int64(len(ups) + len(ins) + len(dels))
		if opts.Method == MethodAuto && n > autoReseedMin && limit < 0 {
			limit = n
			return errTooMany
		}
		return nil
	})
	if me := (*mysql.MySQLError)(nil); g != nil && errors.As(err, &me) && me.Number == 1206 {
		// ER_LOCK_TABLE_FULL: a locking guard's row locks outgrew what the
		// target's buffer pool allows. Nothing was written yet: this table
		// is compared unlocked and hashed again in full at the end.
		if err := gs.release(g); err != nil {
			return tr, err
		}
		g, dst, fixer = nil, tgt, w
		onSrc.LockTarget(false)
		ups, ins, dels, differ, limit, tr.Rows, plan.chunks = nil, nil, nil, nil, -1, 0, nil
		goto walk
	}
	if err == errTooMany {
		var rows int64
		if err := snap.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+onSrc.Qualified()).Scan(&rows); err != nil {
			return tr, err
		}
		if float64(limit) > autoReseedFraction*float64(rows) {
			// Nothing was written on the guard: its locks go, the copy
			// drops the table.
			if err := gs.release(g); err != nil {
				return tr, err
			}
			tr = TableReport{Table: tr.Table, Method: MethodReseed, Why: fmt.Sprintf("auto: over %d of %d rows differ (more than %.0f%%): a full copy is cheaper", limit, rows, autoReseedFraction*100)}
			if opts.DryRun {
				tr.Rows, tr.Copied = rows, rows
				return tr, nil
			}
			return tr, reseedPlanned(ctx, snap, w, onSrc, &tr, progress, plan)
		}
		// Many rows but a small share: go on row by row.
		ups, ins, dels, tr.Rows = nil, nil, nil, 0
		plan.chunks, differ = nil, nil
		opts.Method = MethodRows
		err = onSrc.Walk(ctx, snap, dst, opts.ChunkRows, func(cd checksum.ChunkDiff) error {
			tr.Rows += cd.Rows
			plan.chunks = append(plan.chunks, cd.Chunk)
			if cd.Differs {
				differ = append(differ, cd.Chunk)
			}
			ups, ins, dels = append(ups, cd.Update...), append(ins, cd.Insert...), append(dels, cd.Delete...)
			return nil
		})
	}
	if err != nil {
		return tr, err
	}
	tr.Updated, tr.Inserted, tr.Deleted = int64(len(ups)), int64(len(ins)), int64(len(dels))
	tr.Method = "clean"
	if len(ups)+len(ins)+len(dels) == 0 {
		return tr, g.verified(ctx, onSrc, plan, nil)
	}
	tr.Method = MethodRows
	tr.Why = fmt.Sprintf("%d differing row(s), fixed by %s", len(ups)+len(ins)+len(dels), onSrc.KeyLabel())
	if opts.DryRun {
		return tr, nil
	}
	// Delete what differs or is extra, then insert the source's rows.
	fixStart := time.Now()
	defer func() { plan.fixTime = time.Since(fixStart) }()
	gone := append(append([][]any{}, ups...), dels...)
	for b := range slices.Chunk(gone, batchRows) {
		q, a := onSrc.DeleteKeys(b)
		if _, err := fixer.ExecContext(ctx, q, a...); err != nil {
			return tr, err
		}
	}
	put := append(append([][]any{}, ups...), ins...)
	for b := range slices.Chunk(put, batchRows) {
		q, a := onSrc.SelectKeys(b)
		vals, err := readRows(ctx, snap, q, a, onSrc.NumColumns())
		if err != nil {
			return tr, err
		}
		if len(vals) == 0 {
			continue
		}
		iq, ia := onSrc.InsertRows(vals)
		if _, err := fixer.ExecContext(ctx, iq, ia...); err != nil {
			return tr, err
		}
	}
	return tr, g.verified(ctx, onSrc, plan, differ)
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

var errTooMany = fmt.Errorf("too many differences")

// loadIfExists loads a base table's definition and names its engine
// (nil when there is no such table).
func loadIfExists(ctx context.Context, q checksum.Querier, db, table string) (*checksum.Table, string, error) {
	var engine sql.NullString
	err := q.QueryRowContext(ctx, "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND TABLE_TYPE = 'BASE TABLE'", db, table).Scan(&engine)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	t, err := checksum.LoadTable(ctx, q, db, table)
	return t, engine.String, err
}

func readRows(ctx context.Context, q checksum.Querier, query string, args []any, ncol int) ([][]any, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]any
	for rows.Next() {
		r, err := scanRow(rows, ncol)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func scanRow(rows *sql.Rows, ncol int) ([]any, error) {
	raw := make([]sql.RawBytes, ncol)
	dest := make([]any, ncol)
	for i := range raw {
		dest[i] = &raw[i]
	}
	if err := rows.Scan(dest...); err != nil {
		return nil, err
	}
	vals := make([]any, ncol)
	for i, v := range raw {
		if v != nil {
			vals[i] = append([]byte{}, v...)
		}
	}
	return vals, nil
}
