package repair

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"sync"
)

// Several snapshot sessions let tables be compared in parallel while the
// repair still reads ONE state of the source. START TRANSACTION WITH
// CONSISTENT SNAPSHOT gives each session the binlog position its snapshot
// corresponds to (binlog_snapshot_file/position, atomic with the snapshot
// in MariaDB); two sessions with the same position saw exactly the same
// committed transactions. Sessions that do not all agree are discarded
// and opened again; after a few tries under a steady write load the
// repair goes on with one session, as before.

// compareWorkers is how many tables are compared and fixed at once: the
// compare is bound by reading the tables (through the buffer pool, from
// disk), and four readers per server did that 5–10% faster than two on
// 2 cores (three runs each, same pair). Copies (reseeds) are bounded
// separately (copyWorkers): more than two loads at once made the target
// slower.
const compareWorkers = 4

// copyWorkers bounds the tables copied onto the target at once.
const copyWorkers = 2

// snapshotTries bounds the attempts at opening agreeing sessions.
const snapshotTries = 5

// snapshotPos is where a snapshot stands in the source's binlog.
type snapshotPos struct {
	file string
	pos  uint64
}

// openSnapshot starts a read-only consistent snapshot on a new session.
func openSnapshot(ctx context.Context, db *sql.DB) (*sql.Conn, snapshotPos, error) {
	var at snapshotPos
	c, err := db.Conn(ctx)
	if err != nil {
		return nil, at, err
	}
	// READ ONLY: the server itself refuses any write through this session.
	if err := execAll(ctx, c, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
		"START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"); err != nil {
		c.Close()
		return nil, at, err
	}
	rows, err := c.QueryContext(ctx, "SHOW STATUS LIKE 'binlog_snapshot_%'")
	if err != nil {
		closeSnapshot(c)
		return nil, at, err
	}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			rows.Close()
			closeSnapshot(c)
			return nil, at, err
		}
		switch k {
		case "Binlog_snapshot_file":
			at.file = v
		case "Binlog_snapshot_position":
			fmt.Sscan(v, &at.pos)
		}
	}
	rows.Close()
	return c, at, nil
}

// closeSnapshot ends a snapshot session; a session whose ROLLBACK fails
// is discarded rather than returned to the pool mid-transaction.
func closeSnapshot(c *sql.Conn) {
	if _, err := c.ExecContext(context.Background(), "ROLLBACK"); err != nil {
		_ = c.Raw(func(any) error { return driver.ErrBadConn })
	}
	c.Close()
}

// openSnapshots opens up to want sessions on the same snapshot (at least
// one) and returns them with their position. Fewer sessions agree more
// easily under writes: after snapshotTries failures it tries half as many.
func openSnapshots(ctx context.Context, db *sql.DB, want int) ([]*sql.Conn, snapshotPos, error) {
	for try := 0; want > 1; try++ {
		if try == snapshotTries {
			try, want = 0, want/2
			if want < 2 {
				break
			}
		}
		conns := make([]*sql.Conn, want)
		pos := make([]snapshotPos, want)
		errs := make([]error, want)
		var wg sync.WaitGroup
		// Opened at the same moment, they most often fall between the
		// same two commits.
		for i := range conns {
			wg.Go(func() { conns[i], pos[i], errs[i] = openSnapshot(ctx, db) })
		}
		wg.Wait()
		same := true
		for i := range conns {
			if errs[i] != nil || pos[i] != pos[0] {
				same = false
			}
		}
		if same {
			return conns, pos[0], nil
		}
		for _, c := range conns {
			if c != nil {
				closeSnapshot(c)
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, snapshotPos{}, err
		}
	}
	c, at, err := openSnapshot(ctx, db)
	if err != nil {
		return nil, at, err
	}
	return []*sql.Conn{c}, at, nil
}

// snapshotGTID returns a function giving the GTID position of the
// snapshot at at. BINLOG_GTID_POS reads the binlog file from its start up
// to the position (~0.1 s per 400 MB): when nothing was binlogged since
// the snapshot — the binlog ends at its position both before and after
// @@gtid_binlog_pos is read, and every binlog write takes the log's lock
// that SHOW MASTER STATUS waits for, GTID state and event together — the
// position is @@gtid_binlog_pos. Otherwise BINLOG_GTID_POS runs on a
// session of its own beside the compare, which does not need the result.
func snapshotGTID(ctx context.Context, db *sql.DB, at snapshotPos) func() (string, error) {
	if g, ok := quietGTID(ctx, db, at); ok {
		return func() (string, error) { return g, nil }
	}
	var gpos sql.NullString
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		err = db.QueryRowContext(ctx, "SELECT BINLOG_GTID_POS(?, ?)", at.file, at.pos).Scan(&gpos)
	}()
	return func() (string, error) {
		<-done
		if err == nil && !gpos.Valid {
			err = fmt.Errorf("NULL")
		}
		if err != nil {
			return "", fmt.Errorf("BINLOG_GTID_POS(%s, %d): %w", at.file, at.pos, err)
		}
		return gpos.String, nil
	}
}

// quietGTID is @@gtid_binlog_pos when the binlog still ends at at (see
// snapshotGTID); ok is false otherwise, or on any error.
func quietGTID(ctx context.Context, db *sql.DB, at snapshotPos) (string, bool) {
	c, err := db.Conn(ctx)
	if err != nil {
		return "", false
	}
	defer c.Close()
	end := func() (snapshotPos, error) {
		rows, err := c.QueryContext(ctx, "SHOW MASTER STATUS")
		if err != nil {
			return snapshotPos{}, err
		}
		defer rows.Close()
		cols, err := rows.Columns()
		if err != nil || len(cols) < 2 {
			return snapshotPos{}, fmt.Errorf("SHOW MASTER STATUS: %d columns, %v", len(cols), err)
		}
		var p snapshotPos
		if !rows.Next() {
			return p, fmt.Errorf("SHOW MASTER STATUS: no row")
		}
		dest := make([]any, len(cols))
		dest[0], dest[1] = &p.file, &p.pos
		for i := 2; i < len(dest); i++ {
			dest[i] = new(sql.RawBytes)
		}
		return p, rows.Scan(dest...)
	}
	before, err := end()
	if err != nil || before != at {
		return "", false
	}
	var g string
	if err := c.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&g); err != nil {
		return "", false
	}
	after, err := end()
	if err != nil || after != at {
		return "", false
	}
	return g, true
}
