package dbrepl

import (
	"fmt"
	"strings"
)

// MonitorGrants is the minimal privilege list of the supervisor's
// monitoring user on MariaDB 10.11 (%[1]s is the account, e.g.
// 'lockstep'@'%'), and why each one is needed:
//
//   - BINLOG MONITOR (alias REPLICATION CLIENT): SHOW MASTER STATUS.
//   - SLAVE MONITOR: SHOW ALL SLAVES STATUS (required since 10.5.9).
//   - READ_ONLY ADMIN: SET GLOBAL read_only, and writing the heartbeat on a
//     fenced node (since 10.11 SUPER no longer implies it).
//   - CONNECTION ADMIN + PROCESS: list and KILL client sessions on fence.
//   - REPLICATION SLAVE: the write-conflict detector (dbrepl/conflict)
//     reads both nodes' binlogs as a replica would (COM_BINLOG_DUMP). The
//     pair's own replication still uses its own user. Primary keys come
//     from the binlog with binlog_row_metadata=FULL; otherwise from
//     information_schema, which hides tables this user has no privilege
//     on.
//   - CREATE, INSERT, UPDATE, SELECT, DELETE on lockstep.*: the heartbeat
//     table.
const MonitorGrants = "GRANT BINLOG MONITOR, SLAVE MONITOR, READ_ONLY ADMIN, CONNECTION ADMIN, PROCESS, REPLICATION SLAVE ON *.* TO %[1]s;\n" +
	"GRANT CREATE, INSERT, UPDATE, SELECT, DELETE ON lockstep.* TO %[1]s"

// MonitorGrantStatements returns MonitorGrants for account as separate
// statements, ready to execute one by one.
func MonitorGrantStatements(account string) []string {
	return strings.Split(fmt.Sprintf(MonitorGrants, account), ";\n")
}
