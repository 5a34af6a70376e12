package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
)

func runRepair(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := newReplRepairCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetIn(strings.NewReader("y\n"))
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

func TestReplRepairCommand(t *testing.T) {
	p := mariadbpair.Start(t)
	for _, n := range p.Nodes {
		// Repair writes on the fenced target and controls replication.
		if _, err := n.DB.Exec("SET STATEMENT sql_log_bin=0 FOR GRANT ALL ON *.* TO 'lockstep'@'%'"); err != nil {
			t.Fatal(err)
		}
	}
	db1 := p.Nodes[0].DB
	for _, s := range []string{
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
	if _, err := p.Nodes[1].DB.Exec("SET STATEMENT sql_log_bin=0 FOR UPDATE shop.items SET name = 'changed' WHERE id = 77"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "lockstep.yaml")
	if err := os.WriteFile(cfg, []byte("node: db1\n"+p.ReplConfigYAML(filepath.Join(dir, "state"), "")), 0o600); err != nil {
		t.Fatal(err)
	}

	// A stopped applier: `repl status` names the repair to run.
	if err := p.Nodes[1].StopSQLThread(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := newReplStatusCmd()
	var stOut bytes.Buffer
	st.SetOut(&stOut)
	st.SetErr(&stOut)
	st.SetArgs([]string{"-c", cfg, "--standalone"})
	st.SilenceUsage, st.SilenceErrors = true, true
	_ = st.ExecuteContext(context.Background())
	if want := "lockstep repl repair -c " + cfg + " --source db1 --target db2 --dry-run"; !strings.Contains(stOut.String(), want) {
		t.Errorf("repl status does not recommend %q:\n%s", want, stOut.String())
	}

	if code, _, errOut := runRepair(t, "-c", cfg, "--source", "db1"); code != exitUsage {
		t.Fatalf("missing --target: exit %d %s", code, errOut)
	}
	code, out, errOut := runRepair(t, "-c", cfg, "--source", "db1", "--target", "db2", "--dry-run")
	if code != 0 || !strings.Contains(out, "shop.items") || !strings.Contains(out, "0 to insert, 1 to update, 0 to delete") {
		t.Fatalf("dry run: exit %d\n%s\n%s", code, out, errOut)
	}
	// Not a terminal: no question is asked, the command refuses.
	if code, _, errOut := runRepair(t, "-c", cfg, "--source", "db1", "--target", "db2"); code != exitUsage || !strings.Contains(errOut, "--yes") {
		t.Fatalf("no terminal: exit %d %s", code, errOut)
	}
	code, out, errOut = runRepair(t, "-c", cfg, "--source", "db1", "--target", "db2", "--database", "shop", "--yes")
	if code != 0 || !strings.Contains(out, "verified=true replicating=true unfenced=true") {
		t.Fatalf("repair: exit %d\n%s\n%s", code, out, errOut)
	}
	if strings.Contains(out+errOut, p.MonitorPassword) {
		t.Error("the DSN password appears in the output")
	}
	code, out, _ = runChecksum(t, "-c", cfg)
	if code != 0 {
		t.Fatalf("checksum after repair: exit %d\n%s", code, out)
	}
}
