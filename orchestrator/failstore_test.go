package orchestrator

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFailureStoreRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state") // created on the first save
	s := &failureStore{dir: dir, node: "web1"}
	if f, err := s.load(); err != nil || f != nil {
		t.Fatalf("no file: %+v %v", f, err)
	}
	since := time.Now().Add(-time.Minute).Round(0)
	want := &failureFile{Node: "web1", Failures: []ResourceFailure{{Resource: "/etc/init.d/app", Reason: "restart failed", Since: since}},
		Restarts: map[string][]time.Time{"/etc/init.d/app": {since}}}
	if err := s.save(want); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(s.path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	got, err := s.load()
	if err != nil {
		t.Fatal(err)
	}
	if got.Node != "web1" || len(got.Failures) != 1 || !got.Failures[0].Since.Equal(since) || len(got.Restarts["/etc/init.d/app"]) != 1 {
		t.Fatalf("loaded %+v", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
	if err := os.WriteFile(s.path(), []byte("{half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.load(); err == nil || !strings.Contains(err.Error(), "corrupt") || !strings.Contains(err.Error(), s.path()) {
		t.Fatalf("corrupt file: %v", err)
	}
}

func readFailureFile(t testing.TB, n *testNode) failureFile {
	t.Helper()
	var f failureFile
	b, err := os.ReadFile((&failureStore{dir: n.dir, node: n.name}).path())
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	return f
}

// A node that gave the writer role up stays ineligible across a daemon
// restart, says why, and is eligible again once cleared (which the file
// forgets too).
func TestMonitorFailureSurvivesRestart(t *testing.T) {
	tc := startCluster(t, monitorOpts(0, time.Hour))
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	a.killResource(t, "r1")
	waitFor(t, 5*time.Second, "b writer", func() bool { return len(b.held()) == 2 && len(a.held()) == 0 })
	r1 := a.resourceName(0)
	if f := readFailureFile(t, a); len(f.Failures) != 1 || f.Failures[0].Resource != r1 || f.Node != "a" {
		t.Fatalf("state file %+v", f)
	}

	a.restart(t)
	rs := a.daemon.role.Status()
	if !strings.Contains(rs.Ineligible, "resource "+r1+" failed") || len(rs.ResourceFailures) != 1 {
		t.Fatalf("after a restart: ineligible %q failures %+v", rs.Ineligible, rs.ResourceFailures)
	}
	eventTime(t, a, "failure of "+r1+" carried over from the previous run")
	if hb := a.daemon.role.heartbeat(time.Now()); hb.Eligible {
		t.Fatal("the restarted node's first heartbeat says eligible")
	}
	// Not even with the writer gone.
	b.stop(nil)
	time.Sleep(a.cfg().Deadtime + a.cfg().TakeoverMargin)
	if a.role() != RoleStandby || len(a.held()) != 0 {
		t.Fatalf("restarted ineligible a took over: %s %v", a.role(), a.held())
	}
	if _, err := a.daemon.role.ClearFailure(r1); err != nil {
		t.Fatal(err)
	}
	if f := readFailureFile(t, a); len(f.Failures) != 0 {
		t.Fatalf("state file after clear %+v", f)
	}
	waitFor(t, 3*time.Second, "a takes over once cleared", func() bool { return len(a.held()) == 2 })
	// And a restart after the clear starts eligible.
	a.restart(t)
	if rs := a.daemon.role.Status(); rs.Ineligible != "" {
		t.Fatalf("after clear and restart: %q", rs.Ineligible)
	}
}

// failure_timeout counts by wall-clock age across a restart; a record of
// a resource no longer configured is dropped.
func TestRestoreFailuresWallClock(t *testing.T) {
	tc := startCluster(t, monitorOpts(0, time.Hour))
	a := tc.nodes["a"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	r1, r2 := a.resourceName(0), a.resourceName(1)
	now := time.Now()
	s := &failureStore{dir: a.dir, node: "a"}
	if err := s.save(&failureFile{Node: "a", Failures: []ResourceFailure{
		{Resource: r1, Reason: "old", Since: now.Add(-2 * time.Hour), Expires: now.Add(time.Hour)}, // the stored expiry is not trusted
		{Resource: r2, Reason: "recent", Since: now.Add(-time.Minute)},
		{Resource: "/gone", Reason: "removed from the config", Since: now.Add(-time.Minute)},
	}, Restarts: map[string][]time.Time{r2: {now.Add(-time.Hour), now.Add(-time.Second)}}}); err != nil {
		t.Fatal(err)
	}
	a.stop(errCrash) // a crash: no release, nothing written meanwhile
	a.restart(t)
	fs := a.daemon.role.Status().ResourceFailures
	if len(fs) != 1 || fs[0].Resource != r2 {
		t.Fatalf("restored %+v", fs)
	}
	if d := fs[0].Expires.Sub(fs[0].Since); d != time.Hour {
		t.Fatalf("expiry %s after the failure, want failure_timeout 1h", d)
	}
	eventTime(t, a, "failure of "+r1+" from the previous run expired while the daemon was down")
	eventTime(t, a, "failure of /gone from the previous run dropped")
	eventTime(t, a, "failure of "+r2+" carried over")
	f := readFailureFile(t, a)
	if len(f.Failures) != 1 || len(f.Restarts[r2]) != 1 {
		t.Fatalf("state file not rewritten: %+v", f)
	}
}

func TestStateDirValidation(t *testing.T) {
	c := testCfg()
	c.StateDir = "var/lib/lockstep"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "state_dir:") {
		t.Fatalf("relative state_dir: %v", err)
	}
}
