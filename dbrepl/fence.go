package dbrepl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/lockstep-ha/lockstep/internal/atomicfile"
)

// FenceRecord is the durable record of a fence, one JSON file per node in
// state_dir (fence-<node>.json). It exists exactly while the node is
// fenced by lockstep; a supervisor that starts and finds it keeps the node
// read-only until it has caught up (automatic fence) or until a manual
// unfence (manual fence). The CLI's `repl fence|unfence` edit the same
// files, and a running supervisor rereads them every poll.
type FenceRecord struct {
	Node   string    `json:"node"`
	Reason string    `json:"reason"`
	Manual bool      `json:"manual"`
	Since  time.Time `json:"since"`
	// Positions when fenced, for the post-mortem.
	GTIDCurrentPos    string   `json:"gtid_current_pos,omitempty"`
	GTIDExecuted      string   `json:"gtid_executed,omitempty"`
	PeerGTIDBinlogPos string   `json:"peer_gtid_binlog_pos,omitempty"`
	PeerGTIDExecuted  string   `json:"peer_gtid_executed,omitempty"`
	LagSeconds        *float64 `json:"lag_seconds,omitempty"`
	LastErrno         int      `json:"last_errno,omitempty"`
	LastError         string   `json:"last_error,omitempty"`
	FailingGTID       string   `json:"failing_gtid,omitempty"`
	By                string   `json:"by,omitempty"` // host/pid or "cli"

	// The server the record belongs to. A record names a node, but the
	// node's name outlives servers (a rebuilt db2, another cluster's
	// state_dir): a record is enforced only on the server it was written
	// for. MySQL has server_uuid; MariaDB has none, so server_id, the
	// address and the GTID history (a server's own position never goes
	// back) identify it there. Records written before identities were
	// recorded carry none and are honoured as before.
	ServerID   uint32 `json:"server_id,omitempty"`
	ServerUUID string `json:"server_uuid,omitempty"`
	Address    string `json:"address,omitempty"`
	DomainID   uint32 `json:"gtid_domain_id,omitempty"`
}

// Bound reports whether the record names the server it belongs to.
func (r *FenceRecord) Bound() bool { return r.ServerID != 0 || r.ServerUUID != "" }

// Foreign says why the record does not belong to the server observed at
// addr, or "" when it does (or when that cannot be told: the server is not
// readable, or the record carries no identity).
func (r *FenceRecord) Foreign(o *Observation, addr string) string {
	if r == nil || o == nil || !o.Reachable || o.Err != nil || !r.Bound() {
		return ""
	}
	if r.ServerUUID != "" && o.ServerUUID != "" {
		if !strings.EqualFold(r.ServerUUID, o.ServerUUID) {
			return fmt.Sprintf("the record is for server_uuid %s, %s is server_uuid %s", r.ServerUUID, r.Node, o.ServerUUID)
		}
		return ""
	}
	if r.ServerID != 0 && o.ServerID != 0 && r.ServerID != o.ServerID {
		return fmt.Sprintf("the record is for server_id %d, %s is server_id %d", r.ServerID, r.Node, o.ServerID)
	}
	if r.Address != "" && addr != "" && r.Address != addr {
		return fmt.Sprintf("the record is for the server at %s, %s is at %s", r.Address, r.Node, addr)
	}
	if o.Flavor == FlavorMariaDB && r.GTIDCurrentPos != "" && o.GTIDCurrentPos != "" {
		was, now := MariaDBAppliedIn(r.GTIDCurrentPos, r.DomainID), MariaDBAppliedIn(o.GTIDCurrentPos, r.DomainID)
		if now < was {
			return fmt.Sprintf("the server's GTID position in domain %d went back from %d (when fenced) to %d: a different or rebuilt server", r.DomainID, was, now)
		}
	}
	return ""
}

// FenceStore keeps fence records in a directory.
type FenceStore struct{ Dir string }

func (s FenceStore) path(node string) string {
	return filepath.Join(s.Dir, "fence-"+node+".json")
}

// Load returns the node's record, or nil when it is not fenced.
func (s FenceStore) Load(node string) (*FenceRecord, error) {
	b, err := os.ReadFile(s.path(node))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r FenceRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: corrupt fence record: %w", s.path(node), err)
	}
	return &r, nil
}

// Save writes the record atomically (temp file, fsync, rename, fsync dir)
// so a crash leaves either the old or the new record, never half of one.
func (s FenceStore) Save(r *FenceRecord) error {
	if err := os.MkdirAll(s.Dir, 0o750); err != nil {
		return fmt.Errorf("state_dir: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(s.path(r.Node), append(b, '\n'))
}

// Remove deletes the node's record (it is no longer fenced).
func (s FenceStore) Remove(node string) error {
	err := os.Remove(s.path(node))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return syncDir(s.Dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	defer d.Close()
	_ = d.Sync()
	return nil
}

// setReadOnly switches read_only (and super_read_only on MySQL) and reads
// it back: a fence that did not take must not be reported as done.
func (n *nodeConn) setReadOnly(ctx context.Context, on bool) error {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	db := n.pool()
	flavor, _, err := n.serverFlavor(ctx, db)
	if err != nil {
		return n.describe("connect", err)
	}
	val := "OFF"
	if on {
		val = "ON"
	}
	var stmts []string
	switch {
	case flavor == FlavorMySQL && on:
		// super_read_only=ON implies read_only=ON.
		stmts = []string{"SET GLOBAL super_read_only=ON"}
	case flavor == FlavorMySQL:
		// super_read_only must go first: read_only=OFF is refused while it
		// is on in some versions, and turning read_only off clears it anyway.
		stmts = []string{"SET GLOBAL super_read_only=OFF", "SET GLOBAL read_only=OFF"}
	default:
		stmts = []string{"SET GLOBAL read_only=" + val}
	}
	for _, s := range stmts {
		if _, err := db.ExecContext(ctx, s); err != nil {
			what := "SET GLOBAL read_only"
			if strings.Contains(s, "super") {
				what = "SET GLOBAL super_read_on"
			}
			return n.describe(what, err)
		}
	}
	var ro int
	if err := db.QueryRowContext(ctx, "SELECT @@GLOBAL.read_only").Scan(&ro); err != nil {
		return n.describe("verify read_only", err)
	}
	if (ro != 0) != on {
		return fmt.Errorf("%s: read_only reads back %d after SET GLOBAL read_only=%s", n.name, ro, val)
	}
	if flavor == FlavorMySQL && on {
		var sro int
		if err := db.QueryRowContext(ctx, "SELECT @@GLOBAL.super_read_only").Scan(&sro); err != nil {
			return n.describe("verify super_read_only", err)
		}
		if sro == 0 {
			return fmt.Errorf("%s: super_read_only reads back OFF after SET GLOBAL super_read_only=ON", n.name)
		}
	}
	return nil
}

// serverIdentity is what binds a fence record to a server.
type serverIdentity struct {
	ServerID       uint32
	ServerUUID     string
	DomainID       uint32
	GTIDCurrentPos string
}

// identity reads the server's identity fresh.
func (n *nodeConn) identity(ctx context.Context) (serverIdentity, error) {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	db := n.pool()
	flavor, _, err := n.serverFlavor(ctx, db)
	if err != nil {
		return serverIdentity{}, n.describe("connect", err)
	}
	var id serverIdentity
	if flavor == FlavorMariaDB {
		err = db.QueryRowContext(ctx, "SELECT @@server_id, @@gtid_domain_id, @@gtid_current_pos").Scan(&id.ServerID, &id.DomainID, &id.GTIDCurrentPos)
	} else {
		err = db.QueryRowContext(ctx, "SELECT @@server_id, @@server_uuid").Scan(&id.ServerID, &id.ServerUUID)
	}
	if err != nil {
		return serverIdentity{}, n.describe("read server identity", err)
	}
	return id, nil
}

// readOnlyNow reads read_only (or super_read_only) fresh from the server.
func (n *nodeConn) readOnlyNow(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	var ro int
	if err := n.pool().QueryRowContext(ctx, "SELECT @@GLOBAL.read_only").Scan(&ro); err != nil {
		return false, n.describe("read read_only", err)
	}
	return ro != 0, nil
}

// killClientSessions ends the sessions that could still be writing or
// reading stale data: everything except replication threads (system user,
// binlog dumps), daemons, and this user's own connections.
func (n *nodeConn) killClientSessions(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	rows, err := n.query(ctx, `SELECT ID, USER, COMMAND FROM information_schema.PROCESSLIST
		WHERE ID <> CONNECTION_ID()
		  AND USER NOT IN ('system user', 'event_scheduler', 'unauthenticated user', ?)
		  AND COMMAND NOT IN ('Binlog Dump', 'Binlog Dump GTID', 'Daemon', 'Killed',
		                      'Slave_IO', 'Slave_SQL', 'Slave_worker', 'Connect')`, n.user)
	if err != nil {
		return 0, n.describe("PROCESSLIST", err)
	}
	killed := 0
	var errs []error
	for _, r := range rows {
		if r["ID"] == nil {
			continue
		}
		if _, err := n.pool().ExecContext(ctx, "KILL CONNECTION "+*r["ID"]); err != nil {
			// 1094: the session ended on its own meanwhile.
			if !strings.Contains(err.Error(), "1094") {
				errs = append(errs, n.describe("KILL", err))
			}
			continue
		}
		killed++
	}
	return killed, errors.Join(errs...)
}

// HookEvent names passed to hooks as LOCKSTEP_EVENT.
const (
	HookFence   = "fence"
	HookUnfence = "unfence"
)

// runHook runs an on_fence/on_unfence executable with the event in its
// environment, bounded by timeout (then killed), and logs its outcome and
// output. It returns the error for callers that wait on it.
func runHook(ctx context.Context, logger *slog.Logger, path string, timeout time.Duration, env map[string]string) error {
	if path == "" {
		return nil
	}
	if timeout <= 0 {
		timeout = DefaultHookTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	// A hook that forks a child holding stdout open must not hang us.
	cmd.WaitDelay = time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	log := logger.With("hook", path, "event", env["LOCKSTEP_EVENT"], "node", env["LOCKSTEP_NODE"], "duration", time.Since(start).Round(time.Millisecond))
	if len(out) > 0 {
		log = log.With("output", strings.TrimSpace(tailString(string(out), 2000)))
	}
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("hook %s killed after its %s timeout", path, timeout)
	}
	if err != nil {
		log.Warn("hook failed", "err", err)
		return err
	}
	log.Info("hook ran")
	return nil
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
