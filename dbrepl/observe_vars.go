package dbrepl

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"strings"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-sql-driver/mysql"
)

// binlogRefresh is how often SHOW MASTER STATUS is asked: the file and
// position are for the status display only, so asking every poll would
// be a statement per second per node spent on nothing.
const binlogRefresh = 10 * time.Second

// heartbeatWrite upserts this node's heartbeat row with the node's own
// clock and keeps that timestamp in a session variable, so that the read
// that follows on the same connection returns it without another
// statement.
const heartbeatWrite = `INSERT INTO lockstep.heartbeat (origin, ts_us, server_id)
	VALUES (?, @lockstep_hb_ts := CAST(UNIX_TIMESTAMP(NOW(6))*1000000 AS SIGNED), @@server_id)
	ON DUPLICATE KEY UPDATE ts_us=VALUES(ts_us), server_id=VALUES(server_id)`

// heartbeatRows is the subquery that returns every heartbeat visible on
// the node as "ts:origin" lines.
const heartbeatRows = `(SELECT GROUP_CONCAT(CONCAT(ts_us, ':', origin) SEPARATOR '\n') FROM lockstep.heartbeat)`

// The one SELECT of each poll, per flavor. %s is heartbeatRows, or NULL
// while the table does not exist yet.
const (
	mariadbVars = `SELECT CAST(UNIX_TIMESTAMP(NOW(6))*1000000 AS SIGNED), @@server_id, @@gtid_domain_id, @@read_only,
	@@auto_increment_increment, @@auto_increment_offset,
	@@gtid_binlog_pos, @@gtid_slave_pos, @@gtid_current_pos, @@log_slave_updates,
	@lockstep_hb_ts, @@SESSION.last_gtid, `
	mysqlVars = `SELECT CAST(UNIX_TIMESTAMP(NOW(6))*1000000 AS SIGNED), @@server_id, @@server_uuid, @@read_only, @@super_read_only,
	@@auto_increment_increment, @@auto_increment_offset, @@GLOBAL.gtid_executed, @@log_slave_updates,
	@lockstep_hb_ts, '', `
)

// hbWritten is what the read says about this poll's heartbeat write.
type hbWritten struct {
	written int64  // the timestamp written (node clock, µs); 0 if unknown
	seq     uint64 // its GTID sequence number (MariaDB); 0 if unknown
}

// readVars reads the node's clock, variables, GTID positions and visible
// heartbeats in one statement on conn (the session that wrote the
// heartbeat, whose @lockstep_hb_ts and last_gtid it also returns when
// wrote is set).
func (n *nodeConn) readVars(ctx context.Context, conn *sql.Conn, o *Observation, wrote bool) (hbWritten, *stepError) {
	q := mariadbVars
	if o.Flavor != FlavorMariaDB {
		q = mysqlVars
	}
	var (
		hb              hbWritten
		ro, sro, lsu    int
		hbTS            sql.NullInt64
		lastGTID, hbAll sql.NullString
	)
	scan := func(sub string) error {
		before := time.Now()
		row := conn.QueryRowContext(ctx, q+sub)
		var err error
		if o.Flavor == FlavorMariaDB {
			err = row.Scan(&o.NodeNowUS, &o.ServerID, &o.DomainID, &ro, &o.AutoIncInc, &o.AutoIncOff,
				&o.GTIDBinlogPos, &o.GTIDSlavePos, &o.GTIDCurrentPos, &lsu, &hbTS, &lastGTID, &hbAll)
		} else {
			err = row.Scan(&o.NodeNowUS, &o.ServerID, &o.ServerUUID, &ro, &sro, &o.AutoIncInc, &o.AutoIncOff,
				&o.GTIDExecuted, &lsu, &hbTS, &lastGTID, &hbAll)
		}
		after := time.Now()
		// The clock is the first column: about the middle of the round trip.
		o.Local = before.Add(after.Sub(before) / 2)
		return err
	}
	err := scan(heartbeatRows)
	var me *mysql.MySQLError
	if errors.As(err, &me) && (me.Number == 1146 || me.Number == 1049) {
		// Not created yet (or not replicated yet): no heartbeats visible.
		err = scan("NULL")
	}
	if err != nil {
		return hb, &stepError{"read variables", err}
	}
	o.ReadOnly, o.SuperReadOnly = ro != 0, sro != 0
	o.LogReplicaUpdates = lsu != 0
	if o.Flavor != FlavorMariaDB {
		o.GTIDExecuted = compactGTID(o.GTIDExecuted)
	}
	o.HeartbeatTS = parseHeartbeats(hbAll.String)
	if wrote && hbTS.Valid {
		hb.written = hbTS.Int64
		if g, err := gomysql.ParseMariadbGTID(lastGTID.String); err == nil && lastGTID.String != "" {
			hb.seq = g.SequenceNumber
		}
	}
	return hb, nil
}

// parseHeartbeats reads heartbeatRows' "ts:origin" lines.
func parseHeartbeats(s string) map[string]int64 {
	out := map[string]int64{}
	for line := range strings.SplitSeq(s, "\n") {
		ts, origin, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if v, err := strconv.ParseInt(ts, 10, 64); err == nil {
			out[origin] = v
		}
	}
	return out
}

// writeHeartbeat creates the schema once (through db) and upserts this
// node's heartbeat row on conn, the session readVars then reads from.
func (n *nodeConn) writeHeartbeat(ctx context.Context, db *sql.DB, conn *sql.Conn) error {
	n.mu.Lock()
	ok := n.schemaOK
	n.mu.Unlock()
	if !ok {
		for _, s := range []string{"CREATE DATABASE IF NOT EXISTS lockstep", HeartbeatSchema} {
			if _, err := db.ExecContext(ctx, s); err != nil {
				return n.describe("heartbeat schema", err)
			}
		}
		n.mu.Lock()
		n.schemaOK = true
		n.mu.Unlock()
	}
	if _, err := conn.ExecContext(ctx, heartbeatWrite, n.name); err != nil {
		var me *mysql.MySQLError
		if errors.As(err, &me) && (me.Number == 1146 || me.Number == 1049) {
			n.mu.Lock()
			n.schemaOK = false
			n.mu.Unlock()
		}
		return n.describe("heartbeat write", err)
	}
	return nil
}

// cachedBinlog fills o's binlog file and position from the last read
// when it is recent enough.
func (n *nodeConn) cachedBinlog(o *Observation) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.binlogAt.IsZero() || time.Since(n.binlogAt) >= binlogRefresh {
		return false
	}
	o.Binlog, o.BinlogOn = n.binlog, n.binlogOn
	return true
}

func (n *nodeConn) keepBinlog(o *Observation) {
	n.mu.Lock()
	n.binlog, n.binlogOn, n.binlogAt = o.Binlog, o.BinlogOn, time.Now()
	n.mu.Unlock()
}
