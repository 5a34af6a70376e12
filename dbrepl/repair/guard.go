package repair

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/go-sql-driver/mysql"

	"github.com/lockstep-ha/lockstep/dbrepl/checksum"
)

// Guarded tables: what the verification must show is that, when
// replication resumes, the target equals the source's snapshot. For a
// keyed InnoDB table repaired row by row, the compare reads the target on
// a session of its own (a guard) that holds the table under LOCK TABLES
// ... WRITE in one transaction (autocommit off) from before its first read
// until the repair ends: no other session — a client with READ_ONLY ADMIN
// or SUPER on the fenced target, a DDL statement, a replica thread
// included — writes the table (nor reads it: the target is fenced and
// being rewritten) until that session commits, and the fixes are made in
// it. A chunk found identical to the snapshot therefore stays identical;
// the chunks that differed are hashed again in the guard after the fixes,
// and the guards commit only once every table is done and verified, just
// before replication resumes. That proves what hashing the whole target a
// second time proved, without that second read.
//
// The guard's reads are plain consistent reads: InnoDB takes one table
// lock and no row locks. Locking every row instead (SELECT ... FOR
// UPDATE, issue 17's first guard) cost the target ~25% more CPU per
// compared row and a lock struct per page (~400 KB of lock memory per
// 250,000 rows, ER_LOCK_TABLE_FULL on a small buffer pool).
//
// A table with foreign keys (either end) or triggers is still guarded by
// locking reads: LOCK TABLES ... WRITE also takes the tables its foreign
// keys and triggers name, so two guards on related tables would wait for
// each other. So is a table the repair's account may not lock (no LOCK
// TABLES privilege). Its guard reads every row with SELECT ... FOR UPDATE
// (checksum.Table.LockTarget) in its transaction instead: every row
// compared, and every gap between keys, stays locked against every other
// writer until the transaction ends.
//
// Non-transactional engines, keyless tables, copied tables, and tables
// past maxGuards (each guard is a connection) are verified by hashing the
// target again at the end, as before (verify.go).

// guardLockWait bounds how long a guard waits for its table lock (a
// transaction still open on the fenced target holds it off): the repair
// fails rather than waits for lock_wait_timeout's default of a day.
const guardLockWait = 60

// maxGuards bounds the target sessions held open by one repair.
const maxGuards = 32

// guard is one table's locking session.
type guard struct {
	conn *sql.Conn
}

// guards are a repair's guard sessions.
type guards struct {
	db   *sql.DB
	dry  bool
	mu   sync.Mutex
	held []*guard
}

// open starts a guard for table db.table (t: the source's definition) of
// engine, or returns nil when the table is not guarded (dry run, not
// InnoDB, too many guards). A guard that reads with locks (foreign keys,
// triggers) sets t.LockTarget; the others hold the table under LOCK
// TABLES.
func (gs *guards) open(ctx context.Context, engine string, t *checksum.Table, db, table string) (*guard, error) {
	if gs.dry || !strings.EqualFold(engine, "InnoDB") {
		return nil, nil
	}
	gs.mu.Lock()
	if len(gs.held) >= maxGuards {
		gs.mu.Unlock()
		return nil, nil
	}
	g := &guard{}
	gs.held = append(gs.held, g) // the slot, before the connection
	gs.mu.Unlock()
	c, err := gs.db.Conn(ctx)
	var related bool
	if err == nil {
		g.conn = c
		related, err = linked(ctx, c, db, table)
	}
	if err == nil {
		// autocommit off before LOCK TABLES: InnoDB then takes its own
		// table lock too, and the fixes stay one transaction until COMMIT.
		err = execAll(ctx, c, "SET SESSION sql_log_bin=0", "SET SESSION foreign_key_checks=0", noAutoValueOnZero,
			"SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ", "SET SESSION autocommit=0",
			"SET SESSION lock_wait_timeout="+strconv.Itoa(guardLockWait))
	}
	if err == nil && !related {
		_, err = c.ExecContext(ctx, "LOCK TABLES "+t.Qualified()+" WRITE")
		if me := (*mysql.MySQLError)(nil); errors.As(err, &me) && (me.Number == 1044 || me.Number == 1142 || me.Number == 1227) {
			// An account without the LOCK TABLES privilege: locking reads.
			related, err = true, nil
		}
	}
	if err == nil && related {
		_, err = c.ExecContext(ctx, "START TRANSACTION")
	}
	if err != nil {
		_ = gs.release(g)
		return nil, err
	}
	t.LockTarget(related)
	return g, nil
}

// linked reports whether a table has foreign keys (either end) or
// triggers on q: LOCK TABLES would lock the tables they name as well.
func linked(ctx context.Context, q checksum.Querier, schema, table string) (bool, error) {
	var n int
	err := q.QueryRowContext(ctx, `SELECT
	(SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS
	  WHERE (CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?) OR (UNIQUE_CONSTRAINT_SCHEMA = ? AND REFERENCED_TABLE_NAME = ?)) +
	(SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = ? AND EVENT_OBJECT_TABLE = ?)`,
		schema, table, schema, table, schema, table).Scan(&n)
	return n > 0, err
}

// release rolls a guard back (nothing it did stays) and drops it.
func (gs *guards) release(g *guard) error {
	if g == nil {
		return nil
	}
	gs.mu.Lock()
	gs.held = slices.DeleteFunc(gs.held, func(h *guard) bool { return h == g })
	gs.mu.Unlock()
	return g.end("ROLLBACK")
}

// end finishes the guard's transaction and discards its session, which
// has binary logging off (closing it releases the table lock).
func (g *guard) end(stmt string) error {
	if g.conn == nil {
		return nil
	}
	_, err := g.conn.ExecContext(context.Background(), stmt)
	_ = g.conn.Raw(func(any) error { return driver.ErrBadConn })
	g.conn.Close()
	g.conn = nil
	return err
}

// commit makes every guard's fixes durable. On an error the guards not
// committed yet are rolled back by rollback.
func (gs *guards) commit(ctx context.Context) error {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	for len(gs.held) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		g := gs.held[0]
		gs.held = gs.held[1:]
		if err := g.end("COMMIT"); err != nil {
			return err
		}
	}
	return nil
}

// rollback ends every guard not committed (a failed repair: the target
// keeps its rows as they were, and stays fenced).
func (gs *guards) rollback() {
	gs.mu.Lock()
	held := gs.held
	gs.held = nil
	gs.mu.Unlock()
	for _, g := range held {
		_ = g.end("ROLLBACK")
	}
}

// verified hashes again, in the guard, the chunks that differed and were
// fixed, and records the table as verified by its guard. Without a guard
// the table is verified at the end instead.
func (g *guard) verified(ctx context.Context, t *checksum.Table, plan *verifyPlan, fixed []checksum.Chunk) error {
	if g == nil {
		return nil
	}
	n, err := t.VerifyChunks(ctx, g.conn, fixed)
	if err != nil {
		return err
	}
	plan.guarded, plan.guardDiffer, plan.guardChunks = true, n, len(fixed)
	return nil
}
