package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lockstep-ha/lockstep/config"
	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
	"github.com/lockstep-ha/lockstep/integration/poll"
	"github.com/lockstep-ha/lockstep/internal/testbed"
	"github.com/lockstep-ha/lockstep/orchestrator"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 30*time.Second, what, cond)
}

// startConflictPair starts a pair with binlog_row_metadata=FULL and writes
// a config with its repl: section (extra appended under it).
func startConflictPair(t *testing.T, extra string) (*mariadbpair.Pair, string) {
	t.Helper()
	p := mariadbpair.Start(t, mariadbpair.Options{ExtraArgs: []string{"--binlog-row-metadata=FULL"}})
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "lockstep.yaml")
	if err := os.WriteFile(cfgPath, []byte("node: web1\n"+p.ReplConfigYAML(filepath.Join(dir, "state"), extra)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p, cfgPath
}

// createKV creates app.kv on db1 with rows (SQL values) and waits until
// db2 has it.
func createKV(t *testing.T, p *mariadbpair.Pair, rows string) {
	t.Helper()
	for _, s := range []string{"CREATE DATABASE app", "CREATE TABLE app.kv (id INT PRIMARY KEY, v VARCHAR(20))", "INSERT INTO app.kv VALUES " + rows} {
		if _, err := p.Nodes[0].DB.Exec(s); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.WaitSynced(context.Background(), 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

// runInBackground runs fn until the returned stop (also a cleanup)
// cancels it; stop waits up to 30s for fn to return and fails the test on
// an error.
func runInBackground(t *testing.T, what string, fn func(ctx context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s: %v", what, err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("%s did not return within 30s of cancellation", what)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestReplConflictsConfigSection(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	nodes := "node: web1\nrepl:\n  nodes:\n    - {name: db1, dsn: \"u:p@tcp(127.0.0.1:3306)/\"}\n    - {name: db2, dsn: \"u:p@tcp(127.0.0.1:3307)/\"}\n"

	f, err := config.Load(write("default.yaml", nodes))
	if err != nil {
		t.Fatal(err)
	}
	if c := f.Repl.Conflicts; !c.IsEnabled() || c.Window != dbrepl.DefaultConflictWindow || c.ServerID != 0 {
		t.Fatalf("default conflicts section: %+v", c)
	}

	f, err = config.Load(write("set.yaml", nodes+"  conflicts:\n    enabled: false\n    window: 3s\n    server_id: 9000\n    ignore_schemas: [cache]\n"))
	if err != nil {
		t.Fatal(err)
	}
	c := f.Repl.Conflicts
	if c.IsEnabled() || c.Window != 3*time.Second || c.ServerID != 9000 || strings.Join(c.IgnoreSchemas, ",") != "cache,lockstep" {
		t.Fatalf("conflicts section: %+v", c)
	}
	det, err := newConflictDetector(*f.Repl, prometheus.NewRegistry(), nil, nil)
	if err != nil || det != nil {
		t.Fatalf("disabled detector built: %v %v", det, err)
	}

	_, err = config.Load(write("bad.yaml", nodes+"  conflicts:\n    window: -1s\n"))
	if err == nil || !strings.Contains(err.Error(), "conflicts.window") {
		t.Fatalf("bad window: %v", err)
	}
	_, err = config.Load(write("typo.yaml", nodes+"  conflicts:\n    windw: 1s\n"))
	if err == nil || !strings.Contains(err.Error(), "windw") {
		t.Fatalf("unknown key: %v", err)
	}
}

func TestReplEventKind(t *testing.T) {
	for typ, want := range map[string]string{
		dbrepl.EventFence:         orchestrator.EventFence,
		dbrepl.EventUnfence:       orchestrator.EventFence,
		dbrepl.EventFenceFailed:   orchestrator.EventFence,
		dbrepl.EventUnfenceFailed: orchestrator.EventFence,
		dbrepl.EventRefence:       orchestrator.EventFence,
		dbrepl.EventSkipped:       orchestrator.EventFence,
		dbrepl.EventUnreachable:   orchestrator.EventSupervisor,
		dbrepl.EventReachable:     orchestrator.EventSupervisor,
	} {
		if got, _ := replEventKind(typ); got != want {
			t.Errorf("%s filed as %s, want %s", typ, got, want)
		}
	}
	if _, warn := replEventKind(dbrepl.EventUnreachable); !warn {
		t.Error("unreachable is not a warning")
	}
	if _, warn := replEventKind(dbrepl.EventUnfence); warn {
		t.Error("unfence is a warning")
	}
}

// The daemon's replication component, loaded from a file through the
// config loader and running as the monitoring user with MonitorGrants
// (without REPLICATION SLAVE the binlog dump is refused),
// reports a row written on both nodes in Status().Conflicts, in the event
// log and as a metric; a restart runs it again without a registration
// clash, keeping what it counted.
func TestDaemonSupervisorReportsConflicts(t *testing.T) {
	// The monitoring user has no privilege on app.*, so information_schema
	// hides app.kv's key from it; with binlog_row_metadata=FULL the binlog
	// carries the key itself (the documented setup, see dbrepl's doc).
	p, cfgPath := startConflictPair(t, "  conflicts:\n    window: 30s\n")
	ctx := context.Background()
	f, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testbed.Buffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	events := orchestrator.NewEventLog(logger)
	r, det, err := newDaemonSupervisor(*f.Repl, reg, logger, func(c dbrepl.Conflict) { logConflict(events, c) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })

	start := func() (stop func()) {
		stop = runInBackground(t, "Supervisor.Run", r.Run)
		waitFor(t, "both binlog readers", func() bool { return det.Connected() == [2]bool{true, true} })
		return stop
	}
	stop := start()

	db1, db2 := p.Nodes[0], p.Nodes[1]
	createKV(t, p, "(7, 'init'), (8, 'init')")
	// The same row written on each node in turn is ordinary traffic.
	if _, err := db2.DB.Exec("UPDATE app.kv SET v = 'db2-first' WHERE id = 8"); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitSynced(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if cs := r.Status().Conflicts; len(cs) != 0 {
		t.Fatalf("conflicts before any concurrent write: %+v", cs)
	}

	// db2 does not apply db1's write while both change id=7.
	if err := db2.StopSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := db1.DB.Exec("UPDATE app.kv SET v = 'from-db1' WHERE id = 7"); err != nil {
		t.Fatal(err)
	}
	if _, err := db2.DB.Exec("UPDATE app.kv SET v = 'from-db2' WHERE id = 7"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(r.Status().Conflicts) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no conflict in Status() within 30s; logs:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := db2.StartSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	st := r.Status()
	if len(st.Conflicts) != 1 {
		t.Fatalf("conflicts = %+v, want exactly app.kv id=7", st.Conflicts)
	}
	if c := st.Conflicts[0]; c.Schema != "app" || c.Table != "kv" || c.PrimaryKey != "id=7" || strings.Join(c.Origins, ",") != "db1,db2" || len(c.GTIDs) != 2 {
		t.Fatalf("conflict = %+v", c)
	}
	if len(st.Nodes) != 2 {
		t.Fatalf("Status() lost the supervisor's view: %+v", st)
	}
	var logged bool
	for _, ev := range events.List() {
		if ev.Kind == orchestrator.EventSupervisor && ev.Level == slog.LevelWarn.String() &&
			strings.Contains(ev.Message, "write conflict on app.kv id=7") {
			logged = true
		}
	}
	if !logged {
		t.Fatalf("no conflict in the event log: %+v", events.List())
	}
	if n := counterValue(t, reg, "lockstep_repl_conflicts_total"); n != 1 {
		t.Fatalf("lockstep_repl_conflicts_total = %v", n)
	}
	stop()

	// A restart (the daemon's backoff path) runs the same supervisor and
	// detector again: nothing is registered twice, nothing counted is lost.
	start()
	if n := counterValue(t, reg, "lockstep_repl_conflicts_total"); n != 1 {
		t.Fatalf("restarted detector's counter = %v", n)
	}
	if st := r.Status(); len(st.Conflicts) != 1 || len(st.Nodes) != 2 {
		t.Fatalf("restarted supervisor's status: %+v", st)
	}
	if out := logs.String(); strings.Contains(out, p.MonitorPassword) {
		t.Fatal("the monitoring password is in the logs")
	}
}

// `lockstep repl supervise` runs the detector next to the supervisor:
// a concurrent write shows in its log and its /metrics, and it stops
// cleanly on cancellation.
func TestReplSuperviseDetectsConflicts(t *testing.T) {
	p, cfgPath := startConflictPair(t, "")
	ctx := context.Background()
	db1, db2 := p.Nodes[0], p.Nodes[1]
	createKV(t, p, "(3, 'init')")

	metrics := freePort(t, "tcp")
	out := &testbed.Buffer{}
	root := newRootCmd()
	root.SetOut(out)
	root.SetErr(out)
	root.SetArgs([]string{"repl", "supervise", "-c", cfgPath, "--metrics-addr", metrics, "--debug"})
	stop := runInBackground(t, "supervise", func(ctx context.Context) error {
		if err := root.ExecuteContext(ctx); err != nil {
			return fmt.Errorf("%w\n%s", err, out.String())
		}
		return nil
	})

	waitFor(t, "both binlog readers", func() bool {
		o := out.String()
		return strings.Contains(o, `msg="reading binlog" component=conflict node=db1`) &&
			strings.Contains(o, `msg="reading binlog" component=conflict node=db2`)
	})
	if err := db2.StopSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := db1.DB.Exec("UPDATE app.kv SET v = 'from-db1' WHERE id = 3"); err != nil {
		t.Fatal(err)
	}
	if _, err := db2.DB.Exec("UPDATE app.kv SET v = 'from-db2' WHERE id = 3"); err != nil {
		t.Fatal(err)
	}
	scrape := func() string {
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	waitFor(t, "lockstep_repl_conflicts_total 1 on /metrics", func() bool {
		return strings.Contains(scrape(), "\nlockstep_repl_conflicts_total 1\n")
	})
	if err := db2.StartSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	if o := out.String(); !strings.Contains(o, "write conflict") || !strings.Contains(o, `table=app.kv key="id=3"`) {
		t.Fatalf("no conflict logged:\n%s", o)
	}
	stop()
	if strings.Contains(out.String(), p.MonitorPassword) {
		t.Fatal("the monitoring password is in the output")
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}
