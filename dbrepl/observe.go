package dbrepl

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Flavors of server.
const (
	FlavorMariaDB = "mariadb"
	FlavorMySQL   = "mysql"
)

// HeartbeatSchema is created by the supervisor on each node. One row per
// origin node: the supervisor writes the row of node A on A (so it is
// binlogged in A's domain and replicates), and reads A's row on B.
// Timestamps are microseconds since the epoch on the writer's own clock.
const HeartbeatSchema = `CREATE TABLE IF NOT EXISTS lockstep.heartbeat (
  origin VARCHAR(64) NOT NULL PRIMARY KEY,
  ts_us BIGINT NOT NULL,
  server_id INT UNSIGNED NOT NULL
) ENGINE=InnoDB`

// Observation is everything read from one node in one poll.
type Observation struct {
	Node string
	// Local is the supervisor's clock when the node's clock was read.
	Local time.Time
	// Err is set when the node could not be reached or read; Reachable
	// distinguishes "down" from "up but unreadable" (privileges).
	Err       error
	Reachable bool

	Flavor        string
	Version       string
	ServerID      uint32
	DomainID      uint32
	ServerUUID    string
	ReadOnly      bool
	SuperReadOnly bool
	AutoIncInc    int
	AutoIncOff    int

	// NodeNowUS is the node's clock (µs) read at Local.
	NodeNowUS int64

	Replicas []ReplicaStatus
	Binlog   BinlogStatus
	BinlogOn bool
	// LogReplicaUpdates: the node writes what it applies from its peer to
	// its own binlog, so the binlog stream shows its progress (stream lag).
	LogReplicaUpdates bool

	GTIDBinlogPos  string // MariaDB
	GTIDSlavePos   string // MariaDB
	GTIDCurrentPos string // MariaDB
	GTIDExecuted   string // MySQL

	// HeartbeatTS is the newest heartbeat of each origin visible on this
	// node, and HeartbeatReadLocal when that read happened.
	HeartbeatTS        map[string]int64
	HeartbeatReadLocal time.Time
	// HeartbeatWritten is the timestamp this poll wrote for this node as
	// origin (0 when the write failed; HeartbeatErr says why).
	HeartbeatWritten   int64
	HeartbeatCommitted time.Time
	HeartbeatSeq       uint64 // its GTID sequence number (MariaDB)
	HeartbeatErr       error
	// VarsLocal is when the GTID positions were read (our clock).
	VarsLocal time.Time
}

// Replica returns the replication channel from the peer (matched by
// server id or, failing that, the only channel).
func (o *Observation) Replica(peer *Observation) *ReplicaStatus {
	if o == nil || len(o.Replicas) == 0 {
		return nil
	}
	if peer != nil {
		for i := range o.Replicas {
			r := &o.Replicas[i]
			if peer.ServerID != 0 && r.SourceServerID == peer.ServerID {
				return r
			}
			if peer.ServerUUID != "" && strings.EqualFold(r.SourceUUID, peer.ServerUUID) {
				return r
			}
		}
	}
	return &o.Replicas[0]
}

// nodeConn is the supervisor's connection to one node.
type nodeConn struct {
	name      string
	addr      string
	user      string
	connector driver.Connector
	timeout   time.Duration
	logger    *slog.Logger

	// db is opened on first use and closed at the end of each Run, so
	// that a stopped supervisor holds no connection and a later Run opens
	// fresh ones.
	poolMu sync.Mutex
	db     *sql.DB

	mu       sync.Mutex
	flavor   string
	version  string
	schemaOK bool
	// The binlog file and position are only shown, never decided on:
	// they are read again every binlogRefresh, not every poll.
	binlogAt time.Time
	binlog   BinlogStatus
	binlogOn bool
}

// driverLogger routes go-sql-driver's stray messages ("unexpected EOF"
// when a server dies) to debug level instead of stderr.
type driverLogger struct{ l *slog.Logger }

func (d driverLogger) Print(v ...any) { d.l.Debug(strings.TrimSpace(fmt.Sprint(v...))) }

func openNode(nc NodeConfig, timeout time.Duration, logger *slog.Logger) (*nodeConn, error) {
	cfg, err := mysql.ParseDSN(nc.DSN)
	if err != nil {
		return nil, fmt.Errorf("%s: invalid dsn", nc.Name)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = timeout
	}
	if cfg.ReadTimeout == 0 {
		cfg.ReadTimeout = timeout
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = timeout
	}
	cfg.Logger = driverLogger{logger.With("node", nc.Name)}
	// Statements are sent as text so no prepared statements pile up.
	cfg.InterpolateParams = true
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", nc.Name, err)
	}
	addr := cfg.Addr
	if cfg.Net == "unix" {
		addr = "unix:" + cfg.Addr
	}
	return &nodeConn{name: nc.Name, addr: addr, user: cfg.User, connector: connector, timeout: timeout, logger: logger}, nil
}

// pool returns the node's connection pool, opening it if needed.
func (n *nodeConn) pool() *sql.DB {
	n.poolMu.Lock()
	defer n.poolMu.Unlock()
	if n.db == nil {
		n.db = sql.OpenDB(n.connector)
		n.db.SetMaxOpenConns(4)
		n.db.SetMaxIdleConns(2)
		n.db.SetConnMaxLifetime(10 * time.Minute)
	}
	return n.db
}

// close releases the pool; the next use opens a new one.
func (n *nodeConn) close() error {
	n.poolMu.Lock()
	db := n.db
	n.db = nil
	n.poolMu.Unlock()
	if db == nil {
		return nil
	}
	return db.Close()
}

// privilegeFor names the grant each statement needs, for error messages.
var privilegeFor = map[string]string{
	"SHOW ALL SLAVES STATUS":   "SLAVE MONITOR",
	"SHOW REPLICA STATUS":      "REPLICATION CLIENT",
	"SHOW SLAVE STATUS":        "REPLICATION CLIENT (MySQL) / SLAVE MONITOR (MariaDB)",
	"SHOW MASTER STATUS":       "BINLOG MONITOR (MariaDB) / REPLICATION CLIENT (MySQL)",
	"SHOW BINARY LOG STATUS":   "REPLICATION CLIENT",
	"heartbeat schema":         "CREATE on lockstep.*",
	"heartbeat write":          "INSERT, UPDATE on lockstep.* (and READ_ONLY ADMIN to write while fenced)",
	"heartbeat read":           "SELECT on lockstep.*",
	"SET GLOBAL read_only":     "READ_ONLY ADMIN (MariaDB 10.11+) / SUPER or SYSTEM_VARIABLES_ADMIN (MySQL)",
	"SET GLOBAL super_read_on": "SUPER or SYSTEM_VARIABLES_ADMIN",
	"PROCESSLIST":              "PROCESS",
	"KILL":                     "CONNECTION ADMIN",
}

// describe turns a driver error into one line that names the node, what
// was attempted and, for privilege errors, the missing grant. It never
// includes the DSN (which holds the password).
func (n *nodeConn) describe(what string, err error) error {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1045:
			return fmt.Errorf("%s: access denied for user %q (wrong password or user missing): %s", n.name, n.user, me.Message)
		case 1142, 1143, 1227, 1044, 1370:
			grant := privilegeFor[what]
			if grant == "" {
				grant = "see `lockstep repl` docs for the grant list"
			}
			return fmt.Errorf("%s: %s: missing privilege %s for user %q (error %d: %s)", n.name, what, grant, n.user, me.Number, me.Message)
		}
		return fmt.Errorf("%s: %s: error %d: %s", n.name, what, me.Number, me.Message)
	}
	return fmt.Errorf("%s: %s: %w", n.name, what, err)
}

// unreachable tells connection failures from statement failures.
func unreachable(err error) bool {
	if err == nil {
		return false
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number == 1045 || me.Number == 1040 || me.Number == 1129 || me.Number == 1130
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, mysql.ErrInvalidConn) || errors.Is(err, sql.ErrConnDone) ||
		strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "bad connection")
}

func (n *nodeConn) query(ctx context.Context, q string, args ...any) ([]map[string]*string, error) {
	rows, err := n.pool().QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return scanRows(rows)
}

// observePair observes both nodes in parallel and keeps the heartbeat
// history the lag is measured from.
func (s *Supervisor) observePair(ctx context.Context, snapshot bool) [2]*Observation {
	var obs [2]*Observation
	var wg sync.WaitGroup
	for i, n := range s.nodes {
		wg.Go(func() { obs[i] = n.observe(ctx, !snapshot) })
	}
	wg.Wait()
	for i, o := range obs {
		s.stream.observed(i, o)
		if o.HeartbeatWritten != 0 {
			s.rings[i].add(o.HeartbeatWritten, o.HeartbeatCommitted, o.HeartbeatSeq)
		}
		if !o.Reachable {
			s.nodes[i].forgetFlavor()
		}
	}
	return obs
}

// measureLag reads each node's lag behind its peer, on the peer's clock,
// from the heartbeats written on the peer (see lag.go). A peer whose
// heartbeat write failed gives no lag, except to a snapshot, which writes
// none.
func (s *Supervisor) measureLag(obs [2]*Observation, snapshot bool) [2]lagReading {
	var out [2]lagReading
	for i := range obs {
		o, p := obs[i], obs[1-i]
		if !o.Reachable || o.Err != nil || !p.Reachable || p.Err != nil {
			continue
		}
		in := LagInput{
			SourceNowUS: p.NodeNowUS,
			SourceLocal: p.Local,
			SourceOwnTS: p.HeartbeatTS[p.Node],
			SeenTS:      o.HeartbeatTS[p.Node],
			ReadLocal:   o.HeartbeatReadLocal,
			Interval:    s.cfg.Interval,
		}
		if o.Flavor == FlavorMariaDB && p.Flavor == FlavorMariaDB {
			in.AppliedSeq = MariaDBAppliedIn(o.GTIDCurrentPos, p.DomainID)
			in.AppliedLocal = o.VarsLocal
		}
		lag, age, ok := s.rings[1-i].lag(in)
		if ok && (snapshot || p.HeartbeatErr == nil) {
			out[i] = lagReading{lag: &lag, age: &age}
		}
		if p.Flavor == FlavorMariaDB && !snapshot {
			// The binlog streams time the first missing transaction
			// itself, where the heartbeats only bracket it.
			if sl, ok := s.stream.lag(i, p.DomainID); ok {
				out[i].lag = &sl
			}
		}
	}
	return out
}

// serverFlavor returns the flavor and version of the server, asking it
// only when not known yet (forgetFlavor clears them).
func (n *nodeConn) serverFlavor(ctx context.Context, db *sql.DB) (flavor, version string, err error) {
	n.mu.Lock()
	flavor, version = n.flavor, n.version
	n.mu.Unlock()
	if flavor != "" {
		return flavor, version, nil
	}
	if err := db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&version); err != nil {
		return "", "", err
	}
	flavor = FlavorMySQL
	if strings.Contains(strings.ToLower(version), "mariadb") {
		flavor = FlavorMariaDB
	}
	n.mu.Lock()
	n.flavor, n.version = flavor, version
	n.mu.Unlock()
	return flavor, version, nil
}

// observe reads one node; hbOrigin is the node's name as heartbeat origin
// and writeHB says whether to write a heartbeat in this poll.
func (n *nodeConn) observe(ctx context.Context, writeHB bool) *Observation {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	o := &Observation{Node: n.name}
	fail := func(what string, err error) *Observation {
		o.Err = n.describe(what, err)
		o.Reachable = o.Reachable || !unreachable(err)
		if o.Local.IsZero() {
			o.Local = time.Now()
		}
		return o
	}

	db := n.pool()
	flavor, version, err := n.serverFlavor(ctx, db)
	if err != nil {
		return fail("connect", err)
	}
	o.Flavor, o.Version = flavor, version

	// Two statements in one session, in this order: the heartbeat write
	// takes its timestamp from the node's own clock (NOW(6), kept in a
	// session variable), then one SELECT returns the clock, the variables,
	// the write's GTID and every heartbeat visible. The GTID variables are
	// read after the write so that no peer can have applied more of this
	// node's domain than we saw (that would look like an errant
	// transaction). Merging the reads keeps the cost of watching at a few
	// statements per poll (see doc.go, "What watching costs").
	conn, err := db.Conn(ctx)
	if err != nil {
		return fail("connect", err)
	}
	defer conn.Close()
	if writeHB {
		o.HeartbeatErr = n.writeHeartbeat(ctx, db, conn)
		if o.HeartbeatErr == nil {
			o.HeartbeatCommitted = time.Now()
		}
	}
	o.VarsLocal = time.Now()
	o.HeartbeatReadLocal = o.VarsLocal
	hb, serr := n.readVars(ctx, conn, o, writeHB && o.HeartbeatErr == nil)
	if serr != nil {
		return fail(serr.what, serr.err)
	}
	o.Reachable = true
	if o.HeartbeatErr == nil && writeHB {
		o.HeartbeatWritten, o.HeartbeatSeq = hb.written, hb.seq
		if o.HeartbeatWritten == 0 {
			o.HeartbeatErr = n.describe("heartbeat write", errors.New("the written timestamp could not be read back"))
		}
	}

	if err := n.readReplicas(ctx, o); err != nil {
		return fail(err.what, err.err)
	}
	if err := n.readBinlog(ctx, o); err != nil {
		return fail(err.what, err.err)
	}
	return o
}

type stepError struct {
	what string
	err  error
}

func (n *nodeConn) readReplicas(ctx context.Context, o *Observation) *stepError {
	var stmts []string
	if o.Flavor == FlavorMariaDB {
		stmts = []string{"SHOW ALL SLAVES STATUS"}
	} else {
		stmts = []string{"SHOW REPLICA STATUS", "SHOW SLAVE STATUS"}
	}
	var lastErr error
	for _, s := range stmts {
		rows, err := n.query(ctx, s)
		if err != nil {
			var me *mysql.MySQLError
			if errors.As(err, &me) && me.Number == 1064 { // syntax: older server
				lastErr = err
				continue
			}
			return &stepError{s, err}
		}
		rs, err := ParseReplicaStatus(rows)
		if err != nil {
			return &stepError{s, err}
		}
		o.Replicas = rs
		return nil
	}
	return &stepError{stmts[0], lastErr}
}

func (n *nodeConn) readBinlog(ctx context.Context, o *Observation) *stepError {
	if n.cachedBinlog(o) {
		return nil
	}
	stmts := []string{"SHOW MASTER STATUS"}
	if o.Flavor == FlavorMySQL {
		stmts = []string{"SHOW BINARY LOG STATUS", "SHOW MASTER STATUS"}
	}
	var lastErr error
	for _, s := range stmts {
		rows, err := n.query(ctx, s)
		if err != nil {
			var me *mysql.MySQLError
			if errors.As(err, &me) && me.Number == 1064 {
				lastErr = err
				continue
			}
			return &stepError{s, err}
		}
		o.Binlog, o.BinlogOn = ParseBinlogStatus(rows)
		n.keepBinlog(o)
		return nil
	}
	return &stepError{stmts[0], lastErr}
}

// forgetFlavor makes the next poll re-detect the server (it may have been
// upgraded or replaced while unreachable).
func (n *nodeConn) forgetFlavor() {
	n.mu.Lock()
	n.flavor = ""
	n.schemaOK = false
	n.binlogAt = time.Time{}
	n.mu.Unlock()
}
