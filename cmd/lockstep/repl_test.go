package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
)

func TestReplFenceStatusUnfenceCLI(t *testing.T) {
	p := mariadbpair.Start(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "lockstep.yaml")
	yaml := "node: web1\n" + p.ReplConfigYAML(filepath.Join(dir, "state"), "")
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := runCLI(t, "repl", "status", "-c", cfgPath)
	if code != exitOK || !strings.Contains(out, "verdict: healthy") || !strings.Contains(out, "db2") {
		t.Fatalf("healthy status: code %d\n%s", code, out)
	}
	if strings.Contains(out, p.MonitorPassword) {
		t.Fatal("status prints the password")
	}
	code, out = runCLI(t, "repl", "fence", "db2", "--reason", "disk swap", "-c", cfgPath)
	if code != exitOK || !strings.Contains(out, "db2 fenced") {
		t.Fatalf("fence: code %d: %s", code, out)
	}
	code, out = runCLI(t, "repl", "status", "-c", cfgPath)
	if code != exitFailure || !strings.Contains(out, "FENCED") || !strings.Contains(out, "manual") || !strings.Contains(out, "verdict: fenced db2") || !strings.Contains(out, "disk swap") {
		t.Fatalf("fenced status: code %d\n%s", code, out)
	}
	code, out = runCLI(t, "repl", "unfence", "db2", "-c", cfgPath)
	if code != exitOK {
		t.Fatalf("unfence: code %d: %s", code, out)
	}
	if code, out := runCLI(t, "repl", "status", "-c", cfgPath); code != exitOK {
		t.Fatalf("status after unfence: code %d\n%s", code, out)
	}
	if code, out := runCLI(t, "repl", "fence", "db7", "--reason", "x", "-c", cfgPath); code != exitUsage || !strings.Contains(out, "db7") {
		t.Errorf("unknown node: code %d %s", code, out)
	}
	if code, _ := runCLI(t, "repl", "fence", "db2", "-c", cfgPath); code != exitUsage {
		t.Errorf("fence without --reason: code %d", code)
	}
	noRepl := filepath.Join(dir, "norepl.yaml")
	os.WriteFile(noRepl, []byte("node: web1\n"), 0o600)
	if code, out := runCLI(t, "repl", "status", "-c", noRepl); code != exitUsage || !strings.Contains(out, "repl") {
		t.Errorf("no repl section: code %d %s", code, out)
	}
}

// `repl supervise` takes --metrics-addr like `sync`; the old --metrics
// still works but is not advertised.
func TestReplSuperviseMetricsFlag(t *testing.T) {
	for _, flag := range []string{"--metrics-addr", "--metrics"} {
		cmd := newReplSuperviseCmd()
		cmd.SetErr(io.Discard)
		if err := cmd.ParseFlags([]string{flag, "127.0.0.1:9431"}); err != nil {
			t.Fatalf("%s: %v", flag, err)
		}
		if got := cmd.Flags().Lookup("metrics-addr").Value.String(); got != "127.0.0.1:9431" {
			t.Errorf("%s: --metrics-addr = %q", flag, got)
		}
	}
	usage := newReplSuperviseCmd().UsageString()
	if !strings.Contains(usage, "--metrics-addr") || strings.Contains(usage, "--metrics ") {
		t.Errorf("usage:\n%s", usage)
	}
}
