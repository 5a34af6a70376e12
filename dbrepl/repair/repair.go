// Package repair makes one node of a master-master pair identical to the
// other and gets the pair replicating both ways again (`lockstep repl
// repair`), while clients keep writing on the source.
//
// The order of a repair, each step safe to interrupt and run again:
//
//  1. Preconditions: both nodes reachable, the source writable (the
//     writer) unless Force. The replication errors that broke the pair
//     and the target's transactions the source will skip are named.
//  2. The target is fenced (read_only, a manual fence record in
//     state_dir, bound to the server) and its replication from the source
//     stopped. It stays fenced until the end, and stays fenced if the
//     repair stops half-way: a second run starts over safely.
//  3. The source is read inside START TRANSACTION WITH CONSISTENT
//     SNAPSHOT, READ ONLY; binlog_snapshot_file/position give the GTID
//     position of exactly that snapshot (BINLOG_GTID_POS). Nothing is
//     ever written to the source's data.
//  4. Each table is compared with the checksum's chunk and row hashes
//     against the snapshot, and the differing rows are fixed on the
//     target (sql_log_bin=0, so the fixes do not replicate back); a keyed
//     InnoDB table is read and fixed under a table lock a guard session
//     holds until the end (guard.go), and its fixes are committed only
//     once every table is verified. A table whose definition differs, that exists on one
//     side only, that has no key, or (method auto) that differs in many
//     rows is copied whole instead (reseed).
//  5. The target replicates from the source from the snapshot's position
//     (gtid_slave_pos); the source skips the target's transactions it had
//     not applied (listed in the report) and replicates from the target
//     again.
//  6. Both nodes catch up, and the target is unfenced only when the
//     verification (against the snapshot, before step 5: the fixed chunks
//     of guarded tables and every chunk of the others; or --verify live,
//     a checksum of both live nodes) found it identical.
package repair

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
	"golang.org/x/sync/errgroup"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/dbrepl/checksum"
)

// Methods.
const (
	MethodAuto   = "auto"
	MethodRows   = "rows"
	MethodReseed = "reseed"
)

// Defaults.
const (
	DefaultChunkRows = 10000
	// autoReseedFraction: with method auto a table whose differing rows
	// exceed this share of its rows (and autoReseedMin) is copied whole:
	// a full copy is then cheaper than row-by-row fixes.
	autoReseedFraction = 0.2
	autoReseedMin      = 1000
	batchRows          = 500
	catchUpTimeout     = 60 * time.Second
)

// ErrUsage marks errors in the request itself (exit 2).
var ErrUsage = errors.New("bad request")

// Options of a repair.
type Options struct {
	Source, Target string
	Databases      []string // empty: every database of the source
	Method         string   // auto | rows | reseed
	DryRun         bool
	Force          bool // repair from a source that is read-only
	ChunkRows      int64
	Logger         *slog.Logger
	// Progress is called after every chunk and table.
	Progress func(Progress)
	// Confirm is shown the plan before anything changes; false aborts.
	// Nil proceeds (--yes).
	Confirm func(plan string) (bool, error)
	// AfterTable, when set, is called after each table is repaired (tests
	// interrupt a repair here).
	AfterTable func(table string)
	// VerifyLive verifies with a checksum of both live nodes after
	// replication resumed (reading the source in full a second time)
	// instead of the target against the snapshot (verify.go).
	VerifyLive bool
}

// Progress of a running repair.
type Progress struct {
	TablesDone, TablesTotal int
	RowsDone, RowsTotal     int64
	Table                   string
}

// TableReport is what a repair did (or, dry, would do) to one table.
type TableReport struct {
	Table    string `json:"table"`
	Method   string `json:"method"` // rows | reseed | drop | clean
	Why      string `json:"why,omitempty"`
	Rows     int64  `json:"rows"` // rows on the source
	Inserted int64  `json:"inserted"`
	Updated  int64  `json:"updated"`
	Deleted  int64  `json:"deleted"`
	Copied   int64  `json:"copied"` // reseed: rows copied
	// Time the table took (compare, fixes, copy), in the pass's
	// parallel workers.
	Time time.Duration `json:"time_ns"`
}

// Report is the outcome of a repair.
type Report struct {
	Source, Target string
	DryRun         bool
	Databases      []string
	// SnapshotGTID is the source's GTID position of the snapshot the
	// target was made identical to.
	SnapshotGTID string
	// BreakErrors are the replication errors found when the repair began.
	BreakErrors []string
	// SkippedGTIDs are the target's transactions the source had not
	// applied and skips (errant or conflicting writes on the target).
	SkippedGTIDs []string
	Tables       []TableReport
	// Verified: the final checksum found the target identical to the
	// source's snapshot (VerifiedAgainst "snapshot"), or both live nodes
	// identical ("live").
	Verified        bool
	VerifiedAgainst string
	Checksum        []*checksum.Result
	// Replicating: both directions' threads run at the end.
	Replicating bool
	Unfenced    bool
	Notes       []string
	Duration    time.Duration
	// Phases: how long the compare-and-fix pass, resuming replication
	// (catch-up included) and the verifying checksum took.
	CopyTime, ResumeTime, VerifyTime time.Duration
	// PrepareTime: connecting, preconditions, fencing the target and
	// stopping its replication. SnapshotTime: opening the source's
	// snapshot sessions (inside CopyTime). FixTime: the fixes and the
	// fixed chunks' second hash, summed over the tables (inside
	// CopyTime; tables are fixed in parallel). CommitTime: committing
	// the guards' fixes (inside CopyTime).
	PrepareTime, SnapshotTime, FixTime, CommitTime time.Duration
}

type node struct {
	name   string
	db     *sql.DB
	domain uint32
	sid    uint32
}

// Run repairs opts.Target from opts.Source.
func Run(ctx context.Context, cfg dbrepl.Config, opts Options) (*Report, error) {
	start := time.Now()
	cfg.SetDefaults()
	if opts.Method == "" {
		opts.Method = MethodAuto
	}
	if opts.ChunkRows <= 0 {
		opts.ChunkRows = DefaultChunkRows
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	log := opts.Logger.With("component", "repair")
	if err := validate(cfg, &opts); err != nil {
		return nil, err
	}
	var src, tgt node
	for _, nc := range cfg.Nodes {
		n := node{name: nc.Name}
		db, err := open(nc, 2+2*compareWorkers+maxGuards) // per worker: a snapshot or writer session and a query; the guards
		if err != nil {
			return nil, err
		}
		defer db.Close()
		n.db = db
		if err := db.PingContext(ctx); err != nil {
			return nil, fmt.Errorf("%w: node %s unreachable: %s", ErrUsage, nc.Name, redact(err))
		}
		if err := db.QueryRowContext(ctx, "SELECT @@gtid_domain_id, @@server_id").Scan(&n.domain, &n.sid); err != nil {
			return nil, fmt.Errorf("%s: %s (repair needs MariaDB)", nc.Name, redact(err))
		}
		if nc.Name == opts.Source {
			src = n
		} else {
			tgt = n
		}
	}
	rep := &Report{Source: src.name, Target: tgt.name, DryRun: opts.DryRun}

	var ro int
	if err := src.db.QueryRowContext(ctx, "SELECT @@read_only").Scan(&ro); err != nil {
		return nil, fmt.Errorf("%s: %w", src.name, err)
	}
	if ro != 0 && !opts.Force {
		return nil, fmt.Errorf("%w: source %s is read-only: it is not the writer, so its data may be the stale side (check `lockstep repl status`; --force repairs from it anyway)", ErrUsage, src.name)
	}
	dbs, err := databases(ctx, src.db, opts.Databases)
	if err != nil {
		return nil, err
	}
	rep.Databases = dbs
	for _, n := range []node{tgt, src} {
		errs, err := breakErrors(ctx, n)
		if err != nil {
			return nil, err
		}
		rep.BreakErrors = append(rep.BreakErrors, errs...)
	}
	skipped, newSrcSlavePos, err := targetOnly(ctx, src, tgt)
	if err != nil {
		return nil, err
	}
	rep.SkippedGTIDs = skipped

	if !opts.DryRun && opts.Confirm != nil {
		ok, err := opts.Confirm(plan(rep, opts))
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("%w: not confirmed", ErrUsage)
		}
	}
	if !opts.DryRun {
		log.Info("fencing the target", "target", tgt.name)
		if err := dbrepl.ManualFence(ctx, cfg, tgt.name, "repair from "+src.name+" in progress (lockstep repl repair)", opts.Logger); err != nil {
			return rep, fmt.Errorf("fencing %s: %w", tgt.name, err)
		}
		if _, err := tgt.db.ExecContext(ctx, "STOP SLAVE"); err != nil {
			return rep, fmt.Errorf("%s: STOP SLAVE: %w", tgt.name, err)
		}
	}

	copyStart := time.Now()
	rep.PrepareTime = copyStart.Sub(start)
	if err := copyPass(ctx, log, src, tgt, dbs, opts, rep); err != nil {
		return rep, err
	}
	rep.CopyTime = time.Since(copyStart) - rep.VerifyTime // the snapshot verify runs inside the pass
	resumeStart := time.Now()
	if opts.DryRun {
		rep.Duration = time.Since(start)
		return rep, nil
	}

	// What the source skips is read again now that the target is fenced
	// and its replication stopped: what the target logged before the fence
	// took hold is included; the plan showed the position at its start.
	if skipped, newSrcSlavePos, err = targetOnly(ctx, src, tgt); err != nil {
		return rep, err
	}
	rep.SkippedGTIDs = skipped

	// Both directions again. The two servers are independent here: each
	// is repositioned, caught up and checked at the same time as the other.
	log.Info("target replicates from the snapshot position", "target", tgt.name, "gtid_slave_pos", rep.SnapshotGTID)
	log.Info("source skips the target's transactions it had not applied", "source", src.name, "skipped", strings.Join(skipped, ","), "gtid_slave_pos", newSrcSlavePos)
	var g errgroup.Group
	g.Go(func() error {
		if err := execAll(ctx, tgt.db, "STOP SLAVE", "SET GLOBAL gtid_slave_pos = '"+rep.SnapshotGTID+"'",
			"CHANGE MASTER TO MASTER_USE_GTID=slave_pos", "START SLAVE"); err != nil {
			return fmt.Errorf("%s: %w", tgt.name, err)
		}
		return nil
	})
	g.Go(func() error {
		if err := execAll(ctx, src.db, "STOP SLAVE", "SET GLOBAL gtid_slave_pos = '"+newSrcSlavePos+"'",
			"CHANGE MASTER TO MASTER_USE_GTID=slave_pos", "START SLAVE"); err != nil {
			return fmt.Errorf("%s: %w", src.name, err)
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return rep, err
	}

	// Catch up, verify, unfence.
	pairs := [][2]node{{src, tgt}, {tgt, src}}
	var notes [2][]string
	var running [2]bool
	var wg sync.WaitGroup
	for i, pair := range pairs {
		wg.Go(func() {
			if err := catchUp(ctx, pair[0], pair[1]); err != nil {
				notes[i] = append(notes[i], err.Error())
			}
			// pair[1] is the node that replicates from pair[0].
			ok, why, err := replicating(ctx, pair[1])
			running[i] = err == nil && ok
			if !running[i] {
				notes[i] = append(notes[i], fmt.Sprintf("%s: replication not running: %s%v", pair[1].name, why, orNil(err)))
			}
		})
	}
	wg.Wait()
	rep.Replicating = running[0] && running[1]
	rep.Notes = append(append(rep.Notes, notes[0]...), notes[1]...)
	rep.ResumeTime = time.Since(resumeStart)
	if opts.VerifyLive {
		verifyLive(ctx, src, tgt, dbs, opts, rep)
	}
	log.Info("repair phases", "prepare", rep.PrepareTime, "snapshot", rep.SnapshotTime, "compare_and_fix", rep.CopyTime, "fixes", rep.FixTime, "commit", rep.CommitTime,
		"resume", rep.ResumeTime, "verify", rep.VerifyTime, "verified_against", rep.VerifiedAgainst)
	if rep.Verified && rep.Replicating {
		if err := dbrepl.ManualUnfence(ctx, cfg, tgt.name, opts.Logger); err != nil {
			rep.Notes = append(rep.Notes, fmt.Sprintf("unfence %s: %v", tgt.name, err))
		} else {
			rep.Unfenced = true
		}
	} else {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%s stays fenced: the repair did not verify; run it again", tgt.name))
	}
	rep.Duration = time.Since(start)
	return rep, nil
}

func orNil(err error) string {
	if err == nil {
		return ""
	}
	return " " + err.Error()
}

func validate(cfg dbrepl.Config, o *Options) error {
	var names []string
	for _, n := range cfg.Nodes {
		names = append(names, n.Name)
	}
	switch {
	case o.Source == "" || o.Target == "":
		return fmt.Errorf("%w: --source and --target are required (nodes: %s)", ErrUsage, strings.Join(names, ", "))
	case o.Source == o.Target:
		return fmt.Errorf("%w: --source and --target are both %s", ErrUsage, o.Source)
	case !slices.Contains(names, o.Source):
		return fmt.Errorf("%w: unknown source %q (nodes: %s)", ErrUsage, o.Source, strings.Join(names, ", "))
	case !slices.Contains(names, o.Target):
		return fmt.Errorf("%w: unknown target %q (nodes: %s)", ErrUsage, o.Target, strings.Join(names, ", "))
	}
	switch o.Method {
	case MethodAuto, MethodRows, MethodReseed:
	default:
		return fmt.Errorf("%w: --method %q: want auto, rows or reseed", ErrUsage, o.Method)
	}
	for _, d := range o.Databases {
		if slices.Contains([]string{"mysql", "information_schema", "performance_schema", "sys", "lockstep"}, strings.ToLower(d)) {
			return fmt.Errorf("%w: database %s is per-node and never repaired", ErrUsage, d)
		}
	}
	return nil
}

func open(nc dbrepl.NodeConfig, conns int) (*sql.DB, error) {
	c, err := mysql.ParseDSN(nc.DSN)
	if err != nil {
		return nil, fmt.Errorf("%w: node %s: dsn: not a valid DSN", ErrUsage, nc.Name)
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	// Values are copied as the server renders them: a parsed DATETIME
	// would come back in a form the server does not accept.
	c.ParseTime = false
	conn, err := mysql.NewConnector(c)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", nc.Name, err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	return db, nil
}

// redact keeps a driver error but never a DSN.
func redact(err error) string {
	s := err.Error()
	if i := strings.Index(s, "@tcp("); i >= 0 {
		return "connection failed"
	}
	return s
}

func databases(ctx context.Context, db *sql.DB, want []string) ([]string, error) {
	rows, err := db.QueryContext(ctx, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME NOT IN ('mysql','information_schema','performance_schema','sys','lockstep') ORDER BY SCHEMA_NAME")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var all []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		all = append(all, s)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(want) == 0 {
		return all, nil
	}
	for _, d := range want {
		if !slices.Contains(all, d) {
			return nil, fmt.Errorf("%w: database %s does not exist on the source", ErrUsage, d)
		}
	}
	return want, nil
}

func slaveStatus(ctx context.Context, db *sql.DB) (map[string]string, error) {
	rows, err := db.QueryContext(ctx, "SHOW SLAVE STATUS")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	if !rows.Next() {
		return nil, rows.Err()
	}
	vals := make([]sql.NullString, len(cols))
	dest := make([]any, len(cols))
	for i := range vals {
		dest[i] = &vals[i]
	}
	if err := rows.Scan(dest...); err != nil {
		return nil, err
	}
	m := map[string]string{}
	for i, c := range cols {
		m[c] = vals[i].String
	}
	return m, rows.Err()
}

// breakErrors names the replication errors of n's replica threads.
func breakErrors(ctx context.Context, n node) ([]string, error) {
	st, err := slaveStatus(ctx, n.db)
	if err != nil {
		return nil, fmt.Errorf("%s: SHOW SLAVE STATUS: %w", n.name, err)
	}
	var out []string
	if st == nil {
		return []string{n.name + ": no replication configured"}, nil
	}
	if e := st["Last_SQL_Errno"]; e != "" && e != "0" {
		msg := fmt.Sprintf("%s: applier stopped on error %s: %s", n.name, e, st["Last_SQL_Error"])
		if g := dbrepl.FailingGTIDFromError(st["Last_SQL_Error"]); g != "" {
			msg += " (GTID " + g + ")"
		}
		out = append(out, msg)
	}
	if e := st["Last_IO_Errno"]; e != "" && e != "0" {
		out = append(out, fmt.Sprintf("%s: receiver error %s: %s", n.name, e, st["Last_IO_Error"]))
	}
	return out, nil
}

// targetOnly lists the target's own transactions the source has not
// applied (they will be skipped) and the source's gtid_slave_pos that
// skips them.
func targetOnly(ctx context.Context, src, tgt node) ([]string, string, error) {
	var tgtBinlog, srcSlave, srcCurrent string
	if err := tgt.db.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&tgtBinlog); err != nil {
		return nil, "", fmt.Errorf("%s: %w", tgt.name, err)
	}
	if err := src.db.QueryRowContext(ctx, "SELECT @@gtid_slave_pos, @@gtid_current_pos").Scan(&srcSlave, &srcCurrent); err != nil {
		return nil, "", fmt.Errorf("%s: %w", src.name, err)
	}
	tpos := parsePos(tgtBinlog)
	spos := parsePos(srcCurrent)
	slave := parsePos(srcSlave)
	var skipped []string
	t, ok := tpos[tgt.domain]
	if ok {
		have := spos[tgt.domain].seq
		if t.seq > have {
			r := fmt.Sprintf("%d-%d-%d", tgt.domain, t.server, have+1)
			if t.seq > have+1 {
				r += ".." + strconv.FormatUint(t.seq, 10)
			}
			skipped = append(skipped, r)
		}
		slave[tgt.domain] = t
	}
	return skipped, formatPos(slave), nil
}

type gtid struct {
	server uint32
	seq    uint64
}

func parsePos(s string) map[uint32]gtid {
	out := map[uint32]gtid{}
	for _, p := range strings.Split(s, ",") {
		f := strings.Split(strings.TrimSpace(p), "-")
		if len(f) != 3 {
			continue
		}
		d, e1 := strconv.ParseUint(f[0], 10, 32)
		sv, e2 := strconv.ParseUint(f[1], 10, 32)
		q, e3 := strconv.ParseUint(f[2], 10, 64)
		if e1 == nil && e2 == nil && e3 == nil {
			out[uint32(d)] = gtid{uint32(sv), q}
		}
	}
	return out
}

func formatPos(m map[uint32]gtid) string {
	var ds []uint32
	for d := range m {
		ds = append(ds, d)
	}
	slices.Sort(ds)
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = fmt.Sprintf("%d-%d-%d", d, m[d].server, m[d].seq)
	}
	return strings.Join(parts, ",")
}

func plan(rep *Report, o Options) string {
	var b strings.Builder
	fmt.Fprintf(&b, "repair plan: make %s identical to %s (databases: %s, method %s)\n", rep.Target, rep.Source, strings.Join(rep.Databases, ", "), o.Method)
	for _, e := range rep.BreakErrors {
		fmt.Fprintf(&b, "  broken: %s\n", e)
	}
	fmt.Fprintf(&b, "  1. fence %s (read_only) and stop its replication; it stays fenced until the repair verifies\n", rep.Target)
	fmt.Fprintf(&b, "  2. read %s from a consistent snapshot (never written to); fix %s's rows without binlogging them\n", rep.Source, rep.Target)
	fmt.Fprintf(&b, "  3. %s replicates from the snapshot's GTID position\n", rep.Target)
	if len(rep.SkippedGTIDs) > 0 {
		fmt.Fprintf(&b, "  4. %s skips %s's transactions it had not applied: %s (their changes are lost)\n", rep.Source, rep.Target, strings.Join(rep.SkippedGTIDs, ","))
	} else {
		fmt.Fprintf(&b, "  4. %s replicates from %s again (nothing to skip)\n", rep.Source, rep.Target)
	}
	fmt.Fprintf(&b, "  5. verify with a checksum, then unfence %s\n", rep.Target)
	return b.String()
}

func execAll(ctx context.Context, db interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, stmts ...string) error {
	for _, s := range stmts {
		if _, err := db.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

// catchUp waits for b to apply everything a has logged.
func catchUp(ctx context.Context, a, b node) error {
	var pos string
	if err := a.db.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&pos); err != nil {
		return err
	}
	var r sql.NullInt64
	if err := b.db.QueryRowContext(ctx, "SELECT MASTER_GTID_WAIT(?, ?)", pos, catchUpTimeout.Seconds()).Scan(&r); err != nil {
		return fmt.Errorf("%s catching up with %s: %w", b.name, a.name, err)
	}
	if !r.Valid || r.Int64 != 0 {
		return fmt.Errorf("%s did not catch up with %s (%s) within %s", b.name, a.name, pos, catchUpTimeout)
	}
	return nil
}

func replicating(ctx context.Context, n node) (bool, string, error) {
	// The threads take a moment to connect after START SLAVE.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := slaveStatus(ctx, n.db)
		if err != nil {
			return false, "", err
		}
		if st == nil {
			return false, "no replication configured", nil
		}
		io, sqlT := st["Slave_IO_Running"], st["Slave_SQL_Running"]
		if io == "Yes" && sqlT == "Yes" {
			return true, "", nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false, fmt.Sprintf("IO %s, SQL %s %s %s", io, sqlT, st["Last_SQL_Error"], st["Last_IO_Error"]), ctx.Err()
		}
		// The receiver connects within tens of milliseconds: a short
		// poll (SHOW SLAVE STATUS is cheap) does not add most of a 50 ms
		// step to every repair.
		time.Sleep(10 * time.Millisecond)
	}
}

// verifyLive is the end-to-end verification (--verify live): a checksum
// of both live nodes, per database, once replication has resumed.
func verifyLive(ctx context.Context, src, tgt node, dbs []string, opts Options, rep *Report) {
	verifyStart := time.Now()
	rep.Verified, rep.VerifiedAgainst = true, "live"
	for _, d := range dbs {
		c, err := checksum.New(checksum.Node{Name: src.name, DB: src.db}, checksum.Node{Name: tgt.name, DB: tgt.db},
			checksum.Options{Database: d, Logger: opts.Logger})
		if err != nil {
			rep.Verified = false
			rep.Notes = append(rep.Notes, fmt.Sprintf("verifying checksum of %s: %v", d, err))
			continue
		}
		res, err := c.Run(ctx)
		if err != nil {
			rep.Verified = false
			rep.Notes = append(rep.Notes, fmt.Sprintf("verifying checksum of %s failed: %v", d, err))
			continue
		}
		rep.Checksum = append(rep.Checksum, res)
		if !res.Consistent {
			rep.Verified = false
		}
	}
	rep.VerifyTime = time.Since(verifyStart)
}
