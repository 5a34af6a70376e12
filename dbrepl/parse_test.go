package dbrepl_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/config"
	"github.com/lockstep-ha/lockstep/dbrepl"
)

func strp(s string) *string { return &s }

// row builds a status row; "NULL" becomes a SQL NULL.
func row(kv ...string) map[string]*string {
	m := map[string]*string{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "NULL" {
			m[kv[i]] = nil
		} else {
			m[kv[i]] = strp(kv[i+1])
		}
	}
	return m
}

// MySQL 8.0.22+ SHOW REPLICA STATUS, columns as documented (Replica/Source
// vocabulary), captured shape of an applier stopped on a duplicate key.
var mysql8ReplicaStatus = row(
	"Replica_IO_State", "Waiting for source to send event",
	"Source_Host", "10.0.0.1", "Source_User", "repl", "Source_Port", "3306", "Connect_Retry", "60",
	"Source_Log_File", "binlog.000003", "Read_Source_Log_Pos", "2345",
	"Relay_Log_File", "relay.000002", "Relay_Log_Pos", "1200", "Relay_Source_Log_File", "binlog.000003",
	"Replica_IO_Running", "Yes", "Replica_SQL_Running", "No",
	"Replicate_Do_DB", "", "Replicate_Ignore_DB", "", "Last_Errno", "1062",
	"Last_Error", "Coordinator stopped because there were error(s) in the worker(s). The most recent failure being: Worker 1 failed executing transaction '3e11fa47-71ca-11e1-9e33-c80aa9429562:25' at source log binlog.000003, end_log_pos 1234. See error log and/or performance_schema.replication_applier_status_by_worker table for more details about this failure or others, if any.",
	"Skip_Counter", "0", "Exec_Source_Log_Pos", "1100", "Relay_Log_Space", "3000",
	"Seconds_Behind_Source", "NULL",
	"Last_IO_Errno", "0", "Last_IO_Error", "",
	"Last_SQL_Errno", "1062",
	"Last_SQL_Error", "Coordinator stopped because there were error(s) in the worker(s). The most recent failure being: Worker 1 failed executing transaction '3e11fa47-71ca-11e1-9e33-c80aa9429562:25' at source log binlog.000003, end_log_pos 1234. See error log and/or performance_schema.replication_applier_status_by_worker table for more details about this failure or others, if any.",
	"Replicate_Ignore_Server_Ids", "", "Source_Server_Id", "1",
	"Source_UUID", "3e11fa47-71ca-11e1-9e33-c80aa9429562", "Source_Info_File", "mysql.slave_master_info",
	"SQL_Delay", "0", "SQL_Remaining_Delay", "NULL", "Replica_SQL_Running_State", "",
	"Retrieved_Gtid_Set", "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-30",
	"Executed_Gtid_Set", "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-24,\n8a94f357-aab4-11df-86ab-c80aa9429562:1-10",
	"Auto_Position", "1", "Channel_Name", "", "Network_Namespace", "",
)

// MySQL 5.7 / 8.0 before 8.0.22: SHOW SLAVE STATUS vocabulary.
var mysql57SlaveStatus = row(
	"Slave_IO_State", "Connecting to master", "Master_Host", "10.0.0.2", "Master_Port", "3306",
	"Slave_IO_Running", "Connecting", "Slave_SQL_Running", "Yes",
	"Seconds_Behind_Master", "0", "Last_IO_Errno", "2003",
	"Last_IO_Error", "error connecting to master 'repl@10.0.0.2:3306' - retry-time: 60 retries: 1",
	"Last_SQL_Errno", "0", "Last_SQL_Error", "", "Master_Server_Id", "2",
	"Master_UUID", "8a94f357-aab4-11df-86ab-c80aa9429562",
	"Retrieved_Gtid_Set", "", "Executed_Gtid_Set", "8a94f357-aab4-11df-86ab-c80aa9429562:1-10", "Auto_Position", "1",
	"Channel_Name", "",
)

// MariaDB 10.11 SHOW ALL SLAVES STATUS (subset, real column names).
var mariaAllSlaves = row(
	"Connection_name", "", "Slave_SQL_State", "", "Slave_IO_State", "",
	"Master_Host", "127.0.0.1", "Master_Port", "3307",
	"Master_Log_File", "db2-bin.000001", "Read_Master_Log_Pos", "4521",
	"Slave_IO_Running", "No", "Slave_SQL_Running", "No",
	"Last_Errno", "1032", "Exec_Master_Log_Pos", "4000",
	"Seconds_Behind_Master", "NULL",
	"Last_IO_Errno", "0", "Last_IO_Error", "",
	"Last_SQL_Errno", "1032",
	"Last_SQL_Error", "Could not execute Update_rows_v1 event on table app.t; Can't find record in 't', Error_code: 1032; handler error HA_ERR_KEY_NOT_FOUND; the event's master log db2-bin.000001, end_log_pos 4490",
	"Master_Server_Id", "2", "Using_Gtid", "Slave_Pos", "Gtid_IO_Pos", "2-2-40,1-1-12",
	"SQL_Delay", "0", "Retried_transactions", "0",
)

func TestParseReplicaStatusMySQL8(t *testing.T) {
	rs, err := dbrepl.ParseReplicaStatus([]map[string]*string{mysql8ReplicaStatus})
	if err != nil {
		t.Fatal(err)
	}
	r := rs[0]
	if !r.IOOK() || r.SQLOK() {
		t.Errorf("io=%q sql=%q", r.IORunning, r.SQLRunning)
	}
	if r.SecondsBehind != nil {
		t.Errorf("Seconds_Behind_Source NULL parsed as %d; must stay unknown", *r.SecondsBehind)
	}
	if r.LastSQLErrno != 1062 || r.SourceServerID != 1 || r.SourceHost != "10.0.0.1" || r.SourcePort != 3306 {
		t.Errorf("parsed %+v", r)
	}
	if r.ExecutedGTID != "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-24,8a94f357-aab4-11df-86ab-c80aa9429562:1-10" {
		t.Errorf("executed set not compacted: %q", r.ExecutedGTID)
	}
	if got := dbrepl.FailingGTIDFromError(r.LastSQLError); got != "3e11fa47-71ca-11e1-9e33-c80aa9429562:25" {
		t.Errorf("failing GTID %q", got)
	}
}

func TestParseReplicaStatusMySQL57AndMariaDB(t *testing.T) {
	rs, err := dbrepl.ParseReplicaStatus([]map[string]*string{mysql57SlaveStatus, mariaAllSlaves})
	if err != nil {
		t.Fatal(err)
	}
	my, ma := rs[0], rs[1]
	if my.IORunning != "Connecting" || my.IOOK() || my.LastIOErrno != 2003 || my.SourceUUID != "8a94f357-aab4-11df-86ab-c80aa9429562" {
		t.Errorf("5.7 row: %+v", my)
	}
	if my.SecondsBehind == nil || *my.SecondsBehind != 0 {
		t.Errorf("Seconds_Behind_Master 0 must parse as 0, got %v", my.SecondsBehind)
	}
	if ma.SQLOK() || ma.LastSQLErrno != 1032 || ma.SourceServerID != 2 || ma.RetrievedGTID != "2-2-40,1-1-12" || ma.UsingGTID != "Slave_Pos" {
		t.Errorf("MariaDB row: %+v", ma)
	}
	if ma.SecondsBehind != nil {
		t.Error("NULL Seconds_Behind_Master parsed as a number")
	}
	if got := dbrepl.FailingGTIDFromError("... end_log_pos 3054; GTID 1-1-7 ..."); got != "1-1-7" {
		t.Errorf("MariaDB GTID in error: %q", got)
	}
	if _, err := dbrepl.ParseReplicaStatus([]map[string]*string{row("Variable_name", "x")}); err == nil {
		t.Error("a row without thread columns parsed as replica status")
	}
}

func TestParseBinlogStatus(t *testing.T) {
	// MySQL 8.2+ SHOW BINARY LOG STATUS.
	b, on := dbrepl.ParseBinlogStatus([]map[string]*string{row("File", "binlog.000007", "Position", "157",
		"Binlog_Do_DB", "", "Binlog_Ignore_DB", "", "Executed_Gtid_Set", "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5")})
	if !on || b.File != "binlog.000007" || b.Position != 157 || b.ExecutedGTID == "" {
		t.Errorf("%+v %v", b, on)
	}
	if _, on := dbrepl.ParseBinlogStatus(nil); on {
		t.Error("empty result means binlog off")
	}
}

func TestGTIDMath(t *testing.T) {
	const a, b, c = "3e11fa47-71ca-11e1-9e33-c80aa9429562", "8a94f357-aab4-11df-86ab-c80aa9429562", "11111111-2222-3333-4444-555555555555"
	n, err := dbrepl.MySQLBehind(a+":1-30,\n"+b+":1-10", a+":1-25:27,"+b+":1-10", a)
	if err != nil || n != 4 {
		t.Errorf("MySQLBehind = %d, %v; want 4 (26, 28, 29, 30)", n, err)
	}
	errant, err := dbrepl.MySQLErrant(b+":1-10,"+c+":1-3,"+a+":1-31", b, a+":1-30,"+b+":1-10")
	if err != nil || !reflect.DeepEqual(errant, []string{c + " (3 trx)", a + " (1 trx)"}) {
		t.Errorf("MySQLErrant = %v, %v", errant, err)
	}
	if got := dbrepl.MySQLExecutedCount(a + ":1-30:40," + b + ":1-10"); got != 41 {
		t.Errorf("count %d", got)
	}

	m, err := dbrepl.MariaDBBehind("1-1-120,2-2-40", "1-1-100,2-2-40", 1)
	if err != nil || m != 20 {
		t.Errorf("MariaDBBehind = %d, %v", m, err)
	}
	if m, _ := dbrepl.MariaDBBehind("1-1-100", "1-1-101,2-2-3", 1); m != 0 {
		t.Errorf("replica sampled later must not be negative: %d", m)
	}
	if _, err := dbrepl.MariaDBBehind("garbage", "", 1); err == nil {
		t.Error("garbage GTID accepted")
	}
	// db2 (domain 2) has a transaction in db1's domain db1 never logged, and
	// one in a stray domain 0 db1 lacks.
	got, err := dbrepl.MariaDBErrant("0-2-5,1-2-101,2-2-40", 2, "1-1-100,2-2-40", "0-2-3,1-1-100,2-2-40", 1)
	if err != nil || !reflect.DeepEqual(got, []string{"0-2-5", "1-2-101"}) {
		t.Errorf("MariaDBErrant = %v, %v", got, err)
	}
	if got, _ := dbrepl.MariaDBErrant("1-1-100,2-2-40", 2, "1-1-100,2-2-40", "1-1-100,2-2-40", 1); len(got) != 0 {
		t.Errorf("healthy pair has errant %v", got)
	}
}

// The config contract parses as written.
func TestConfigContract(t *testing.T) {
	yaml := `
node: web1
repl:
  interval: 250ms
  nodes:
    - name: db1
      dsn: "lockstep:${LOCKSTEP_DB_PASSWORD}@tcp(10.0.0.1:3306)/"
    - name: db2
      dsn: "lockstep:${LOCKSTEP_DB_PASSWORD}@tcp(10.0.0.2:3306)/"
  fence:
    max_lag: 5s
    unfence_lag: 1s
    unfence_hold: 10s
    kill_connections: false
  hooks:
    on_fence: /etc/lockstep/hooks/on-fence
    on_unfence: /etc/lockstep/hooks/on-unfence
`
	f, err := config.Parse("test.yaml", []byte(yaml), func(k string) (string, bool) {
		return "pw", k == "LOCKSTEP_DB_PASSWORD"
	})
	if err != nil {
		t.Fatal(err)
	}
	r := f.Repl
	if r.Interval != 250*time.Millisecond || r.Fence.MaxLag != 5*time.Second || r.Fence.UnfenceHold != 10*time.Second ||
		r.Hooks.OnFence != "/etc/lockstep/hooks/on-fence" || r.Nodes[1].Name != "db2" || r.StateDir == "" {
		t.Errorf("parsed %+v", r)
	}
	bad := strings.Replace(yaml, "unfence_lag: 1s", "unfence_lag: 6s", 1)
	if _, err := config.Parse("test.yaml", []byte(bad), func(string) (string, bool) { return "pw", true }); err == nil ||
		!strings.Contains(err.Error(), "unfence_lag") {
		t.Errorf("unfence_lag >= max_lag accepted: %v", err)
	}
}
