package repair

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"strings"
	"sync/atomic"

	"github.com/go-sql-driver/mysql"

	"github.com/lockstep-ha/lockstep/dbrepl/checksum"
)

// A reseed copies a table as fast as the target takes it (issue 17:
// ≤ 1.0× `mariadb-dump | mariadb`). The snapshot is read by one goroutine
// while the target loads what was read before. The rows travel as LOAD
// DATA LOCAL INFILE streams (tab-separated, from a registered reader, no
// file), in the column's own bytes: the snapshot session reads with
// character_set_results=binary and the load is CHARACTER SET binary, so
// the target neither parses SQL literals nor converts character sets (on
// a profile of the target, SQL parsing and conversions were about a fifth
// of an INSERT load; the rest, InnoDB's, is the same for both). A target
// that refuses LOCAL INFILE gets extended INSERTs written as text, like
// the dump's, sent with the plain query protocol (a prepared statement
// with thousands of placeholders made the server return a definition per
// placeholder, as many bytes again as the rows). Rows are committed in
// large transactions rather than one per statement, and the table's plain
// secondary keys are built after the load (reseed_keys.go). unique_checks
// stays on: with it off, InnoDB 10.6+ loads an empty table in bulk
// (MDEV-24621), which measured slower here than the row path with the
// keys deferred. The source's whole-table sums for the verification are
// read with the rows (the row hash as one more column): the source is
// read once.
const (
	reseedStmtBytes = 4 << 20  // per INSERT, capped by max_allowed_packet
	reseedTxBytes   = 32 << 20 // per transaction (one LOAD DATA each)
	reseedBufBytes  = 1 << 20  // per buffer handed from reader to loader
)

// loadSeq names the reader of each LOAD DATA stream.
var loadSeq atomic.Int64

// reseed recreates the table on the target from the snapshot's
// definition and copies every row (both without binlogging). It returns
// the snapshot's whole-table sums of the rows it copied.
func reseed(ctx context.Context, snap *sql.Conn, w *sql.Conn, t *checksum.Table, tr *TableReport, progress func(int64)) (checksum.WholeSum, error) {
	var zero checksum.WholeSum
	var name, create string
	if err := snap.QueryRowContext(ctx, "SHOW CREATE TABLE "+t.Qualified()).Scan(&name, &create); err != nil {
		return zero, err
	}
	var mode string
	var maxPacket, localInfile int
	if err := w.QueryRowContext(ctx, "SELECT @@SESSION.sql_mode, @@SESSION.max_allowed_packet, @@GLOBAL.local_infile").Scan(&mode, &maxPacket, &localInfile); err != nil {
		return zero, err
	}
	lit := literals{noBackslash: strings.Contains(mode, "NO_BACKSLASH_ESCAPES"), binary: t.BinaryColumns()}
	stmtBytes := min(reseedStmtBytes, max(maxPacket/2, 64<<10))
	create, adds := deferKeys(create)
	if err := execAll(ctx, w, "DROP TABLE IF EXISTS "+t.Qualified(), "USE "+quote(t.Schema()), create); err != nil {
		return zero, err
	}
	var sums checksum.WholeSum
	var err error
	if localInfile != 0 && !noLoadData {
		sums, err = loadTable(ctx, snap, w, t, tr, progress)
	} else {
		sums, err = insertTable(ctx, snap, w, t, lit, stmtBytes, tr, progress)
	}
	if err != nil {
		return zero, err
	}
	if adds != "" {
		// Interrupted before this, the table lacks these keys: the next
		// run finds its definition different and reseeds it again.
		if _, err := w.ExecContext(ctx, "ALTER TABLE "+t.Qualified()+" "+adds); err != nil {
			return zero, fmt.Errorf("building the secondary keys: %w", err)
		}
	}
	tr.Rows = tr.Copied
	return sums, nil
}

// noLoadData forces the INSERT path (tests).
var noLoadData bool

// insertTable copies the rows as extended INSERTs.
func insertTable(ctx context.Context, snap *sql.Conn, w *sql.Conn, t *checksum.Table, lit literals, stmtBytes int, tr *TableReport, progress func(int64)) (checksum.WholeSum, error) {
	var zero checksum.WholeSum

	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stmts := make(chan insertStmt, 2)
	var readErr error
	var acc checksum.WholeAcc
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(stmts)
		readErr = readInserts(rctx, snap, t, lit, stmtBytes, &acc, stmts)
	}()
	// On any return: stop the reader and wait for it (it owns snap).
	defer func() {
		cancel()
		for range stmts {
		}
		<-readDone
	}()

	inTx, txBytes := false, 0
	defer func() {
		if inTx {
			_, _ = w.ExecContext(context.Background(), "ROLLBACK")
		}
	}()
	for s := range stmts {
		if !inTx {
			if _, err := w.ExecContext(ctx, "BEGIN"); err != nil {
				return zero, err
			}
			inTx, txBytes = true, 0
		}
		if _, err := w.ExecContext(ctx, s.sql); err != nil {
			return zero, err
		}
		tr.Copied += int64(s.rows)
		progress(int64(s.rows))
		if txBytes += len(s.sql); txBytes >= reseedTxBytes {
			if _, err := w.ExecContext(ctx, "COMMIT"); err != nil {
				return zero, err
			}
			inTx = false
		}
	}
	<-readDone
	if readErr != nil {
		return zero, readErr
	}
	if inTx {
		if _, err := w.ExecContext(ctx, "COMMIT"); err != nil {
			return zero, err
		}
		inTx = false
	}
	return acc.Sum(), nil
}

// insertStmt is one extended INSERT and how many rows it holds.
type insertStmt struct {
	sql  string
	rows int
}

// readInserts streams the table from the snapshot as INSERT statements of
// about stmtBytes, adding every row's hash to acc.
func readInserts(ctx context.Context, snap *sql.Conn, t *checksum.Table, lit literals, stmtBytes int, acc *checksum.WholeAcc, out chan<- insertStmt) error {
	rows, err := snap.QueryContext(ctx, t.SelectAllHashed())
	if err != nil {
		return err
	}
	defer rows.Close()
	ncol := t.NumColumns()
	raw := make([]sql.RawBytes, ncol+1)
	dest := make([]any, len(raw))
	for i := range raw {
		dest[i] = &raw[i]
	}
	prefix := t.InsertPrefix()
	var b strings.Builder
	n := 0
	send := func() error {
		select {
		case out <- insertStmt{sql: b.String(), rows: n}:
			b, n = strings.Builder{}, 0
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return err
		}
		if err := acc.Add(raw[ncol]); err != nil {
			return err
		}
		if n == 0 {
			b.Grow(stmtBytes + stmtBytes/8)
			b.WriteString(prefix)
		} else {
			b.WriteByte(',')
		}
		b.WriteByte('(')
		for i, v := range raw[:ncol] {
			if i > 0 {
				b.WriteByte(',')
			}
			lit.write(&b, i, v)
		}
		b.WriteByte(')')
		n++
		if b.Len() >= stmtBytes {
			if err := send(); err != nil {
				return err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if n > 0 {
		return send()
	}
	return nil
}

// literals writes values read as text back as SQL literals.
type literals struct {
	noBackslash bool   // the target session's sql_mode has NO_BACKSLASH_ESCAPES
	binary      []bool // per column: a _binary literal (see Table.BinaryColumns)
}

func (l literals) write(b *strings.Builder, col int, v sql.RawBytes) {
	if v == nil {
		b.WriteString("NULL")
		return
	}
	if l.binary[col] {
		b.WriteString("_binary")
	}
	b.WriteByte('\'')
	if l.noBackslash {
		for _, c := range v {
			if c == '\'' {
				b.WriteByte('\'')
			}
			b.WriteByte(c)
		}
	} else {
		for _, c := range v {
			switch c {
			case 0:
				b.WriteString(`\0`)
			case '\n':
				b.WriteString(`\n`)
			case '\r':
				b.WriteString(`\r`)
			case 0x1a:
				b.WriteString(`\Z`)
			case '\\', '\'', '"':
				b.WriteByte('\\')
				b.WriteByte(c)
			default:
				b.WriteByte(c)
			}
		}
	}
	b.WriteByte('\'')
}

// loadTable copies the rows with LOAD DATA LOCAL INFILE, one statement
// (and transaction) per reseedTxBytes of rows.
func loadTable(ctx context.Context, snap *sql.Conn, w *sql.Conn, t *checksum.Table, tr *TableReport, progress func(int64)) (sums checksum.WholeSum, err error) {
	// The column's own bytes, for this read only: the session goes on to
	// compare other tables with keys read as text.
	if err := execAll(ctx, snap, "SET @lockstep_results = @@character_set_results", "SET character_set_results = binary"); err != nil {
		return sums, err
	}
	defer func() {
		if _, rerr := snap.ExecContext(context.Background(), "SET character_set_results = @lockstep_results"); rerr != nil && err == nil {
			err = rerr
		}
	}()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	bufs := make(chan tsvBuf, 4)
	var readErr error
	var acc checksum.WholeAcc
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(bufs)
		readErr = readTSV(rctx, snap, t, &acc, bufs)
	}()
	defer func() {
		cancel()
		for range bufs {
		}
		<-readDone
	}()

	// Hex literals: the same bytes whatever the session's sql_mode says
	// of backslashes in strings.
	into := "' INTO TABLE " + t.Qualified() +
		" CHARACTER SET binary FIELDS TERMINATED BY 0x09 ESCAPED BY 0x5c LINES TERMINATED BY 0x0a (" + t.ColumnList() + ")"
	for {
		first, ok := <-bufs
		if !ok {
			break
		}
		seg := &segment{first: first, bufs: bufs, limit: reseedTxBytes}
		name := fmt.Sprintf("lockstep-reseed-%d", loadSeq.Add(1))
		mysql.RegisterReaderHandler(name, func() io.Reader { return seg })
		_, err := w.ExecContext(ctx, "LOAD DATA LOCAL INFILE 'Reader::"+name+into)
		mysql.DeregisterReaderHandler(name)
		if err != nil {
			if readErr != nil {
				return sums, readErr
			}
			return sums, err
		}
		tr.Copied += seg.rows
		progress(seg.rows)
	}
	<-readDone
	if readErr != nil {
		return sums, readErr
	}
	return acc.Sum(), nil
}

// tsvBuf is rows in LOAD DATA's default format and how many.
type tsvBuf struct {
	b    []byte
	rows int64
}

// segment is one LOAD DATA's stream: buffers from the reader until limit
// bytes (at a buffer's end) or the reader's end.
type segment struct {
	first tsvBuf
	cur   []byte
	bufs  <-chan tsvBuf
	limit int
	sent  int
	rows  int64
	began bool
}

func (s *segment) Read(p []byte) (int, error) {
	for len(s.cur) == 0 {
		var b tsvBuf
		switch {
		case !s.began:
			s.began, b = true, s.first
		case s.sent >= s.limit:
			return 0, io.EOF
		default:
			var ok bool
			if b, ok = <-s.bufs; !ok {
				return 0, io.EOF
			}
		}
		s.cur, s.rows, s.sent = b.b, s.rows+b.rows, s.sent+len(b.b)
	}
	n := copy(p, s.cur)
	s.cur = s.cur[n:]
	return n, nil
}

// readTSV streams the table from the snapshot in LOAD DATA's format:
// tab between fields, newline after a row, \N for NULL, and backslash,
// tab, newline, carriage return and NUL escaped.
func readTSV(ctx context.Context, snap *sql.Conn, t *checksum.Table, acc *checksum.WholeAcc, out chan<- tsvBuf) error {
	rows, err := snap.QueryContext(ctx, t.SelectAllHashed())
	if err != nil {
		return err
	}
	defer rows.Close()
	ncol := t.NumColumns()
	raw := make([]sql.RawBytes, ncol+1)
	dest := make([]any, len(raw))
	for i := range raw {
		dest[i] = &raw[i]
	}
	b := tsvBuf{b: make([]byte, 0, reseedBufBytes+reseedBufBytes/8)}
	send := func() error {
		select {
		case out <- b:
			b = tsvBuf{b: make([]byte, 0, reseedBufBytes+reseedBufBytes/8)}
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return err
		}
		if err := acc.Add(raw[ncol]); err != nil {
			return err
		}
		for i, v := range raw[:ncol] {
			if i > 0 {
				b.b = append(b.b, '\t')
			}
			b.b = appendTSV(b.b, v)
		}
		b.b = append(b.b, '\n')
		b.rows++
		if len(b.b) >= reseedBufBytes {
			if err := send(); err != nil {
				return err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if b.rows > 0 {
		return send()
	}
	return nil
}

func appendTSV(b []byte, v sql.RawBytes) []byte {
	if v == nil {
		return append(b, '\\', 'N')
	}
	for _, c := range v {
		switch c {
		case '\\':
			b = append(b, '\\', '\\')
		case '\t':
			b = append(b, '\\', 't')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case 0:
			b = append(b, '\\', '0')
		default:
			b = append(b, c)
		}
	}
	return b
}
