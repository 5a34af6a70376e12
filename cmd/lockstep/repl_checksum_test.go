package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl/checksum"
	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
)

// runChecksum runs the command on its own (the lead wires it under
// `repl`), returning the exit code the binary would have.
func runChecksum(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := newReplChecksumCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.ExecuteContext(context.Background())
	code := exitOK
	if err != nil {
		code = exitCodeOf(err)
		errOut.WriteString(err.Error())
	}
	return code, out.String(), errOut.String()
}

func TestReplChecksumCommand(t *testing.T) {
	p := mariadbpair.Start(t)
	db1 := p.Nodes[0].DB
	for _, s := range []string{
		// The monitoring user needs SELECT on the compared data.
		"GRANT SELECT ON *.* TO 'lockstep'@'%'",
		"CREATE DATABASE shop",
		"CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(20))",
		"INSERT INTO shop.items SELECT seq, CONCAT('item', seq) FROM shop.seq_1_to_500",
	} {
		if _, err := db1.Exec(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	if err := p.WaitSynced(context.Background(), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "lockstep.yaml")
	if err := os.WriteFile(cfg, []byte("node: db1\n"+p.ReplConfigYAML(filepath.Join(dir, "state"), "")), 0o600); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := runChecksum(t, "-c", cfg)
	if code != 0 || !strings.Contains(out, "consistent: 1 table(s), 500 row(s)") {
		t.Fatalf("consistent pair: exit %d\n%s\n%s", code, out, errOut)
	}

	if _, err := p.Nodes[1].DB.Exec("SET STATEMENT sql_log_bin=0 FOR UPDATE shop.items SET name = 'changed' WHERE id = 77"); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = runChecksum(t, "-c", cfg, "--database", "shop")
	if code != exitFailure || !strings.Contains(out, "shop.items") || !strings.Contains(out, "id=77") || !strings.Contains(out, `"changed"`) {
		t.Fatalf("drift: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, _ = runChecksum(t, "-c", cfg, "--json")
	var res checksum.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != exitFailure {
		t.Fatalf("--json: exit %d, %v\n%s", code, err, out)
	}
	if res.Consistent || len(res.Tables) != 1 || res.Tables[0].Diffs[0].PrimaryKey != "id=77" {
		t.Fatalf("--json result: %+v", res)
	}

	if code, _, errOut := runChecksum(t, "-c", cfg, "--table", "items"); code != exitUsage || !strings.Contains(errOut, "--table needs --database") {
		t.Fatalf("--table without --database: exit %d %s", code, errOut)
	}
	if code, _, errOut := runChecksum(t, "-c", filepath.Join(dir, "missing.yaml")); code != exitUsage {
		t.Fatalf("missing config: exit %d %s", code, errOut)
	}
}
