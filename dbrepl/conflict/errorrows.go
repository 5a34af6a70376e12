package conflict

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/go-sql-driver/mysql"
)

// ErrorRow is one row touched by the transaction replication stopped on,
// as it is now on each node: what an admin needs to decide which version
// wins after a 1062 (duplicate key) or 1032 (row not found) stop.
type ErrorRow struct {
	Schema     string `json:"schema"`
	Table      string `json:"table"`
	PrimaryKey string `json:"primary_key"`
	// Event is the change that failed: insert, update or delete.
	Event string `json:"event"`
	// Columns lists the column names in table order.
	Columns []string `json:"columns"`
	// Versions holds the row per node name; nil when the node lacks it.
	Versions map[string]map[string]*string `json:"versions"`
}

// ErrorReport is what FetchErrorRows found.
type ErrorReport struct {
	// GTID is the failing transaction, read from the peer's binlog.
	GTID string `json:"gtid"`
	// Origin is the node that executed it (the peer); BrokenNode the
	// node whose SQL thread stopped on it.
	Origin     string     `json:"origin"`
	BrokenNode string     `json:"broken_node"`
	Rows       []ErrorRow `json:"rows"`
	Truncated  bool       `json:"truncated,omitempty"`
}

// FetchErrorRows finds the transaction broken's replication stopped on —
// the first transaction of the peer, in its binlog, past broken's
// gtid_slave_pos (where its replication resumes) — and reads
// every row it touches (at most maxRows) from both nodes. Both DSNs need
// SELECT on the data; peer's also REPLICATION SLAVE.
func FetchErrorRows(ctx context.Context, broken, peer Source, maxRows int, logger *slog.Logger) (*ErrorReport, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if maxRows <= 0 {
		maxRows = 20
	}
	var cfgs [2]*mysql.Config
	var dbs [2]*sql.DB
	for i, s := range []Source{broken, peer} {
		c, err := mysql.ParseDSN(s.DSN)
		if err != nil {
			return nil, fmt.Errorf("node %s: not a valid DSN", s.Name)
		}
		cfgs[i] = c
		conn, err := mysql.NewConnector(c)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", s.Name, err)
		}
		dbs[i] = sql.OpenDB(conn)
		defer dbs[i].Close()
	}
	var from, current, peerPos string
	var peerServer uint32
	if err := dbs[0].QueryRowContext(ctx, "SELECT @@gtid_slave_pos, @@gtid_current_pos").Scan(&from, &current); err != nil {
		return nil, fmt.Errorf("%s: %w", broken.Name, err)
	}
	if err := dbs[1].QueryRowContext(ctx, "SELECT @@server_id, @@gtid_binlog_pos").Scan(&peerServer, &peerPos); err != nil {
		return nil, fmt.Errorf("%s: %w", peer.Name, err)
	}
	set, err := gomysql.ParseMariadbGTIDSet(from)
	if err != nil {
		return nil, fmt.Errorf("%s: gtid_slave_pos %q: %w", broken.Name, from, err)
	}
	if behind, err := lacksPeerWrites(current, peerPos, peerServer); err != nil {
		return nil, err
	} else if !behind {
		return nil, fmt.Errorf("%s has applied everything in %s's binlog: no failing transaction to show", broken.Name, peer.Name)
	}
	sc, err := syncerConfig(cfgs[1], 1<<30+rand.Uint32N(1<<30), logger.With("component", "conflict", "node", peer.Name))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", peer.Name, err)
	}
	syncer := replication.NewBinlogSyncer(sc)
	defer syncer.Close()
	streamer, err := syncer.StartSyncGTID(set)
	if err != nil {
		return nil, fmt.Errorf("%s: reading binlog: %w", peer.Name, err)
	}
	// The failing transaction is already in the peer's binlog: if nothing
	// arrives promptly, broken is not behind on the peer at all.
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()

	rep := &ErrorReport{Origin: peer.Name, BrokenNode: broken.Name}
	type change struct {
		tm    *replication.TableMapEvent
		event string
		row   []any
	}
	var changes []change
	inTrx := false
read:
	for {
		ev, err := streamer.GetEvent(rctx)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				if rep.GTID == "" {
					return nil, fmt.Errorf("%s has applied everything in %s's binlog: no failing transaction to show", broken.Name, peer.Name)
				}
				break read
			}
			return nil, fmt.Errorf("%s: reading binlog: %w", peer.Name, err)
		}
		switch e := ev.Event.(type) {
		case *replication.MariadbGTIDEvent:
			if inTrx {
				break read
			}
			if e.GTID.ServerID != peerServer {
				continue // broken's own writes, replicated to the peer
			}
			inTrx = true
			rep.GTID = e.GTID.String()
		case *replication.RowsEvent:
			if !inTrx {
				continue
			}
			kind := map[replication.EnumRowsEventType]string{
				replication.EnumRowsEventTypeInsert: "insert",
				replication.EnumRowsEventTypeUpdate: "update",
				replication.EnumRowsEventTypeDelete: "delete",
			}[e.Type()]
			step := 1
			if e.Type() == replication.EnumRowsEventTypeUpdate {
				step = 2 // before and after images; the key is in the before image
			}
			for j := 0; j < len(e.Rows); j += step {
				changes = append(changes, change{e.Table, kind, e.Rows[j]})
			}
		case *replication.XIDEvent:
			if inTrx {
				break read
			}
		}
	}

	seen := map[string]bool{}
	for _, c := range changes {
		pk, err := lookupPK(ctx, dbs[1], c.tm)
		if err != nil {
			return nil, err
		}
		if pk == nil {
			continue
		}
		key := pk.render(c.row)
		id := string(c.tm.Schema) + "." + string(c.tm.Table) + " " + key
		if seen[id] {
			continue
		}
		seen[id] = true
		if len(rep.Rows) >= maxRows {
			rep.Truncated = true
			break
		}
		er := ErrorRow{Schema: string(c.tm.Schema), Table: string(c.tm.Table), PrimaryKey: key, Event: c.event,
			Versions: map[string]map[string]*string{}}
		for i, name := range []string{broken.Name, peer.Name} {
			cols, v, err := fetchRow(ctx, dbs[i], er.Schema, er.Table, pk, c.row)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			er.Versions[name] = v
			if len(er.Columns) == 0 {
				er.Columns = cols
			}
		}
		rep.Rows = append(rep.Rows, er)
	}
	return rep, nil
}

func quoteIdent(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }

func fetchRow(ctx context.Context, db *sql.DB, schema, table string, pk *pkInfo, row []any) ([]string, map[string]*string, error) {
	conds := make([]string, len(pk.cols))
	args := make([]any, len(pk.cols))
	for i, c := range pk.cols {
		conds[i] = quoteIdent(pk.names[i]) + " = ?"
		if c < len(row) {
			args[i] = row[c]
		}
	}
	rows, err := db.QueryContext(ctx, "SELECT * FROM "+quoteIdent(schema)+"."+quoteIdent(table)+" WHERE "+strings.Join(conds, " AND "), args...)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, nil, err
	}
	if !rows.Next() {
		return cols, nil, rows.Err()
	}
	raw := make([]sql.RawBytes, len(cols))
	dest := make([]any, len(cols))
	for i := range raw {
		dest[i] = &raw[i]
	}
	if err := rows.Scan(dest...); err != nil {
		return nil, nil, err
	}
	out := make(map[string]*string, len(cols))
	for i, c := range cols {
		if raw[i] != nil {
			s := string(raw[i])
			out[c] = &s
		} else {
			out[c] = nil
		}
	}
	return cols, out, rows.Err()
}

// lacksPeerWrites reports whether a node at position have is missing a
// transaction the peer (server peerServer) logged, as of peerPos.
func lacksPeerWrites(have, peerPos string, peerServer uint32) (bool, error) {
	h, err := gomysql.ParseMariadbGTIDSet(have)
	if err != nil {
		return false, fmt.Errorf("gtid position %q: %w", have, err)
	}
	p, err := gomysql.ParseMariadbGTIDSet(peerPos)
	if err != nil {
		return false, fmt.Errorf("gtid position %q: %w", peerPos, err)
	}
	for d, g := range p.(*gomysql.MariadbGTIDSet).Sets {
		if g.ServerID != peerServer {
			continue
		}
		hg, ok := h.(*gomysql.MariadbGTIDSet).Sets[d]
		if !ok || hg.SequenceNumber < g.SequenceNumber {
			return true, nil
		}
	}
	return false, nil
}
