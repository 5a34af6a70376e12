package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/internal/testbed"
	"github.com/lockstep-ha/lockstep/internal/testbed/mariadb"
	"github.com/lockstep-ha/lockstep/orchestrator"
)

// The playground is the README's Quick start: a whole two-node cluster on
// one machine's loopback, built from the same pieces as production (real
// mariadbd processes, real `lockstep run` daemons re-executed from this
// binary), so that what a newcomer sees is what they will deploy.

// playgroundSync is each node's sync: section: its docroot, pushed to its
// peer's.
const playgroundSync = `sync:
  - name: docroot
    source: %s
    state_dir: %s
    delay: 20ms
    targets:
      - name: %s
        path: %s
`

// playgroundService is the demo resource: an LSB script that only records
// whether it runs, so the dashboard shows which node holds the group.
const playgroundService = `#!/bin/sh
# Demo resource for the lockstep playground (LSB: start | stop | status).
state=%q
case "$1" in
start)  date > "$state" ;;
stop)   rm -f "$state" ;;
status) [ -e "$state" ] || exit 3 ;;
*)      echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
`

type playgroundNode struct {
	Name, DB                 string
	Dir, Docroot, ConfigPath string
	LogPath, ServiceState    string
	Listen, Address, Agent   string
	proc                     *testbed.Proc // nil until started
}

func newPlaygroundCmd() *cobra.Command {
	var (
		duration time.Duration
		keep     bool
		interval time.Duration
	)
	cmd := &cobra.Command{
		Use:   "playground",
		Short: "Start a two-node cluster on this machine's loopback and show its dashboard",
		Long: `Starts a complete two-node lockstep cluster on loopback: two docroots synced
two-way, a MariaDB master-master pair (two mariadbd processes in temp
datadirs) and two 'lockstep run' daemons, then prints both nodes' status.
Ctrl-C stops everything and removes every temp file.

With --duration the playground verifies the setup by itself (a file written
on node1 must appear on node2, both daemons must answer /health), stops
after the duration and exits 0 only when every check passed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if duration < 0 {
				return usageError(errors.New("--duration must not be negative"))
			}
			if interval <= 0 {
				return usageError(errors.New("--interval must be positive"))
			}
			return runPlayground(cmd.Context(), cmd.OutOrStdout(), duration, interval, keep)
		},
	}
	cmd.Flags().DurationVar(&duration, "duration", 0, "stop by itself after this long and exit 0 only if the self-checks passed (0 = until Ctrl-C)")
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "dashboard refresh period")
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the temp directory (configs, logs, docroots) on exit, for inspection")
	return cmd
}

func runPlayground(ctx context.Context, out io.Writer, duration, interval time.Duration, keep bool) (err error) {
	if err := mariadb.Available(); err != nil {
		return failure(fmt.Errorf("playground needs MariaDB: %w", err))
	}
	self, err := os.Executable()
	if err != nil {
		return failure(fmt.Errorf("cannot find this binary to start the daemons: %w", err))
	}
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}

	dir, err := os.MkdirTemp("", "lockstep-playground-")
	if err != nil {
		return failure(err)
	}
	defer func() {
		if keep {
			fmt.Fprintf(out, "kept %s\n", dir)
			return
		}
		if rerr := os.RemoveAll(dir); rerr != nil && err == nil {
			err = failure(rerr)
		}
	}()
	var header bytes.Buffer // what a redrawn screen repeats at its top
	fmt.Fprintf(&header, "lockstep playground in %s\n", dir)
	fmt.Fprintln(out, "lockstep playground: starting a MariaDB master-master pair (db1, db2) ...")
	pair, err := mariadb.New(ctx, mariadb.Options{})
	if err != nil {
		if ctx.Err() != nil && duration == 0 {
			return nil
		}
		return failure(fmt.Errorf("start MariaDB pair: %w", err))
	}
	defer func() {
		if cerr := pair.Close(); cerr != nil && err == nil {
			err = failure(fmt.Errorf("stop MariaDB pair: %w", cerr))
		}
	}()
	fmt.Fprintf(&header, "  MariaDB db1 on 127.0.0.1:%d, db2 on 127.0.0.1:%d, replicating both ways\n", pair.Nodes[0].Port, pair.Nodes[1].Port)

	// A witness on loopback, served by the playground itself: a node that
	// loses its peer but still sees the witness takes over instead of
	// fencing itself.
	witness, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return failure(err)
	}
	defer testbed.Serve(witness, func(context.Context, net.Conn) {})()

	nodes, err := writePlayground(dir, pair, witness.Addr().String())
	if err != nil {
		return failure(err)
	}
	for _, n := range nodes {
		if err := n.start(self); err != nil {
			stopPlaygroundNodes(out, nodes)
			return failure(err)
		}
		fmt.Fprintf(&header, "  %s: lockstep run (pid %d), http://%s, log %s\n", n.Name, n.proc.Pid(), n.Listen, n.LogPath)
	}
	defer stopPlaygroundNodes(out, nodes)
	printPlaygroundHints(&header, dir, nodes, pair)
	_, _ = out.Write(header.Bytes())

	checks := newPlaygroundChecks(ctx, nodes, pair)
	// On a terminal the screen is redrawn in place; otherwise (logs, the
	// smoke test) the dashboard scrolls and each check result prints once.
	tty := isTerminal(out)
	printed := 0
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if tty {
			fmt.Fprint(out, "\033[H\033[2J")
			_, _ = out.Write(header.Bytes())
			printed = 0
		}
		printDashboard(ctx, out, nodes)
		printed = printCheckResults(out, checks, printed)
		select {
		case <-ctx.Done():
			fmt.Fprintln(out, "\nstopping the playground ...")
			problems := checks.wait()
			printCheckResults(out, checks, printed)
			// Interrupted by Ctrl-C, unfinished checks are no finding.
			if duration > 0 {
				if len(problems) > 0 {
					return failure(fmt.Errorf("playground self-check failed:\n  %s", strings.Join(problems, "\n  ")))
				}
				fmt.Fprintln(out, "playground self-check passed")
			}
			return nil
		case <-tick.C:
		}
	}
}

func writePlayground(dir string, pair *mariadb.Pair, witness string) ([]*playgroundNode, error) {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	keyFile := filepath.Join(dir, "cluster.key")
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		return nil, err
	}
	ports, err := mariadb.FreePorts(6)
	if err != nil {
		return nil, err
	}
	nodes := make([]*playgroundNode, 2)
	for i := range nodes {
		name := fmt.Sprintf("node%d", i+1)
		nd := filepath.Join(dir, name)
		nodes[i] = &playgroundNode{
			Name:         name,
			DB:           pair.Nodes[i].Name,
			Dir:          nd,
			Docroot:      filepath.Join(nd, "docroot"),
			ConfigPath:   filepath.Join(nd, "lockstep.yaml"),
			LogPath:      filepath.Join(nd, "lockstep.log"),
			ServiceState: filepath.Join(nd, "service.running"),
			Listen:       fmt.Sprintf("127.0.0.1:%d", ports[3*i]),
			Address:      fmt.Sprintf("127.0.0.1:%d", ports[3*i+1]),
			Agent:        fmt.Sprintf("127.0.0.1:%d", ports[3*i+2]),
		}
		if err := os.MkdirAll(filepath.Join(nd, "state"), 0o700); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(nodes[i].Docroot, 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(nodes[0].Docroot, "index.html"),
		[]byte("<h1>Hello from the lockstep playground</h1>\n"), 0o644); err != nil {
		return nil, err
	}
	var members []testbed.Member
	for _, n := range nodes {
		members = append(members, testbed.Member{Name: n.Name, Address: n.Address, DB: n.DB})
	}
	for i, n := range nodes {
		peer := nodes[1-i]
		service := filepath.Join(n.Dir, "service.sh")
		if err := os.WriteFile(service, fmt.Appendf(nil, playgroundService, n.ServiceState), 0o755); err != nil {
			return nil, err
		}
		cfg := testbed.RunConfig{
			Comment:    "Generated by lockstep playground for " + n.Name + "; removed on exit (unless --keep).",
			Node:       n.Name,
			Listen:     n.Listen,
			Sync:       fmt.Sprintf(playgroundSync, n.Docroot, filepath.Join(n.Dir, "state"), peer.Name, peer.Docroot),
			Repl:       pair.ReplConfigYAML(filepath.Join(n.Dir, "state"), "  interval: 250ms\n"),
			KeyFile:    keyFile,
			Keepalive:  200 * time.Millisecond,
			Deadtime:   time.Second,
			AgentCheck: n.Agent,
			Witness:    []string{"tcp://" + witness},
			StateDir:   filepath.Join(n.Dir, "state"),
			Members:    members,
			Resources:  []testbed.Resource{{Exec: service, Timeout: 5 * time.Second}},
		}
		if err := cfg.Write(n.ConfigPath); err != nil {
			return nil, err
		}
	}
	return nodes, nil
}

func (n *playgroundNode) start(self string) error {
	cmd := exec.Command(self, "run", "-c", n.ConfigPath)
	// Own process group: a Ctrl-C in the terminal reaches only the
	// playground, which then stops the daemons in order. Pdeathsig covers
	// the playground itself being killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	proc, err := testbed.Start(n.Name, n.LogPath, cmd)
	if err != nil {
		return err
	}
	n.proc = proc
	return nil
}

// exited returns the exit error once the daemon has stopped.
func (n *playgroundNode) exited() (bool, error) {
	if n.proc == nil {
		return false, nil
	}
	return n.proc.Exited()
}

func stopPlaygroundNodes(out io.Writer, nodes []*playgroundNode) {
	// All at once, then wait: the daemons stop in parallel.
	for _, n := range nodes {
		if n.proc != nil {
			_, _ = n.proc.Signal(syscall.SIGTERM, 0)
		}
	}
	for _, n := range nodes {
		if n.proc == nil {
			continue
		}
		if ended, _ := n.proc.Wait(15 * time.Second); !ended {
			fmt.Fprintf(out, "%s did not stop within 15s of SIGTERM; killing it\n", n.Name)
			n.proc.Kill()
		}
	}
}

func printPlaygroundHints(out io.Writer, dir string, nodes []*playgroundNode, pair *mariadb.Pair) {
	n1, n2 := nodes[0], nodes[1]
	agentHost, agentPort, _ := net.SplitHostPort(n1.Agent)
	fmt.Fprintf(out, `
Things to try in another terminal:
  # a file written on node1 appears on node2 (and the other way round)
  echo hi > %[1]s/x; sleep 0.2; cat %[2]s/x
  # the status document, health and metrics of node1 (node2: %[4]s)
  curl -s http://%[3]s/status; curl -si http://%[3]s/health; curl -s http://%[3]s/metrics
  # node1's HAProxy agent-check answer
  nc %[5]s %[6]s </dev/null
  # write on db1, read on db2
  mariadb -S %[7]s -u root -e 'CREATE DATABASE demo'; mariadb -S %[8]s -u root -e 'SHOW DATABASES'
  # kill the writer's daemon (pids above) and watch the other node take over
Ctrl-C stops everything and removes %[9]s.
`, n1.Docroot, n2.Docroot, n1.Listen, n2.Listen, agentHost, agentPort, pair.Nodes[0].Socket, pair.Nodes[1].Socket, dir)
}

func fetchPlaygroundStatus(ctx context.Context, client *http.Client, n *playgroundNode) (*orchestrator.Status, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.Listen+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /status: HTTP %d", resp.StatusCode)
	}
	var st orchestrator.Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("GET /status: %w", err)
	}
	return &st, nil
}

// printDashboard shows, per node, what an operator looks at first: role
// and why, what the balancer is told, peers, resources, sync targets and
// the database pair, then the newest events of both nodes interleaved.
func printDashboard(ctx context.Context, out io.Writer, nodes []*playgroundNode) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	fmt.Fprintf(out, "\n== %s ==\n", time.Now().Format("15:04:05"))
	var events []string
	var repl *dbrepl.PairStatus
	for _, n := range nodes {
		if done, exitErr := n.exited(); done {
			fmt.Fprintf(out, "%-6s daemon exited (%v); see %s\n", n.Name, exitErr, n.LogPath)
			continue
		}
		st, err := fetchPlaygroundStatus(ctx, client, n)
		if err != nil {
			fmt.Fprintf(out, "%-6s not answering yet (%v)\n", n.Name, err)
			continue
		}
		fmt.Fprintf(out, "%-6s %-8s balancer=%q  %s\n", n.Name, st.Role, st.Health.Agent, st.RoleReason)
		var parts []string
		for _, p := range st.Peers {
			state := "dead"
			if p.Alive {
				state = "alive"
				if p.Role != "" {
					state += " " + p.Role
				}
			}
			parts = append(parts, fmt.Sprintf("peer %s %s", p.Name, state))
		}
		for _, r := range st.Resources {
			parts = append(parts, fmt.Sprintf("%s %s", filepath.Base(r.Name), r.State))
		}
		for _, t := range st.Sync {
			conn := "down"
			if t.Connected {
				conn = "up"
			}
			parts = append(parts, fmt.Sprintf("sync %s->%s %s, %d pending", t.Job, t.Target, conn, t.PendingFiles))
		}
		fmt.Fprintf(out, "       %s\n", strings.Join(parts, "; "))
		if st.Replication != nil && repl == nil {
			repl = st.Replication
		}
		for _, e := range lastN(st.Events, 3) {
			events = append(events, fmt.Sprintf("  %s %s [%s] %s", e.Time.Format("15:04:05.000"), n.Name, e.Kind, e.Message))
		}
	}
	if repl != nil {
		var parts []string
		for _, db := range repl.Nodes {
			state := "read-only"
			if db.Writable {
				state = "writable"
			}
			if !db.Reachable {
				state = "unreachable"
			}
			if db.Fenced {
				state += " FENCED (" + db.FenceReason + ")"
			}
			lag := "lag ?"
			if db.LagSeconds != nil {
				lag = fmt.Sprintf("lag %.2fs", *db.LagSeconds)
			}
			parts = append(parts, fmt.Sprintf("%s %s %s", db.Name, state, lag))
		}
		fmt.Fprintf(out, "mariadb %s: %s\n", repl.Verdict, strings.Join(parts, "; "))
	}
	sort.Strings(events)
	if len(events) > 0 {
		fmt.Fprintln(out, "recent events:")
		for _, e := range events {
			fmt.Fprintln(out, e)
		}
	}
}

func lastN[T any](s []T, n int) []T {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// playgroundChecks verifies the playground end to end while the dashboard
// runs: a file written on node1 shows up on node2 (and back), a row
// written on db1 shows up on db2, and both daemons answer /health.
type playgroundChecks struct {
	done     chan struct{}
	mu       sync.Mutex
	passed   []string
	problems []string
}

func newPlaygroundChecks(ctx context.Context, nodes []*playgroundNode, pair *mariadb.Pair) *playgroundChecks {
	c := &playgroundChecks{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.run(ctx, nodes, pair)
	}()
	return c
}

// wait returns the problems once every check has finished.
func (c *playgroundChecks) wait() []string {
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.problems
}

func (c *playgroundChecks) results() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.passed...)
}

func (c *playgroundChecks) report(problem, ok string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if problem != "" {
		c.problems = append(c.problems, problem)
		return
	}
	c.passed = append(c.passed, "check: "+ok)
}

// printCheckResults prints the passed checks from index from on and
// returns how many there are.
func printCheckResults(out io.Writer, c *playgroundChecks, from int) int {
	lines := c.results()
	for _, l := range lines[min(from, len(lines)):] {
		fmt.Fprintln(out, l)
	}
	return len(lines)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (c *playgroundChecks) run(ctx context.Context, nodes []*playgroundNode, pair *mariadb.Pair) {
	var wg sync.WaitGroup
	report := c.report
	client := &http.Client{Timeout: time.Second}
	for i, n := range nodes {
		wg.Add(2)
		go func() {
			defer wg.Done()
			start := time.Now()
			err := pollUntil(ctx, 100*time.Millisecond, func() bool {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.Listen+"/health", nil)
				resp, err := client.Do(req)
				if err != nil {
					return false
				}
				resp.Body.Close()
				return true
			})
			if err != nil {
				report(fmt.Sprintf("%s never answered /health on %s%s", n.Name, n.Listen, n.exitNote()), "")
				return
			}
			report("", fmt.Sprintf("%s answers /health (after %s)", n.Name, time.Since(start).Round(time.Millisecond)))
		}()
		go func() {
			defer wg.Done()
			peer := nodes[1-i]
			// Like a user would: write once both daemons have connected
			// their sync targets and finished the startup reconciliation,
			// which (delete: true) may remove files the peer does not have yet.
			if err := pollUntil(ctx, 100*time.Millisecond, func() bool {
				return syncSettled(ctx, client, n) && syncSettled(ctx, client, peer)
			}); err != nil {
				report(fmt.Sprintf("sync of %s and %s never reported connected targets with a finished first sync", n.Name, peer.Name), "")
				return
			}
			name := fmt.Sprintf("playground-check-from-%s.txt", n.Name)
			content := []byte("written on " + n.Name + " at " + time.Now().Format(time.RFC3339Nano) + "\n")
			if err := os.WriteFile(filepath.Join(n.Docroot, name), content, 0o644); err != nil {
				report(err.Error(), "")
				return
			}
			start := time.Now()
			err := pollUntil(ctx, 10*time.Millisecond, func() bool {
				got, err := os.ReadFile(filepath.Join(peer.Docroot, name))
				return err == nil && string(got) == string(content)
			})
			if err != nil {
				report(fmt.Sprintf("%s written on %s never appeared on %s", name, n.Name, peer.Name), "")
				return
			}
			report("", fmt.Sprintf("a file written on %s appeared on %s after %s", n.Name, peer.Name, time.Since(start).Round(time.Millisecond)))
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := checkPlaygroundReplication(ctx, pair); err != nil {
			report(err.Error(), "")
			return
		}
		report("", "a row written on db1 is visible on db2")
	}()
	wg.Wait()
}

// syncSettled reports whether every sync target of n is connected and has
// completed a sync.
func syncSettled(ctx context.Context, client *http.Client, n *playgroundNode) bool {
	st, err := fetchPlaygroundStatus(ctx, client, n)
	if err != nil || len(st.Sync) == 0 {
		return false
	}
	for _, t := range st.Sync {
		if !t.Connected || t.LastSync.IsZero() {
			return false
		}
	}
	return true
}

// exitNote explains a daemon that is gone, with the last line of its log.
func (n *playgroundNode) exitNote() string {
	done, err := n.exited()
	if !done {
		return ""
	}
	b, _ := os.ReadFile(n.LogPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return fmt.Sprintf(" (daemon exited: %v; last log line: %s)", err, lines[len(lines)-1])
}

func checkPlaygroundReplication(ctx context.Context, pair *mariadb.Pair) error {
	db1, db2 := pair.Nodes[0].DB, pair.Nodes[1].DB
	token := time.Now().Format(time.RFC3339Nano)
	for _, stmt := range []string{
		"CREATE DATABASE IF NOT EXISTS playground",
		"CREATE TABLE IF NOT EXISTS playground.hello (id INT AUTO_INCREMENT PRIMARY KEY, msg VARCHAR(64))",
	} {
		if _, err := db1.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("db1: %s: %w", stmt, err)
		}
	}
	if _, err := db1.ExecContext(ctx, "INSERT INTO playground.hello (msg) VALUES (?)", token); err != nil {
		return fmt.Errorf("db1: insert: %w", err)
	}
	return pollUntil(ctx, 50*time.Millisecond, func() bool {
		var n int
		err := db2.QueryRowContext(ctx, "SELECT COUNT(*) FROM playground.hello WHERE msg = ?", token).Scan(&n)
		return err == nil && n == 1
	})
}

func pollUntil(ctx context.Context, every time.Duration, cond func() bool) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
