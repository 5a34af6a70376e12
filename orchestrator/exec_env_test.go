package orchestrator

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestExecResourceEnvironment: an exec resource sees PATH, LANG and its
// documented LOCKSTEP_* variables, never the daemon's environment (where
// the database password usually is).
func TestExecResourceEnvironment(t *testing.T) {
	t.Setenv("REPL_DB_PASSWORD", "hunter2-do-not-leak")
	dir := t.TempDir()
	dump := filepath.Join(dir, "env")
	script := lsbScript(t, dir, "svc", filepath.Join(dir, "calls"), `env > `+dump)
	rs := []Resource{NewExec(script, 5*time.Second)}
	labelResources(rs, NodeConfig{Name: "web1", DB: "db1"})
	if err := rs[0].Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(dump)
	if err != nil {
		t.Fatal(err)
	}
	env := string(b)
	if strings.Contains(env, "hunter2") {
		t.Fatalf("the daemon's environment reached the script:\n%s", env)
	}
	for _, want := range []string{"LOCKSTEP_ACTION=start", "LOCKSTEP_NODE=web1", "LOCKSTEP_DB=db1", "PATH=/usr/local/sbin:"} {
		if !strings.Contains(env, want) {
			t.Fatalf("script environment lacks %s:\n%s", want, env)
		}
	}
}

// TestMonitoredExecEnvironment: NewResources wraps an exec resource with
// its monitor; labelling must reach both the actions and the monitor's
// status check.
func TestMonitoredExecEnvironment(t *testing.T) {
	dir := t.TempDir()
	dump := filepath.Join(dir, "env")
	script := lsbScript(t, dir, "svc", filepath.Join(dir, "calls"), `env > `+dump)
	rs, err := NewResources([]ResourceConfig{{Exec: script}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	labelResources(rs, NodeConfig{Name: "web1", DB: "db1"})
	m, ok := rs[0].(*monitored)
	if !ok {
		t.Fatalf("resource is %T, want *monitored", rs[0])
	}
	for _, step := range []struct {
		action string
		run    func() error
	}{
		{"start", func() error { return m.Start(context.Background()) }},
		{"status", func() error {
			if f := m.check(context.Background()); f != nil {
				return f.err
			}
			return nil
		}},
	} {
		if err := step.run(); err != nil {
			t.Fatalf("%s: %v", step.action, err)
		}
		b, err := os.ReadFile(dump)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"LOCKSTEP_ACTION=" + step.action, "LOCKSTEP_NODE=web1", "LOCKSTEP_DB=db1"} {
			if !strings.Contains(string(b), want) {
				t.Fatalf("%s: script environment lacks %s:\n%s", step.action, want, b)
			}
		}
	}
}
