// Package dbrepl supervises a MariaDB (or MySQL 8) master-master pair:
// it observes both nodes every interval, detects lag and broken
// replication, fences the lagging or broken node by making it read-only,
// and reintroduces it once it has caught up.
//
// # Seams
//
// Every poll is observe → decide → act. Observation (observe.go) reads
// both nodes and measures lag; decide (decide.go) is a pure function from
// a pairView (observations, lags, fence records, what the previous poll
// remembered) to a decision: the verdict on each node and an ordered list
// of actions; act (act.go) carries the actions out — read_only, fence
// records, hooks, events — and publish turns the verdicts into the status
// and metrics. New checks (repairing a broken applier, acting on errant
// transactions) are new steps of decide and, when they act, new action
// kinds.
//
// Run is re-entrant: it opens connections on first use and closes them
// when it returns, and each run starts from what the servers and state_dir
// say, so a daemon restarts a failed supervisor by calling Run again.
// Metrics are registered once, by New. An optional ConflictSource (the
// write-conflict detector of dbrepl/conflict) runs beside the poll loop
// for as long as Run does.
//
// # Observation
//
// Each poll reads, per node and in parallel (bounded by max(interval, 1s)
// so a hung server cannot stall the loop), in one SELECT after the
// heartbeat write on the same session: the node's clock
// (NOW(6)), read_only (and super_read_only on MySQL), auto_increment
// settings, SHOW ALL SLAVES STATUS (MariaDB) or SHOW REPLICA STATUS /
// SHOW SLAVE STATUS (MySQL) parsed by column name, SHOW MASTER STATUS /
// SHOW BINARY LOG STATUS, the GTID positions (MariaDB gtid_binlog_pos,
// gtid_slave_pos, gtid_current_pos; MySQL gtid_executed and the retrieved
// set) and the heartbeat table; then SHOW ALL SLAVES STATUS, and SHOW
// MASTER STATUS every 10 s (display only). Seconds_Behind_Master NULL
// stays nil.
//
// # What watching costs
//
// Per node and poll (1 s by default): the heartbeat INSERT, the SELECT,
// SHOW ALL SLAVES STATUS — 3 statements and 1 binlogged write a second,
// the same heartbeat rate as pt-heartbeat. The lag stays fresh between
// polls without asking the servers: see streamlag.go.
//
// # Heartbeat and lag
//
// lockstep.heartbeat has one row per origin node (origin, ts_us,
// server_id). Every poll the supervisor writes node A's row ON A, with A's
// own clock (ts_us = NOW(6) in the INSERT, read back in the same session), binlogged normally so
// it replicates in A's GTID domain. The monitoring user holds READ_ONLY
// ADMIN, so heartbeats keep flowing from a fenced node too (on MySQL,
// super_read_only blocks them: the fenced node's heartbeat write fails and
// is reported, the peer's lag is then unknown).
//
// The lag of B is the age of the oldest transaction of A that B has not
// applied, on A's clock: the supervisor remembers the (timestamp, GTID
// sequence) of the heartbeats it wrote on A; B's gtid_current_pos in A's
// domain names B's first missing transaction, whose commit time is
// interpolated between the two heartbeats around it (exact when it is a
// heartbeat). Without GTID sequences (MySQL) the first heartbeat after the
// newest one visible on B is used (error below one interval). A's clock is
// read in the same poll and converted with the supervisor's monotonic
// clock, so clock skew between the hosts never enters the figure. A
// stopped IO thread therefore shows real, growing lag, where
// Seconds_Behind_Master says 0 or NULL. heartbeat_age_seconds is the
// pt-heartbeat figure (A's now minus the newest A heartbeat visible on B).
//
// Transactions behind come from GTIDs: A's gtid_binlog_pos vs B's
// gtid_current_pos in A's domain (MariaDB), or A's own server_uuid
// intervals of gtid_executed missing from B's (MySQL).
//
// # Detection and fencing
//
//   - Lag over fence.max_lag → fence.
//   - Applier stopped on an error (1062, 1032, ...) or receiver stopped on
//     a non-connection error while the peer is reachable → fence at once,
//     with the error and the failing GTID (from the error text, or the
//     successor of gtid_slave_pos in the peer's domain).
//   - Errant transactions (GTIDs in a foreign domain the peer lacks, or in
//     the peer's domain beyond what the peer logged; MySQL: other uuids'
//     transactions the peer lacks), seen three polls in a row → reported.
//   - Both writable with replication broken both ways → "split-brain risk";
//     colliding auto_increment settings → reported.
//
// Fencing sets read_only=ON (super_read_only on MySQL) and reads it back,
// optionally kills client sessions (not replication threads, not the
// monitoring user's own), records the fence atomically in
// state_dir/fence-<node>.json and runs on_fence in the background with a
// timeout (env: LOCKSTEP_EVENT, LOCKSTEP_NODE, LOCKSTEP_PEER,
// LOCKSTEP_REASON, LOCKSTEP_MANUAL, LOCKSTEP_TIME). The last writable node
// is never fenced automatically: not when its peer is unreachable or
// read-only, and when both qualify, only the one with more transactions
// behind is fenced. A fenced node found writable again (restarted with
// read_only=OFF) is fenced again at the next poll.
//
// Two supervisors may watch the same pair (one per daemon), but only one
// should decide: two deciders can each fence a different node when both
// qualify within the same few milliseconds, leaving no writable database.
// SetActive(false) makes a supervisor an observer: it keeps polling,
// writing heartbeats and publishing status and metrics, enforces the
// manual fence records of its state_dir, and mirrors the other
// supervisor's automatic fences into its own records once the node is
// read-only (so its status says which node is fenced), but it never
// fences or reintroduces a node on its own; Fence and Unfence still act.
// A supervisor that is never told is active (`lockstep repl supervise`).
// `lockstep run` starts it inactive and the orchestrator activates the
// writer's only. On activation the unfence_hold of each fenced node
// counts anew; an automatic fence lifted by the other supervisor is
// accepted (by an active one once the node is caught up) instead of being
// re-applied. A node left read-only by a previous decider that this
// supervisor never recorded as fenced (it was not running, or the node had
// already caught up) is not reintroduced automatically: `lockstep repl
// unfence` lifts it.
//
// A node is not blamed for lacking what its peer wrote before the peer went
// down: after the peer answers again, the node's lag counts for fencing
// only from then plus its Connect_Retry (the receiver's reconnect delay).
// Set MASTER_CONNECT_RETRY low (a few seconds; the default is 60) so that
// replication resumes quickly after a peer restart.
//
// Reintroduction needs both threads running, no error and lag below
// fence.unfence_lag continuously for fence.unfence_hold. Manual fences
// (`lockstep repl fence`, Supervisor.Fence) are only lifted by hand. The
// CLI works without a daemon: it changes read_only itself and edits the
// state_dir record, which a running supervisor rereads every poll (so run
// the CLI on the host whose state_dir the supervisor uses).
//
// Fence records are bound to the server they were written for
// (FenceRecord.Foreign): server_uuid on MySQL; server_id, address and the
// GTID position of the server's domain (which never goes back on one
// server) on MariaDB. decide drops another server's record before any
// other step (actForeign: logged once, shown in the status), so such a
// record never fences, re-fences or keeps a server read-only.
//
// Repair (`lockstep repl repair`, package dbrepl/repair) is not part of
// the poll loop: it fences the target through the same manual fence
// record, so a running supervisor leaves it alone until the repair
// unfences it.
//
// # Privileges (MariaDB 10.11)
//
// MonitorGrants, with each privilege's reason:
//
//	GRANT BINLOG MONITOR, SLAVE MONITOR, READ_ONLY ADMIN, CONNECTION ADMIN, PROCESS, REPLICATION SLAVE ON *.* TO 'lockstep'@'%';
//	GRANT CREATE, INSERT, UPDATE, SELECT, DELETE ON lockstep.* TO 'lockstep'@'%';
//
// REPLICATION SLAVE is for the write-conflict detector (repl.conflicts,
// on by default): it tails both nodes' binlogs the way a replica does,
// which the server only allows with that privilege. Without it the
// supervisor works and the detector logs "binlog reader stopped,
// reconnecting ... ERROR 1045 Access denied for user 'lockstep'" every few
// seconds; set repl.conflicts.enabled: false where the grant cannot be
// given.
//
// The detector also needs each table's primary key. Set
// binlog_row_metadata=FULL on both servers so that the binlog carries it;
// otherwise it is read from information_schema, which only shows the
// tables the monitoring user holds some privilege on: without one (e.g.
// SELECT on the application schemas) a table looks keyless and is not
// watched.
//
// MySQL 8: REPLICATION CLIENT, SYSTEM_VARIABLES_ADMIN (or SUPER),
// CONNECTION_ADMIN, PROCESS, REPLICATION SLAVE and the same lockstep.*
// grants. A missing grant is reported by name for the node concerned.
package dbrepl
