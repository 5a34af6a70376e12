package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
)

func runStatus(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	cmd := newReplStatusCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	code := exitOK
	if err != nil {
		code = exitCodeOf(err)
		errOut.WriteString(err.Error())
	}
	return code, out.String(), errOut.String()
}

type statusDoc struct {
	Verdict string `json:"verdict"`
	Nodes   []struct {
		Name       string   `json:"name"`
		Reachable  bool     `json:"reachable"`
		Writable   bool     `json:"writable"`
		IORunning  bool     `json:"io_running"`
		SQLRunning bool     `json:"sql_running"`
		LagSeconds *float64 `json:"lag_seconds"`
		LastError  *string  `json:"last_error"`
	} `json:"nodes"`
}

// TestReplStatusAgainstPair checks the JSON document and the exit codes
// against a real pair, standalone: healthy, SQL thread stopped, node down.
func TestReplStatusAgainstPair(t *testing.T) {
	p := mariadbpair.Start(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "lockstep.yaml")
	// listen points nowhere: the standalone path is taken.
	yaml := "node: db1\nlisten: 127.0.0.1:1\n" + p.ReplConfigYAML(filepath.Join(dir, "state"), "")
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	status := func(wantCode int) statusDoc {
		t.Helper()
		code, out, errOut := runStatus(t, "", "-c", cfg, "--json")
		var doc statusDoc
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			t.Fatalf("--json output: %v\n%s\n%s", err, out, errOut)
		}
		if code != wantCode {
			t.Fatalf("exit %d, want %d; verdict %s\n%s", code, wantCode, doc.Verdict, errOut)
		}
		return doc
	}

	doc := status(0)
	if doc.Verdict != dbrepl.VerdictHealthy || len(doc.Nodes) != 2 || !doc.Nodes[0].SQLRunning || !doc.Nodes[1].IORunning {
		t.Fatalf("healthy pair: %+v", doc)
	}
	code, out, _ := runStatus(t, "", "-c", cfg)
	if code != 0 || !strings.Contains(out, "verdict: healthy") || !strings.Contains(out, p.Nodes[1].Addr()) {
		t.Fatalf("table: exit %d\n%s", code, out)
	}

	ctx := context.Background()
	if err := p.Nodes[1].StopSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	doc = status(1)
	if doc.Verdict == dbrepl.VerdictHealthy || doc.Nodes[1].SQLRunning || !doc.Nodes[1].IORunning || !doc.Nodes[0].SQLRunning {
		t.Fatalf("SQL thread stopped on db2: %+v", doc)
	}
	if err := p.Nodes[1].StartSQLThread(ctx); err != nil {
		t.Fatal(err)
	}

	// A manual fence shows as FENCED with its reason.
	if err := dbrepl.ManualFence(ctx, *mustLoadRepl(t, cfg), "db2", "maintenance window", nil); err != nil {
		t.Fatal(err)
	}
	var fenced struct {
		Verdict    string `json:"verdict"`
		FencedNode string `json:"fenced_node"`
		Nodes      []struct {
			Fenced      bool   `json:"fenced"`
			FenceReason string `json:"fence_reason"`
			Writable    bool   `json:"writable"`
		} `json:"nodes"`
	}
	code, out, errOut := runStatus(t, "", "-c", cfg, "--json")
	if err := json.Unmarshal([]byte(out), &fenced); err != nil || code != 1 {
		t.Fatalf("fenced: exit %d %v\n%s\n%s", code, err, out, errOut)
	}
	if fenced.Verdict != dbrepl.VerdictFenced || fenced.FencedNode != "db2" || !fenced.Nodes[1].Fenced ||
		!strings.Contains(fenced.Nodes[1].FenceReason, "maintenance window") || fenced.Nodes[1].Writable || !fenced.Nodes[0].Writable {
		t.Fatalf("fenced db2: %+v", fenced)
	}
	if err := dbrepl.ManualUnfence(ctx, *mustLoadRepl(t, cfg), "db2", nil); err != nil {
		t.Fatal(err)
	}

	// A duplicate-key stop: the rows behind it are shown from both nodes
	// (the monitoring user needs REPLICATION SLAVE and SELECT for that).
	db1, db2 := p.Nodes[0].DB, p.Nodes[1].DB
	for _, q := range []string{
		"GRANT REPLICATION SLAVE, SELECT ON *.* TO 'lockstep'@'%'",
		"CREATE DATABASE app", "CREATE TABLE app.t (id INT PRIMARY KEY, v VARCHAR(20))",
	} {
		if _, err := db1.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.WaitSynced(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := db2.Exec("SET STATEMENT sql_log_bin=0 FOR INSERT INTO app.t VALUES (5, 'db2-local')"); err != nil {
		t.Fatal(err)
	}
	if _, err := db1.Exec("INSERT INTO app.t VALUES (5, 'db1-new')"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := p.Nodes[1].Replication(ctx)
		if err == nil && st.SQLRunning == "No" && strings.Contains(st.LastSQLError, "1062") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("db2's SQL thread did not stop on the duplicate key: %+v %v", st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, out, errOut = runStatus(t, "", "-c", cfg)
	if code != 1 || !strings.Contains(out, "1062") || !strings.Contains(out, "replication on db2 stopped at GTID 1-1-") ||
		!strings.Contains(out, `v="db1-new"`) || !strings.Contains(out, `v="db2-local"`) {
		t.Fatalf("1062 stop: exit %d\n%s\n%s", code, out, errOut)
	}
	_, out, _ = runStatus(t, "", "-c", cfg, "--json")
	if !strings.Contains(out, `"error_rows"`) || !strings.Contains(out, `"primary_key": "id=5"`) {
		t.Fatalf("1062 stop, --json:\n%s", out)
	}

	if err := p.Nodes[1].Kill(); err != nil {
		t.Fatal(err)
	}
	doc = status(1)
	if doc.Nodes[1].Reachable || doc.Nodes[1].LagSeconds != nil || !doc.Nodes[0].Reachable || !doc.Nodes[0].Writable {
		t.Fatalf("db2 down: %+v", doc)
	}

	// --watch with piped input: q ends it cleanly.
	code, out, errOut = runStatus(t, "q", "-c", cfg, "--watch", "--interval", "200ms")
	if code != 0 || !strings.Contains(out, "verdict:") || strings.Contains(out, "\x1b[") {
		t.Fatalf("--watch: exit %d\n%s\n%s", code, out, errOut)
	}
}

// TestReplStatusFromDaemon reads the state from a daemon's /status.
func TestReplStatusFromDaemon(t *testing.T) {
	lag := 0.2
	st := dbrepl.PairStatus{
		Verdict: dbrepl.VerdictFenced, FencedNode: "db2",
		Nodes: []dbrepl.NodeStatus{
			{Name: "db1", Reachable: true, Writable: true, IORunning: true, SQLRunning: true, LagSeconds: &lag},
			{Name: "db2", Reachable: true, ReadOnly: true, Fenced: true, FenceReason: "lag 7.1s over max_lag 5s", IORunning: true, SQLRunning: true},
		},
		Conflicts: []dbrepl.Conflict{{Schema: "app", Table: "t", PrimaryKey: "id=7", Origins: []string{"db1", "db2"}, GTIDs: []string{"1-1-9", "2-2-4"}}},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"node": "db1", "replication": st})
	}))
	defer srv.Close()

	code, out, errOut := runStatus(t, "", "--from", srv.URL+"/status")
	if code != 1 || !strings.Contains(out, "verdict: fenced db2") || !strings.Contains(out, "lag 7.1s over max_lag 5s") || !strings.Contains(out, "app.t id=7") {
		t.Fatalf("--from: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, _ = runStatus(t, "", "--from", srv.URL+"/status", "--json")
	var doc statusDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 1 || doc.Verdict != "fenced" || doc.Nodes[1].LagSeconds != nil {
		t.Fatalf("--from --json: exit %d %v\n%s", code, err, out)
	}
	if code, _, errOut := runStatus(t, "", "--from", srv.URL+"/nope"); code != exitUsage || !strings.Contains(errOut, "404") {
		t.Fatalf("bad URL: exit %d %s", code, errOut)
	}
	if code, _, _ := runStatus(t, "", "--from", "ftp://x"); code != exitUsage {
		t.Fatalf("non-http --from: exit %d", code)
	}
	if code, _, _ := runStatus(t, "", "--from", srv.URL+"/status", "--json", "--watch"); code != exitUsage {
		t.Fatalf("--json --watch: exit %d", code)
	}
}

func mustLoadRepl(t *testing.T, path string) *dbrepl.Config {
	t.Helper()
	f, err := replConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	return f.Repl
}
