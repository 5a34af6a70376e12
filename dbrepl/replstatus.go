package dbrepl

import (
	"database/sql"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// ReplicaStatus is one row of SHOW ALL SLAVES STATUS (MariaDB),
// SHOW REPLICA STATUS (MySQL 8.0.22+) or SHOW SLAVE STATUS (older),
// normalised to one vocabulary. Columns are looked up by name because their
// order and number differ between servers and versions.
type ReplicaStatus struct {
	ConnectionName string
	SourceHost     string
	SourcePort     int
	SourceServerID uint32
	SourceUUID     string
	// IORunning is "Yes", "No" or "Connecting" as the server says it.
	IORunning    string
	SQLRunning   string
	LastIOErrno  int
	LastIOError  string
	LastSQLErrno int
	LastSQLError string
	// SecondsBehind is nil when the server reports NULL (a dead thread):
	// unknown must never read as "not behind".
	SecondsBehind *int64
	SQLDelay      int64
	// ConnectRetry is how long the receiver waits between reconnects.
	ConnectRetry time.Duration
	UsingGTID    string
	// MariaDB: Gtid_IO_Pos; MySQL: Retrieved_Gtid_Set.
	RetrievedGTID string
	// MySQL only: Executed_Gtid_Set.
	ExecutedGTID  string
	SourceLogFile string
	ReadSourcePos uint64
	ExecSourcePos uint64
}

// IOOK reports whether the receiver thread runs.
func (r *ReplicaStatus) IOOK() bool { return strings.EqualFold(r.IORunning, "Yes") }

// SQLOK reports whether the applier thread runs.
func (r *ReplicaStatus) SQLOK() bool { return strings.EqualFold(r.SQLRunning, "Yes") }

// columnAliases maps each field to the column names MariaDB, MySQL 8
// (Replica/Source vocabulary) and MySQL 5.7 use for it.
var columnAliases = map[string][]string{
	"conn":        {"Connection_name", "Channel_Name", "Channel_name"},
	"host":        {"Master_Host", "Source_Host"},
	"port":        {"Master_Port", "Source_Port"},
	"server_id":   {"Master_Server_Id", "Source_Server_Id"},
	"uuid":        {"Master_UUID", "Source_UUID"},
	"io":          {"Slave_IO_Running", "Replica_IO_Running"},
	"sql":         {"Slave_SQL_Running", "Replica_SQL_Running"},
	"io_errno":    {"Last_IO_Errno"},
	"io_error":    {"Last_IO_Error"},
	"sql_errno":   {"Last_SQL_Errno"},
	"sql_error":   {"Last_SQL_Error"},
	"behind":      {"Seconds_Behind_Master", "Seconds_Behind_Source"},
	"delay":       {"SQL_Delay"},
	"retry":       {"Connect_Retry"},
	"using_gtid":  {"Using_Gtid", "Auto_Position"},
	"retrieved":   {"Gtid_IO_Pos", "Retrieved_Gtid_Set"},
	"executed":    {"Executed_Gtid_Set"},
	"log_file":    {"Master_Log_File", "Source_Log_File"},
	"read_pos":    {"Read_Master_Log_Pos", "Read_Source_Log_Pos"},
	"exec_pos":    {"Exec_Master_Log_Pos", "Exec_Source_Log_Pos"},
	"io_state":    {"Slave_IO_State", "Replica_IO_State"},
	"sql_running": {"Slave_SQL_Running_State", "Replica_SQL_Running_State"},
}

// ParseReplicaStatus converts rows of column name → value (nil for NULL)
// into ReplicaStatus values. It fails when a row lacks the thread-state
// columns: parsing anything else than a replica status must not pass as
// "no replication".
func ParseReplicaStatus(rows []map[string]*string) ([]ReplicaStatus, error) {
	out := make([]ReplicaStatus, 0, len(rows))
	for i, row := range rows {
		get := func(field string) (*string, bool) {
			for _, name := range columnAliases[field] {
				if v, ok := row[name]; ok {
					return v, true
				}
			}
			return nil, false
		}
		str := func(field string) string {
			if v, ok := get(field); ok && v != nil {
				return *v
			}
			return ""
		}
		num := func(field string) int64 {
			n, _ := strconv.ParseInt(strings.TrimSpace(str(field)), 10, 64)
			return n
		}
		io, okIO := get("io")
		sqlRun, okSQL := get("sql")
		if !okIO || !okSQL {
			return nil, fmt.Errorf("replica status row %d has no IO/SQL thread state column (columns: %s)", i, columnList(row))
		}
		r := ReplicaStatus{
			ConnectionName: str("conn"),
			SourceHost:     str("host"),
			SourcePort:     int(num("port")),
			SourceServerID: uint32(num("server_id")),
			SourceUUID:     str("uuid"),
			IORunning:      deref(io),
			SQLRunning:     deref(sqlRun),
			LastIOErrno:    int(num("io_errno")),
			LastIOError:    str("io_error"),
			LastSQLErrno:   int(num("sql_errno")),
			LastSQLError:   str("sql_error"),
			SQLDelay:       num("delay"),
			ConnectRetry:   time.Duration(num("retry")) * time.Second,
			UsingGTID:      str("using_gtid"),
			RetrievedGTID:  compactGTID(str("retrieved")),
			ExecutedGTID:   compactGTID(str("executed")),
			SourceLogFile:  str("log_file"),
			ReadSourcePos:  uint64(num("read_pos")),
			ExecSourcePos:  uint64(num("exec_pos")),
		}
		if v, ok := get("behind"); ok && v != nil && *v != "" {
			n, err := strconv.ParseInt(*v, 10, 64)
			if err == nil {
				r.SecondsBehind = &n
			}
		}
		out = append(out, r)
	}
	return out, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// compactGTID removes the newlines MySQL puts into long GTID sets.
func compactGTID(s string) string {
	return strings.Join(strings.Fields(s), "")
}

func columnList(row map[string]*string) string {
	names := make([]string, 0, len(row))
	for k := range row {
		names = append(names, k)
	}
	return strings.Join(names, ",")
}

// scanRows reads every row of rows as column name → value.
func scanRows(rows *sql.Rows) ([]map[string]*string, error) {
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	var out []map[string]*string
	for rows.Next() {
		vals := make([]sql.RawBytes, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		row := make(map[string]*string, len(cols))
		for i, c := range cols {
			if vals[i] == nil {
				row[c] = nil
				continue
			}
			s := string(vals[i])
			row[c] = &s
		}
		out = append(out, row)
	}
	return out, rows.Err()
}

// BinlogStatus is SHOW MASTER STATUS / SHOW BINARY LOG STATUS.
type BinlogStatus struct {
	File         string
	Position     uint64
	ExecutedGTID string // MySQL only
}

// ParseBinlogStatus reads the first row; an empty result means binary
// logging is off.
func ParseBinlogStatus(rows []map[string]*string) (BinlogStatus, bool) {
	if len(rows) == 0 {
		return BinlogStatus{}, false
	}
	row := rows[0]
	var b BinlogStatus
	if v := row["File"]; v != nil {
		b.File = *v
	}
	if v := row["Position"]; v != nil {
		b.Position, _ = strconv.ParseUint(*v, 10, 64)
	}
	if v := row["Executed_Gtid_Set"]; v != nil {
		b.ExecutedGTID = compactGTID(*v)
	}
	return b, true
}

var (
	mariaGTIDInError = regexp.MustCompile(`\bGTID (\d+-\d+-\d+)\b`)
	mysqlGTIDInError = regexp.MustCompile(`transaction '([0-9a-fA-F-]{36}:(?:[a-z_][a-z0-9_]*:)?\d+)'`)
)

// FailingGTIDFromError extracts the GTID a replication error names, if the
// server put one in its text (MySQL always does for applier errors; MariaDB
// with parallel replication).
func FailingGTIDFromError(text string) string {
	if m := mysqlGTIDInError.FindStringSubmatch(text); m != nil {
		return m[1]
	}
	if m := mariaGTIDInError.FindStringSubmatch(text); m != nil {
		return m[1]
	}
	return ""
}
