package dbrepl

import "time"

// Verdicts of a pair, from best to worst. They are part of the stable
// `lockstep repl status --json` document.
const (
	VerdictHealthy    = "healthy"
	VerdictDegraded   = "degraded"
	VerdictFenced     = "fenced" // rendered as "fenced <node>"
	VerdictBroken     = "broken"
	VerdictSplitBrain = "split-brain risk"
)

// NodeStatus is one node as seen by the supervisor. The JSON names are a
// documented, stable interface (README, `repl status --json`, the
// orchestrator's /status): add fields, never rename them.
type NodeStatus struct {
	Name        string `json:"name"`
	Address     string `json:"address"`
	Reachable   bool   `json:"reachable"`
	Error       string `json:"error,omitempty"` // why it is unreachable or unreadable
	Writable    bool   `json:"writable"`
	ReadOnly    bool   `json:"read_only"`
	Fenced      bool   `json:"fenced"`
	FenceReason string `json:"fence_reason,omitempty"`
	FenceManual bool   `json:"fence_manual,omitempty"`
	IORunning   bool   `json:"io_running"`
	SQLRunning  bool   `json:"sql_running"`
	// LagSeconds is the heartbeat lag of this node behind its peer; nil
	// when unknown (never reported as 0 when it cannot be measured).
	LagSeconds *float64 `json:"lag_seconds"`
	// SecondsBehindMaster as the server reports it; nil for NULL.
	SecondsBehindMaster *int64 `json:"seconds_behind_master"`
	// BehindTrx counts the peer's transactions this node has not applied.
	BehindTrx      *int64    `json:"behind_trx"`
	GTIDBinlogPos  string    `json:"gtid_binlog_pos"`
	GTIDSlavePos   string    `json:"gtid_slave_pos"`
	GTIDCurrentPos string    `json:"gtid_current_pos"`
	BinlogFile     string    `json:"binlog_file"`
	BinlogPos      uint64    `json:"binlog_pos"`
	LastErrno      int       `json:"last_errno,omitempty"`
	LastError      string    `json:"last_error"`
	LastErrorGTID  string    `json:"last_error_gtid,omitempty"`
	HeartbeatAge   *float64  `json:"heartbeat_age_seconds"`
	ObservedAt     time.Time `json:"observed_at"`

	// Added by the supervisor (issue 3).
	Flavor       string `json:"flavor,omitempty"`        // mariadb | mysql
	GTIDExecuted string `json:"gtid_executed,omitempty"` // MySQL
	// GTIDRetrieved: what the receiver fetched (MariaDB Gtid_IO_Pos,
	// MySQL Retrieved_Gtid_Set).
	GTIDRetrieved string     `json:"gtid_retrieved,omitempty"`
	ErrantGTIDs   []string   `json:"errant_gtids,omitempty"`
	FenceSince    *time.Time `json:"fence_since,omitempty"`

	// FenceRecordIgnored: the node's fence record belongs to another
	// server (see FenceRecord.Foreign) and is not enforced; why.
	FenceRecordIgnored string `json:"fence_record_ignored,omitempty"`
	// FenceDisagrees: the fence record and the server's actual read_only
	// disagree (a fenced node found writable), said in words.
	FenceDisagrees string `json:"fence_disagrees,omitempty"`
}

// PairStatus is the whole pair: what `repl status` shows and what the
// orchestrator reads.
type PairStatus struct {
	Verdict    string       `json:"verdict"`
	FencedNode string       `json:"fenced_node,omitempty"`
	Nodes      []NodeStatus `json:"nodes"`
	Problems   []string     `json:"problems,omitempty"`
	Conflicts  []Conflict   `json:"conflicts,omitempty"`
	// Observer: this supervisor is inactive (not the cluster writer's) and
	// leaves automatic fencing to the active one (Supervisor.SetActive).
	Observer    bool      `json:"observer,omitempty"`
	GeneratedAt time.Time `json:"generated_at"`
}

// Conflict is one primary key written by both origins within the
// replication window.
type Conflict struct {
	Schema     string    `json:"schema"`
	Table      string    `json:"table"`
	PrimaryKey string    `json:"primary_key"`
	Origins    []string  `json:"origins"` // node names (or server ids when unknown)
	GTIDs      []string  `json:"gtids"`
	FirstSeen  time.Time `json:"first_seen"`
	LastSeen   time.Time `json:"last_seen"`
}
