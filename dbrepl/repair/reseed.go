package repair

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/lockstep-ha/lockstep/dbrepl/checksum"
)

// A reseed copies a table as fast as the target takes it (issue 17:
// ≤ 1.0× `mariadb-dump | mariadb`): the snapshot is read by one goroutine
// while the target inserts the previous batch, batches are sized in bytes
// like the dump's extended INSERTs instead of 500 rows, rows are
// committed in large transactions rather than one per INSERT, the
// fresh table is loaded with unique_checks off (its rows come from the
// source's table, whose keys are unique already), and its plain secondary
// keys are built after the load (reseed_keys.go).
const (
	reseedBatchBytes = 1 << 20  // per INSERT, well under max_allowed_packet
	reseedTxBytes    = 32 << 20 // per transaction
	maxPlaceholders  = 65535    // per prepared statement
)

// rowBatch is one INSERT's rows and their size.
type rowBatch struct {
	rows  [][]any
	bytes int
}

// reseed recreates the table on the target from the snapshot's
// definition and copies every row (both without binlogging).
func reseed(ctx context.Context, snap *sql.Conn, w *sql.Conn, t *checksum.Table, tr *TableReport, progress func(int64)) (err error) {
	var name, create string
	if err := snap.QueryRowContext(ctx, "SHOW CREATE TABLE "+t.Qualified()).Scan(&name, &create); err != nil {
		return err
	}
	create, adds := deferKeys(create)
	if err := execAll(ctx, w, "DROP TABLE IF EXISTS "+t.Qualified(), "USE "+quote(t.Schema()), create); err != nil {
		return err
	}
	if err := execAll(ctx, w, "SET SESSION unique_checks=0"); err != nil {
		return err
	}
	defer func() {
		// The session goes on to fix rows of other tables: checks on again.
		if _, rerr := w.ExecContext(context.Background(), "SET SESSION unique_checks=1"); rerr != nil && err == nil {
			err = fmt.Errorf("unique_checks back on: %w", rerr)
		}
	}()

	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan rowBatch, 2)
	var readErr error
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(batches)
		readErr = readBatches(rctx, snap, t, batches)
	}()
	// On any return: stop the reader and wait for it (it owns snap).
	defer func() {
		cancel()
		for range batches {
		}
		<-readDone
	}()

	inTx, txBytes := false, 0
	defer func() {
		if inTx {
			_, _ = w.ExecContext(context.Background(), "ROLLBACK")
		}
	}()
	for b := range batches {
		if !inTx {
			if _, err := w.ExecContext(ctx, "BEGIN"); err != nil {
				return err
			}
			inTx, txBytes = true, 0
		}
		q, a := t.InsertRows(b.rows)
		if _, err := w.ExecContext(ctx, q, a...); err != nil {
			return err
		}
		tr.Copied += int64(len(b.rows))
		progress(int64(len(b.rows)))
		if txBytes += b.bytes; txBytes >= reseedTxBytes {
			if _, err := w.ExecContext(ctx, "COMMIT"); err != nil {
				return err
			}
			inTx = false
		}
	}
	<-readDone
	if readErr != nil {
		return readErr
	}
	if inTx {
		if _, err := w.ExecContext(ctx, "COMMIT"); err != nil {
			return err
		}
		inTx = false
	}
	if adds != "" {
		// Interrupted before this, the table lacks these keys: the next
		// run finds its definition different and reseeds it again.
		if _, err := w.ExecContext(ctx, "ALTER TABLE "+t.Qualified()+" "+adds); err != nil {
			return fmt.Errorf("building the secondary keys: %w", err)
		}
	}
	tr.Rows = tr.Copied
	return nil
}

// readBatches streams the table from the snapshot in batches of about
// reseedBatchBytes.
func readBatches(ctx context.Context, snap *sql.Conn, t *checksum.Table, out chan<- rowBatch) error {
	rows, err := snap.QueryContext(ctx, t.SelectAll())
	if err != nil {
		return err
	}
	defer rows.Close()
	maxRows := max(maxPlaceholders/max(t.NumColumns(), 1), 1)
	var b rowBatch
	send := func() error {
		select {
		case out <- b:
			b = rowBatch{}
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for rows.Next() {
		r, err := scanRow(rows, t.NumColumns())
		if err != nil {
			return err
		}
		for _, v := range r {
			if bs, ok := v.([]byte); ok {
				b.bytes += len(bs)
			}
		}
		b.rows = append(b.rows, r)
		if b.bytes >= reseedBatchBytes || len(b.rows) >= maxRows {
			if err := send(); err != nil {
				return err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(b.rows) > 0 {
		return send()
	}
	return nil
}
