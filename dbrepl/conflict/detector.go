// Package conflict watches both nodes' binlogs and flags rows written on
// both sides of a master-master pair before either side had applied the
// other's write: the writes that silently diverge the copies, or stop
// replication with error 1062 or 1032.
//
// A Detector plugs into the supervisor as its dbrepl.ConflictSource and
// runs as long as the supervisor's Run does. The binlog library's own log
// records are routed through the detector's slog logger at debug level.
package conflict

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lockstep-ha/lockstep/dbrepl"
)

// The configuration lives in dbrepl (the `repl.conflicts:` section); these
// names keep the package's own API.
const (
	DefaultWindow          = dbrepl.DefaultConflictWindow
	DefaultMaxKeysPerTable = dbrepl.DefaultConflictMaxKeysPerTable
	DefaultMaxTables       = dbrepl.DefaultConflictMaxTables
	recentConflicts        = 100
	maxBackoff             = 10 * time.Second
)

// Config is the detector's configuration, the `repl.conflicts:` section.
// Enabled is the caller's business: New builds a detector either way.
type Config = dbrepl.ConflictConfig

// Source is one node to watch. The DSN's user needs REPLICATION SLAVE
// (to read the binlog) and SELECT on information_schema.
type Source struct {
	Name string
	DSN  string
}

// Detector tails both nodes' binlogs. Create with New, then Run.
type Detector struct {
	cfg        Config
	src        [2]Source
	dsn        [2]*mysql.Config
	log        *slog.Logger
	tracker    *Tracker
	onConflict func(dbrepl.Conflict)

	conflicts prometheus.Counter
	keys      prometheus.GaugeFunc

	mu        sync.Mutex
	recent    []dbrepl.Conflict
	connected [2]bool
	gtids     dbrepl.GTIDStream
}

// SetGTIDStream makes the readers report every GTID they see, and their
// (re)connections, to g: the supervisor follows the lag between its polls
// on them. Call before Run.
func (d *Detector) SetGTIDStream(g dbrepl.GTIDStream) {
	d.mu.Lock()
	d.gtids = g
	d.mu.Unlock()
}

func (d *Detector) gtidStream() dbrepl.GTIDStream {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.gtids
}

// Connected reports whether each node's binlog reader is streaming.
func (d *Detector) Connected() [2]bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.connected
}

func (d *Detector) setConnected(i int, v bool) {
	d.mu.Lock()
	d.connected[i] = v
	d.mu.Unlock()
}

// New validates the configuration and registers the metrics on reg
// (nil: not registered). onConflict, if set, is called from the reader
// goroutines for every new conflict and must not block.
func New(cfg Config, sources [2]Source, reg prometheus.Registerer, logger *slog.Logger, onConflict func(dbrepl.Conflict)) (*Detector, error) {
	// Copy the slice so that SetDefaults' append never writes into the
	// caller's backing array.
	cfg.IgnoreSchemas = slices.Clone(cfg.IgnoreSchemas)
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ServerID == 0 {
		// Random, and far above the small ids servers usually get: the
		// daemons of both nodes each run a detector against both servers.
		cfg.ServerID = 1<<30 + rand.Uint32N(1<<30)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	d := &Detector{
		cfg: cfg, src: sources, onConflict: onConflict,
		log:     logger.With("component", "conflict"),
		tracker: NewTracker(cfg.Window, cfg.MaxKeysPerTable, cfg.MaxTables),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lockstep_repl_conflicts_total",
			Help: "Rows written on both nodes before either had applied the other's write.",
		}),
	}
	d.keys = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "lockstep_repl_conflict_window_keys",
		Help: "Row keys held in the conflict detector's window.",
	}, func() float64 { return float64(d.tracker.Entries()) })
	for i, s := range sources {
		if s.Name == "" {
			return nil, fmt.Errorf("node %d: name required", i)
		}
		c, err := mysql.ParseDSN(s.DSN)
		if err != nil {
			return nil, fmt.Errorf("node %s: not a valid DSN", s.Name)
		}
		d.dsn[i] = c
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{d.conflicts, d.keys} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return d, nil
}

// Recent returns the latest conflicts, oldest first.
func (d *Detector) Recent() []dbrepl.Conflict {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.recent)
}

// Tracker exposes the window, for memory checks.
func (d *Detector) Tracker() *Tracker { return d.tracker }

// Run tails both nodes until ctx is cancelled. A node that is down or
// drops the connection is retried with backoff; Run only returns when
// ctx ends.
func (d *Detector) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for i := range d.src {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.tail(ctx, i)
		}()
	}
	wg.Wait()
	return nil
}

func (d *Detector) emit(c dbrepl.Conflict) {
	c.Origins = []string{d.src[0].Name, d.src[1].Name}
	d.conflicts.Inc()
	d.mu.Lock()
	d.recent = append(d.recent, c)
	if len(d.recent) > recentConflicts {
		d.recent = slices.Delete(d.recent, 0, len(d.recent)-recentConflicts)
	}
	d.mu.Unlock()
	d.log.Warn("write conflict: row written on both nodes concurrently",
		"table", c.Schema+"."+c.Table, "key", c.PrimaryKey, "gtids", strings.Join(c.GTIDs, " "))
	if d.onConflict != nil {
		d.onConflict(c)
	}
}

// tail owns one node's reader: it reconnects until ctx ends.
func (d *Detector) tail(ctx context.Context, i int) {
	log := d.log.With("node", d.src[i].Name)
	db, err := sql.Open("mysql", d.dsn[i].FormatDSN())
	if err != nil {
		log.Error("open", "err", err)
		return
	}
	defer db.Close()
	db.SetMaxOpenConns(2)
	st := &stream{d: d, node: i, db: db, log: log, pk: map[[2]string]*pkInfo{}}
	backoff := time.Second
	for ctx.Err() == nil {
		began := time.Now()
		err := st.run(ctx)
		if ctx.Err() != nil {
			return
		}
		var me *gomysql.MyError
		if errors.As(err, &me) && me.Code == gomysql.ER_MASTER_FATAL_ERROR_READING_BINLOG {
			// The position is gone (binlogs purged, or lost in a crash):
			// resume from the server's current position instead of
			// retrying a position that can never be served.
			log.Warn("binlog position not available on the server, resuming from its current position", "err", err)
			st.pos = nil
		}
		log.Warn("binlog reader stopped, reconnecting", "err", err, "in", backoff)
		if time.Since(began) > maxBackoff {
			backoff = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// stream is the state of one node's reader across reconnects.
type stream struct {
	d      *Detector
	node   int
	db     *sql.DB
	log    *slog.Logger
	server uint32
	pos    *gomysql.MariadbGTIDSet
	cur    GTID
	pk     map[[2]string]*pkInfo
}

type pkInfo struct {
	cols  []int
	names []string
}

func (s *stream) run(ctx context.Context) error {
	var server uint32
	var binlogPos string
	if err := s.db.QueryRowContext(ctx, "SELECT @@server_id, @@gtid_binlog_pos").Scan(&server, &binlogPos); err != nil {
		return err
	}
	s.server = server
	if s.pos == nil {
		set, err := gomysql.ParseMariadbGTIDSet(binlogPos)
		if err != nil {
			return fmt.Errorf("gtid_binlog_pos %q: %w", binlogPos, err)
		}
		s.pos = set.(*gomysql.MariadbGTIDSet)
		for _, g := range strings.Split(binlogPos, ",") {
			if gt, err := gomysql.ParseMariadbGTID(strings.TrimSpace(g)); err == nil && g != "" {
				s.d.tracker.Seen(s.node, GTID{gt.DomainID, gt.ServerID, gt.SequenceNumber})
			}
		}
	}
	sc, err := syncerConfig(s.d.dsn[s.node], s.d.cfg.ServerID, s.log)
	if err != nil {
		return err
	}
	syncer := replication.NewBinlogSyncer(sc)
	defer syncer.Close()
	streamer, err := syncer.StartSyncGTID(s.pos.Clone())
	if err != nil {
		return err
	}
	s.d.setConnected(s.node, true)
	defer s.d.setConnected(s.node, false)
	gs := s.d.gtidStream()
	if gs != nil {
		gs.StreamStarted(s.node, binlogPos)
		defer gs.StreamStopped(s.node)
	}
	s.log.Debug("reading binlog", "from", s.pos.String(), "server_id", s.server)
	for {
		ev, err := streamer.GetEvent(ctx)
		if err != nil {
			return err
		}
		switch e := ev.Event.(type) {
		case *replication.MariadbGTIDEvent:
			s.cur = GTID{e.GTID.DomainID, e.GTID.ServerID, e.GTID.SequenceNumber}
			s.d.tracker.Seen(s.node, s.cur)
			if gs != nil {
				gs.StreamGTID(s.node, e.GTID.DomainID, e.GTID.SequenceNumber)
			}
			_ = s.pos.AddSet(&e.GTID)
			if e.IsDDL() {
				// A table may have changed its key.
				clear(s.pk)
			}
		case *replication.RowsEvent:
			if err := s.rows(ctx, ev.Header, e); err != nil {
				return err
			}
		}
	}
}

func (s *stream) ignored(schema string) bool {
	return slices.Contains(s.d.cfg.IgnoreSchemas, schema)
}

func (s *stream) rows(ctx context.Context, h *replication.EventHeader, e *replication.RowsEvent) error {
	schema, table := string(e.Table.Schema), string(e.Table.Table)
	if s.ignored(schema) {
		return nil
	}
	pk, err := s.primaryKey(ctx, e.Table)
	if err != nil {
		return err
	}
	if pk == nil {
		return nil // no primary key: rows have no identity to compare
	}
	origin := 1 - s.node
	if h.ServerID == s.server {
		origin = s.node
	}
	at := time.Unix(int64(h.Timestamp), 0)
	now := time.Now()
	record := func(row []any) {
		w := Write{Schema: schema, Table: table, Key: pk.render(row), Node: s.node, Origin: origin, GTID: s.cur, At: at}
		if c, ok := s.d.tracker.Record(w, s.server, now); ok {
			s.d.emit(c)
		}
	}
	if e.Type() == replication.EnumRowsEventTypeUpdate {
		for j := 0; j+1 < len(e.Rows); j += 2 {
			record(e.Rows[j])
			if before, after := pk.render(e.Rows[j]), pk.render(e.Rows[j+1]); before != after {
				record(e.Rows[j+1])
			}
		}
		return nil
	}
	for _, row := range e.Rows {
		record(row)
	}
	return nil
}

func (p *pkInfo) render(row []any) string {
	parts := make([]string, len(p.cols))
	for i, c := range p.cols {
		var v any
		if c < len(row) {
			v = row[c]
		}
		parts[i] = p.names[i] + "=" + renderValue(v)
	}
	return strings.Join(parts, ",")
}

func renderValue(v any) string {
	switch x := v.(type) {
	case nil:
		return "NULL"
	case []byte:
		return string(x)
	case string:
		return x
	default:
		return fmt.Sprint(x)
	}
}

// primaryKey is lookupPK, cached per table until the next DDL.
func (s *stream) primaryKey(ctx context.Context, tm *replication.TableMapEvent) (*pkInfo, error) {
	k := [2]string{string(tm.Schema), string(tm.Table)}
	if p, ok := s.pk[k]; ok {
		return p, nil
	}
	p, err := lookupPK(ctx, s.db, tm)
	if err == nil && p == nil {
		// Said once per table and DDL: a key hidden by missing privileges
		// looks exactly like no key, and silence would hide every
		// conflict on that table.
		s.log.Warn("table has no primary key visible to the detector; its writes are not checked for conflicts (set binlog_row_metadata=FULL on both servers, or grant the monitoring user SELECT on the table)",
			"schema", k[0], "table", k[1])
	}
	if err != nil {
		return nil, err
	}
	s.pk[k] = p
	return p, nil
}

// lookupPK returns the key columns of a table as row-image indexes, from
// the table map's metadata when the server logs it
// (binlog_row_metadata=FULL), else from information_schema; nil when the
// table has no primary key.
func lookupPK(ctx context.Context, db *sql.DB, tm *replication.TableMapEvent) (*pkInfo, error) {
	if len(tm.PrimaryKey) > 0 && len(tm.ColumnName) > 0 {
		p := &pkInfo{}
		names := tm.ColumnNameString()
		for _, c := range tm.PrimaryKey {
			p.cols = append(p.cols, int(c))
			p.names = append(p.names, names[c])
		}
		return p, nil
	}
	schema, table := string(tm.Schema), string(tm.Table)
	rows, err := db.QueryContext(ctx, `SELECT c.ORDINAL_POSITION, c.COLUMN_NAME
		FROM information_schema.STATISTICS s JOIN information_schema.COLUMNS c
		  ON c.TABLE_SCHEMA = s.TABLE_SCHEMA AND c.TABLE_NAME = s.TABLE_NAME AND c.COLUMN_NAME = s.COLUMN_NAME
		WHERE s.TABLE_SCHEMA = ? AND s.TABLE_NAME = ? AND s.INDEX_NAME = 'PRIMARY'
		ORDER BY s.SEQ_IN_INDEX`, schema, table)
	if err != nil {
		return nil, fmt.Errorf("primary key of %s.%s: %w", schema, table, err)
	}
	defer rows.Close()
	var p *pkInfo
	for rows.Next() {
		var pos int
		var name string
		if err := rows.Scan(&pos, &name); err != nil {
			return nil, err
		}
		if p == nil {
			p = &pkInfo{}
		}
		p.cols = append(p.cols, pos-1)
		p.names = append(p.names, name)
	}
	return p, rows.Err()
}

// debugOnly lowers every record of the binlog library to debug: it logs
// each connection, with its whole configuration, and each close at info,
// which floods the daemon's log on every reconnect. What an operator needs
// (reading, stopped, reconnecting) the detector logs itself.
type debugOnly struct{ h slog.Handler }

func (d debugOnly) Enabled(ctx context.Context, _ slog.Level) bool {
	return d.h.Enabled(ctx, slog.LevelDebug)
}

func (d debugOnly) Handle(ctx context.Context, r slog.Record) error {
	r.Level = slog.LevelDebug
	return d.h.Handle(ctx, r)
}

func (d debugOnly) WithAttrs(attrs []slog.Attr) slog.Handler { return debugOnly{d.h.WithAttrs(attrs)} }
func (d debugOnly) WithGroup(name string) slog.Handler       { return debugOnly{d.h.WithGroup(name)} }

// syncerConfig turns a go-sql-driver DSN into a binlog reader config.
func syncerConfig(cfg *mysql.Config, serverID uint32, log *slog.Logger) (replication.BinlogSyncerConfig, error) {
	sc := replication.BinlogSyncerConfig{
		ServerID: serverID,
		Flavor:   gomysql.MariaDBFlavor,
		User:     cfg.User,
		Password: cfg.Passwd,
		// Heartbeats let a dead connection be noticed by the read timeout.
		HeartbeatPeriod: time.Second,
		ReadTimeout:     5 * time.Second,
		Logger:          slog.New(debugOnly{log.Handler()}).With("component", "binlogsyncer"),
		// Reconnecting is done by the caller, from its own position, so
		// that a node that stays down does not keep a goroutine spinning
		// inside the syncer.
		DisableRetrySync: true,
	}
	if cfg.TLS != nil {
		// The binlog stream carries every row written: it uses the DSN's
		// TLS settings like every other connection to the node ("true",
		// "skip-verify", a registered config). "preferred" becomes
		// required here: the stream never falls back to plain text.
		sc.TLSConfig = cfg.TLS.Clone()
	}
	if cfg.Net == "unix" {
		sc.Host = cfg.Addr
		sc.Dialer = func(ctx context.Context, _, addr string) (net.Conn, error) {
			var nd net.Dialer
			return nd.DialContext(ctx, "unix", addr)
		}
		return sc, nil
	}
	host, port, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return sc, fmt.Errorf("address %q: %w", cfg.Addr, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return sc, fmt.Errorf("address %q: bad port", cfg.Addr)
	}
	sc.Host, sc.Port = host, uint16(p)
	return sc, nil
}

// SourcesFrom returns the two nodes of a `repl:` section as detector
// sources.
func SourcesFrom(cfg dbrepl.Config) ([2]Source, error) {
	var s [2]Source
	if len(cfg.Nodes) != 2 {
		return s, fmt.Errorf("nodes: exactly 2 nodes are required, got %d", len(cfg.Nodes))
	}
	for i, n := range cfg.Nodes {
		s[i] = Source{Name: n.Name, DSN: n.DSN}
	}
	return s, nil
}
