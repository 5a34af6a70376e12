// Package mariadb starts two real mariadbd processes as a GTID
// master-master pair on loopback, for tests, benchmarks and the playground.
//
// Each node gets its own temp datadir, a free 127.0.0.1 port and a unix
// socket in a short temp directory (sun_path is limited to 108 bytes, so
// t.TempDir() paths are too long). Close kills both servers and removes
// every file, even when the caller failed half-way.
//
// The package does not import testing: `lockstep playground` links it into
// the production binary. integration/mariadbpair wraps it for tests.
package mariadb

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/internal/testbed"
)

// MonitorUser is the name of the supervisor's monitoring account.
const MonitorUser = "lockstep"

// ReplUser is the name of the account the replication threads use.
const ReplUser = "repl"

// Options tune the pair. The zero value is ready to use.
type Options struct {
	// StartTimeout bounds each server start and the replication setup.
	StartTimeout time.Duration
	// ExtraArgs are appended to both mariadbd command lines.
	ExtraArgs []string
	// KeepLogs leaves error logs in the temp dir instead of removing them on
	// Close: meant for debugging by hand only.
	KeepLogs bool
}

// Pair is two running nodes replicating from each other.
type Pair struct {
	Dir             string
	Nodes           [2]*Node
	MonitorPassword string
	ReplPassword    string
	opts            Options
}

// Node is one mariadbd process.
type Node struct {
	Name     string
	ServerID int
	DomainID int
	Port     int
	Socket   string
	DataDir  string
	LogFile  string
	// DB is a root connection pool over the unix socket.
	DB *sql.DB

	pair *Pair
	args []string

	mu   sync.Mutex
	proc *testbed.Proc // nil while stopped
}

// Binaries that must be installed for the pair to start.
var binaries = []string{"mariadbd", "mariadb-install-db"}

// Available reports why a pair cannot start here, or nil.
func Available() error {
	for _, b := range binaries {
		if _, err := lookPath(b); err != nil {
			return fmt.Errorf("%s not found in PATH or /usr/sbin (install mariadb-server)", b)
		}
	}
	return nil
}

func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/usr/local/bin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

// New installs and starts both nodes and sets up replication both ways.
// On error everything already started is torn down.
func New(ctx context.Context, opts Options) (_ *Pair, err error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 60 * time.Second
	}
	dir, err := os.MkdirTemp("", "mdbpair-")
	if err != nil {
		return nil, err
	}
	p := &Pair{Dir: dir, opts: opts, MonitorPassword: randomSecret(), ReplPassword: randomSecret()}
	defer func() {
		if err != nil {
			_ = p.Close()
		}
	}()

	// One install, copied: the system tables do not depend on server_id, and
	// it halves the setup time.
	// A private tmpdir for every mariadbd: a server starting elsewhere
	// cleans "#sql*" files in its tmpdir, which breaks a concurrent
	// bootstrap or query that shares /tmp with it.
	tmpDir := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmpDir, 0o700); err != nil {
		return nil, err
	}
	tmpl := filepath.Join(dir, "template")
	if err := installDB(ctx, tmpl, tmpDir); err != nil {
		return nil, err
	}
	ports, err := FreePorts(2)
	if err != nil {
		return nil, err
	}
	for i := range p.Nodes {
		n := &Node{
			Name:     fmt.Sprintf("db%d", i+1),
			ServerID: i + 1,
			DomainID: i + 1,
			Port:     ports[i],
			pair:     p,
		}
		n.DataDir = filepath.Join(dir, n.Name)
		n.Socket = filepath.Join(dir, n.Name+".sock")
		n.LogFile = filepath.Join(dir, n.Name+".err")
		if err := exec.CommandContext(ctx, "cp", "-a", tmpl, n.DataDir).Run(); err != nil {
			return nil, fmt.Errorf("copy datadir for %s: %w", n.Name, err)
		}
		n.args = n.serverArgs(i)
		p.Nodes[i] = n
	}
	_ = os.RemoveAll(tmpl)

	errs := make(chan error, 2)
	for i, n := range p.Nodes {
		go func() { errs <- n.startFresh(ctx, i) }()
	}
	for range p.Nodes {
		if e := <-errs; e != nil {
			err = errors.Join(err, e)
		}
	}
	if err != nil {
		return nil, err
	}
	for _, n := range p.Nodes {
		if err := n.createUsers(ctx); err != nil {
			return nil, err
		}
	}
	for i, n := range p.Nodes {
		if err := n.changeMaster(ctx, p.Nodes[1-i]); err != nil {
			return nil, err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	for _, n := range p.Nodes {
		if err := n.waitReplicating(wctx); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func randomSecret() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func installDB(ctx context.Context, datadir, tmpDir string) error {
	bin, err := lookPath("mariadb-install-db")
	if err != nil {
		return err
	}
	args := []string{
		"--no-defaults", "--datadir=" + datadir,
		"--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve",
		"--innodb-log-file-size=8M", "--innodb-buffer-pool-size=32M",
		"--tmpdir=" + tmpDir,
	}
	if os.Geteuid() == 0 {
		args = append(args, "--user=root")
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("mariadb-install-db: %w\n%s", err, tail(out, 2000))
	}
	return nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// FreePorts returns n distinct free 127.0.0.1 ports, reserved by holding
// their listeners until all are chosen. A small window remains before the
// server binds; New retries a start that loses that race.
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (n *Node) serverArgs(i int) []string {
	args := []string{
		"--no-defaults",
		"--datadir=" + n.DataDir,
		"--socket=" + n.Socket,
		"--port=" + fmt.Sprint(n.Port),
		"--bind-address=127.0.0.1",
		"--pid-file=" + filepath.Join(n.pair.Dir, n.Name+".pid"),
		"--log-error=" + n.LogFile,
		"--tmpdir=" + filepath.Join(n.pair.Dir, "tmp"),
		fmt.Sprintf("--server-id=%d", n.ServerID),
		fmt.Sprintf("--gtid-domain-id=%d", n.DomainID),
		"--log-bin=" + n.Name + "-bin",
		"--relay-log=" + n.Name + "-relay",
		"--log-slave-updates",
		"--binlog-format=ROW",
		// As recommended for production: the binlog carries column names
		// and primary keys, which the conflict detector needs.
		"--binlog-row-metadata=FULL",
		"--auto-increment-increment=2",
		fmt.Sprintf("--auto-increment-offset=%d", i+1),
		"--innodb-buffer-pool-size=32M",
		"--innodb-log-file-size=8M",
		"--innodb-flush-log-at-trx-commit=2",
		"--sync-binlog=0",
		"--performance-schema=OFF",
		"--skip-name-resolve",
		// Replication is configured explicitly after the users exist.
		"--skip-slave-start",
		"--max-connections=200",
		"--loose-innodb-use-native-aio=0",
	}
	if os.Geteuid() == 0 {
		args = append(args, "--user=root")
	}
	return append(args, n.pair.opts.ExtraArgs...)
}

// RootDSN connects as root over the unix socket (root@localhost has an
// empty password; with skip-name-resolve it only matches socket logins).
func (n *Node) RootDSN() string {
	return fmt.Sprintf("root@unix(%s)/?parseTime=true&interpolateParams=true", n.Socket)
}

// MonitorDSN connects as the supervisor's monitoring user over TCP.
func (n *Node) MonitorDSN() string {
	return fmt.Sprintf("%s:%s@tcp(127.0.0.1:%d)/", MonitorUser, n.pair.MonitorPassword, n.Port)
}

// Addr is host:port of the node.
func (n *Node) Addr() string { return fmt.Sprintf("127.0.0.1:%d", n.Port) }

// Start (re)starts mariadbd on the same datadir and port and waits until it
// accepts connections. Replication threads come back as configured (the
// server is started with --skip-slave-start only for the first boot).
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	if n.proc != nil {
		n.mu.Unlock()
		return fmt.Errorf("%s: already running", n.Name)
	}
	bin, err := lookPath("mariadbd")
	if err != nil {
		n.mu.Unlock()
		return err
	}
	args := n.args
	if n.DB != nil { // a restart: replication is configured, let it resume
		args = withoutArg(args, "--skip-slave-start")
	}
	// Not CommandContext: the server must outlive the ctx used to start it.
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	proc, err := testbed.Start(n.Name, "", cmd)
	if err != nil {
		n.mu.Unlock()
		return err
	}
	n.proc = proc
	done := proc.Done()
	n.mu.Unlock()

	if n.DB == nil {
		cfg, err := mysql.ParseDSN(n.RootDSN())
		if err != nil {
			return err
		}
		// The driver logs "broken pipe" for every pooled connection to a
		// killed server, which is expected here.
		cfg.Logger = &mysql.NopLogger{}
		connector, err := mysql.NewConnector(cfg)
		if err != nil {
			return err
		}
		n.DB = sql.OpenDB(connector)
		n.DB.SetMaxIdleConns(4)
	}
	ctx, cancel := context.WithTimeout(ctx, n.pair.opts.StartTimeout)
	defer cancel()
	for {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		err := n.DB.PingContext(pctx)
		pcancel()
		if err == nil {
			return nil
		}
		select {
		case <-done:
			_ = n.Kill() // reaps and clears the state for a retry
			return fmt.Errorf("%s exited during startup; log:\n%s", n.Name, n.logTail())
		case <-ctx.Done():
			_ = n.Kill()
			return fmt.Errorf("%s did not accept connections: %v; log:\n%s", n.Name, err, n.logTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// startFresh is the first start: another test process may take the
// chosen port between freePorts and mariadbd's bind, so a bind failure is
// retried on a new port.
func (n *Node) startFresh(ctx context.Context, i int) error {
	for attempt := 0; ; attempt++ {
		err := n.Start(ctx)
		if err == nil || attempt == 3 || !strings.Contains(n.logTail(), "already in use") {
			return err
		}
		ports, perr := FreePorts(1)
		if perr != nil {
			return err
		}
		n.Port = ports[0]
		n.args = n.serverArgs(i)
		_ = os.Truncate(n.LogFile, 0)
	}
}

func withoutArg(args []string, drop string) []string {
	out := make([]string, 0, len(args))
	for _, a := range args {
		if a != drop {
			out = append(out, a)
		}
	}
	return out
}

func (n *Node) logTail() string {
	b, _ := os.ReadFile(n.LogFile)
	return tail(b, 3000)
}

// PID is the server's process id, or 0 when it is not running.
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc == nil {
		return 0
	}
	return n.proc.Pid()
}

// Running reports whether the process is alive.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc != nil
}

// Stop shuts the server down cleanly (SIGTERM), killing it after 30s.
func (n *Node) Stop() error { return n.signal(syscall.SIGTERM, 30*time.Second) }

// Kill ends the server with SIGKILL, like a crash.
func (n *Node) Kill() error { return n.signal(syscall.SIGKILL, 10*time.Second) }

func (n *Node) signal(sig syscall.Signal, grace time.Duration) error {
	n.mu.Lock()
	proc := n.proc
	n.mu.Unlock()
	if proc == nil {
		return nil
	}
	if ended, _ := proc.Signal(sig, grace); !ended {
		proc.Kill()
	}
	n.mu.Lock()
	n.proc = nil
	n.mu.Unlock()
	return nil
}

func (n *Node) exec(ctx context.Context, stmts ...string) error {
	for _, s := range stmts {
		if _, err := n.DB.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("%s: %s: %w", n.Name, redact(s), err)
		}
	}
	return nil
}

// redact hides passwords in statements echoed into errors.
func redact(stmt string) string {
	if i := strings.Index(strings.ToUpper(stmt), "IDENTIFIED BY"); i >= 0 {
		return stmt[:i] + "IDENTIFIED BY '***'"
	}
	if i := strings.Index(strings.ToUpper(stmt), "MASTER_PASSWORD"); i >= 0 {
		return stmt[:i] + "MASTER_PASSWORD='***' ..."
	}
	return stmt
}

func (n *Node) createUsers(ctx context.Context) error {
	p := n.pair
	mon := fmt.Sprintf("'%s'@'%%'", MonitorUser)
	stmts := []string{
		// Users are created on each node without binlogging, so that the
		// replication streams start empty and identical.
		"SET SESSION sql_log_bin=0",
		fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'", ReplUser, p.ReplPassword),
		fmt.Sprintf("GRANT REPLICATION SLAVE ON *.* TO '%s'@'%%'", ReplUser),
		fmt.Sprintf("CREATE USER %s IDENTIFIED BY '%s'", mon, p.MonitorPassword),
	}
	stmts = append(stmts, dbrepl.MonitorGrantStatements(mon)...)
	stmts = append(stmts, "SET SESSION sql_log_bin=1")
	conn, err := n.DB.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	for _, s := range stmts {
		if _, err := conn.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("%s: %s: %w", n.Name, redact(s), err)
		}
	}
	return nil
}

func (n *Node) changeMaster(ctx context.Context, master *Node) error {
	return n.exec(ctx,
		fmt.Sprintf("CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%d, MASTER_USER='%s', MASTER_PASSWORD='%s', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
			master.Port, ReplUser, n.pair.ReplPassword),
		"START SLAVE")
}

// ReplicationState is the subset of SHOW SLAVE STATUS the harness needs.
type ReplicationState struct {
	IORunning, SQLRunning string
	LastIOError           string
	LastSQLError          string
}

// Replication reads the thread states of the node's default connection.
func (n *Node) Replication(ctx context.Context) (ReplicationState, error) {
	rows, err := n.DB.QueryContext(ctx, "SHOW SLAVE STATUS")
	if err != nil {
		return ReplicationState{}, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return ReplicationState{}, err
	}
	var st ReplicationState
	if !rows.Next() {
		return st, rows.Err()
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return st, err
	}
	for i, c := range cols {
		switch c {
		case "Slave_IO_Running":
			st.IORunning = vals[i].String
		case "Slave_SQL_Running":
			st.SQLRunning = vals[i].String
		case "Last_IO_Error":
			st.LastIOError = vals[i].String
		case "Last_SQL_Error":
			st.LastSQLError = vals[i].String
		}
	}
	return st, rows.Err()
}

func (n *Node) waitReplicating(ctx context.Context) error {
	var last ReplicationState
	for {
		st, err := n.Replication(ctx)
		if err == nil && st.IORunning == "Yes" && st.SQLRunning == "Yes" {
			return nil
		}
		last = st
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: replication did not start (io=%s sql=%s io_error=%q sql_error=%q): %w",
				n.Name, last.IORunning, last.SQLRunning, last.LastIOError, last.LastSQLError, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitReplicating waits until both threads of the node run.
func (n *Node) WaitReplicating(ctx context.Context) error { return n.waitReplicating(ctx) }

// StopSQLThread stops the applier.
func (n *Node) StopSQLThread(ctx context.Context) error {
	return n.exec(ctx, "STOP SLAVE SQL_THREAD")
}

// StartSQLThread starts the applier.
func (n *Node) StartSQLThread(ctx context.Context) error {
	return n.exec(ctx, "START SLAVE SQL_THREAD")
}

// StopIOThread stops the receiver.
func (n *Node) StopIOThread(ctx context.Context) error {
	return n.exec(ctx, "STOP SLAVE IO_THREAD")
}

// StartIOThread starts the receiver.
func (n *Node) StartIOThread(ctx context.Context) error {
	return n.exec(ctx, "START SLAVE IO_THREAD")
}

// GTIDCurrentPos reads @@gtid_current_pos.
func (n *Node) GTIDCurrentPos(ctx context.Context) (string, error) {
	var s string
	err := n.DB.QueryRowContext(ctx, "SELECT @@GLOBAL.gtid_current_pos").Scan(&s)
	return s, err
}

// GTIDBinlogPos reads @@gtid_binlog_pos.
func (n *Node) GTIDBinlogPos(ctx context.Context) (string, error) {
	var s string
	err := n.DB.QueryRowContext(ctx, "SELECT @@GLOBAL.gtid_binlog_pos").Scan(&s)
	return s, err
}

// ReadOnly reads @@read_only.
func (n *Node) ReadOnly(ctx context.Context) (bool, error) {
	var v int
	err := n.DB.QueryRowContext(ctx, "SELECT @@GLOBAL.read_only").Scan(&v)
	return v != 0, err
}

// WaitSynced waits until each node has applied everything in the other's
// binlog (MASTER_GTID_WAIT on the other's gtid_binlog_pos), bounded by
// timeout.
func (p *Pair) WaitSynced(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for i, n := range p.Nodes {
		peer := p.Nodes[1-i]
		pos, err := peer.GTIDBinlogPos(ctx)
		if err != nil {
			return fmt.Errorf("%s: read gtid_binlog_pos: %w", peer.Name, err)
		}
		secs := time.Until(deadline(ctx)).Seconds()
		var res int
		if err := n.DB.QueryRowContext(ctx, "SELECT MASTER_GTID_WAIT(?, ?)", pos, secs).Scan(&res); err != nil {
			return fmt.Errorf("%s: wait for %s: %w", n.Name, pos, err)
		}
		if res != 0 {
			cur, _ := n.GTIDCurrentPos(ctx)
			return fmt.Errorf("%s: not caught up with %s (%s) within %s: at %s", n.Name, peer.Name, pos, timeout, cur)
		}
	}
	return nil
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// Close stops both servers (SIGKILL: the data is thrown away) and removes
// the temp dir.
func (p *Pair) Close() error {
	var errs []error
	for _, n := range p.Nodes {
		if n == nil {
			continue
		}
		if n.DB != nil {
			_ = n.DB.Close()
		}
		if err := n.Kill(); err != nil {
			errs = append(errs, err)
		}
	}
	if !p.opts.KeepLogs {
		if err := os.RemoveAll(p.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ReplConfigYAML returns a `repl:` config section for the pair (monitoring
// user, TCP DSNs) with stateDir as state_dir; extra is appended verbatim
// under `repl:` (indented by the caller with two spaces).
func (p *Pair) ReplConfigYAML(stateDir string, extra string) string {
	var b strings.Builder
	b.WriteString("repl:\n")
	b.WriteString("  nodes:\n")
	for _, n := range p.Nodes {
		fmt.Fprintf(&b, "    - name: %s\n      dsn: %q\n", n.Name, n.MonitorDSN())
	}
	fmt.Fprintf(&b, "  state_dir: %q\n", stateDir)
	b.WriteString(extra)
	return b.String()
}
