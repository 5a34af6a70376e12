package dashboard

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/dbrepl/conflict"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func f64(v float64) *float64 { return &v }
func i64(v int64) *int64     { return &v }

var at = time.Date(2026, 11, 22, 5, 0, 0, 0, time.UTC)

func healthy() dbrepl.PairStatus {
	return dbrepl.PairStatus{
		Verdict:     dbrepl.VerdictHealthy,
		GeneratedAt: at,
		Nodes: []dbrepl.NodeStatus{
			{Name: "db1", Address: "10.0.0.1:3306", Reachable: true, Writable: true, IORunning: true, SQLRunning: true,
				LagSeconds: f64(0.12), BehindTrx: i64(0), HeartbeatAge: f64(0.25), GTIDBinlogPos: "1-1-1200,2-2-877",
				GTIDSlavePos: "2-2-877", GTIDCurrentPos: "1-1-1200,2-2-877", BinlogFile: "db1-bin.000003", BinlogPos: 91234, ObservedAt: at},
			{Name: "db2", Address: "10.0.0.2:3306", Reachable: true, Writable: true, IORunning: true, SQLRunning: true,
				LagSeconds: f64(0.08), BehindTrx: i64(0), HeartbeatAge: f64(0.25), GTIDBinlogPos: "1-1-1200,2-2-877",
				GTIDSlavePos: "1-1-1200", GTIDCurrentPos: "1-1-1200,2-2-877", BinlogFile: "db2-bin.000002", BinlogPos: 5521, ObservedAt: at},
		},
	}
}

func fencedBroken() dbrepl.PairStatus {
	st := healthy()
	st.Verdict = dbrepl.VerdictFenced
	st.FencedNode = "db2"
	since := at.Add(-90 * time.Second)
	n := &st.Nodes[1]
	n.Writable, n.ReadOnly, n.Fenced, n.FenceSince = false, true, true, &since
	n.FenceReason = "replication broken: SQL thread stopped with error 1062"
	n.SQLRunning = false
	n.LagSeconds = nil
	n.BehindTrx = i64(14)
	n.HeartbeatAge = f64(93.4)
	n.LastErrno = 1062
	n.LastError = "Could not execute Write_rows_v1 event on table app.users; Duplicate entry '42' for key 'PRIMARY', Error_code: 1062; handler error HA_ERR_FOUND_DUPP_KEY"
	n.LastErrorGTID = "1-1-1201"
	st.Problems = []string{"db2: SQL thread stopped (1062)"}
	st.Conflicts = []dbrepl.Conflict{{Schema: "app", Table: "users", PrimaryKey: "id=42", Origins: []string{"db1", "db2"},
		GTIDs: []string{"1-1-1201", "2-2-878"}, FirstSeen: at.Add(-95 * time.Second), LastSeen: at.Add(-94 * time.Second)}}
	return st
}

func str(s string) *string { return &s }

func errorReport() *conflict.ErrorReport {
	return &conflict.ErrorReport{GTID: "1-1-1201", Origin: "db1", BrokenNode: "db2", Rows: []conflict.ErrorRow{{
		Schema: "app", Table: "users", PrimaryKey: "id=42", Event: "insert", Columns: []string{"id", "name", "email"},
		Versions: map[string]map[string]*string{
			"db1": {"id": str("42"), "name": str("alice"), "email": nil},
			"db2": {"id": str("42"), "name": str("bob"), "email": str("bob@x")},
		}}, {
		Schema: "app", Table: "users", PrimaryKey: "id=43", Event: "insert",
		Versions: map[string]map[string]*string{"db1": {"id": str("43")}, "db2": nil},
	}}}
}

func unreachable() dbrepl.PairStatus {
	st := healthy()
	st.Verdict = dbrepl.VerdictDegraded
	st.Nodes[1] = dbrepl.NodeStatus{Name: "db2", Address: "10.0.0.2:3306", Error: "dial tcp 10.0.0.2:3306: connect: connection refused"}
	st.Nodes[0].IORunning = false
	st.Nodes[0].LagSeconds = nil
	st.Nodes[0].BehindTrx = nil
	return st
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from golden file (run go test -update to accept):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestRenderTableGolden(t *testing.T) {
	prev := healthy()
	for _, tc := range []struct {
		name string
		st   dbrepl.PairStatus
		opts Options
	}{
		{"healthy", healthy(), Options{}},
		{"fenced", fencedBroken(), Options{}},
		{"unreachable", unreachable(), Options{}},
		{"fenced_color_changes", fencedBroken(), Options{Color: true, Previous: &prev}},
		{"fenced_error_rows", fencedBroken(), Options{ErrorReports: []*conflict.ErrorReport{errorReport()}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := RenderTable(&b, tc.st, tc.opts); err != nil {
				t.Fatal(err)
			}
			if !tc.opts.Color && strings.Contains(b.String(), "\x1b[") {
				t.Fatal("escape codes without colour")
			}
			golden(t, "table_"+tc.name, b.Bytes())
		})
	}
}

func TestRenderTableContent(t *testing.T) {
	var b bytes.Buffer
	prev := healthy()
	_ = RenderTable(&b, fencedBroken(), Options{Color: true, Previous: &prev})
	out := b.String()
	for _, want := range []string{"verdict: ", "fenced db2", "FENCED", "1062", "GTID 1-1-1201", "id=42", "db1 and db2"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// The SQL thread went from yes to NO: highlighted as a change.
	if !strings.Contains(out, ansiRed+ansiRev+"NO"+ansiReset) {
		t.Errorf("changed SQL cell not highlighted:\n%q", out)
	}
	// Unchanged cells are not.
	if strings.Contains(out, ansiBold+ansiRev+"db1") {
		t.Error("unchanged node name highlighted")
	}
}

func TestVerdictAndExitCode(t *testing.T) {
	for _, tc := range []struct {
		st   dbrepl.PairStatus
		text string
		code int
	}{
		{healthy(), "healthy", 0},
		{fencedBroken(), "fenced db2", 1},
		{unreachable(), "degraded", 1},
		{dbrepl.PairStatus{Verdict: dbrepl.VerdictSplitBrain}, "split-brain risk", 1},
		{dbrepl.PairStatus{Verdict: dbrepl.VerdictBroken}, "broken", 1},
	} {
		if got := Verdict(tc.st); got != tc.text {
			t.Errorf("Verdict = %q, want %q", got, tc.text)
		}
		if got := ExitCode(tc.st); got != tc.code {
			t.Errorf("ExitCode(%s) = %d, want %d", tc.text, got, tc.code)
		}
	}
}

func TestRenderJSONStable(t *testing.T) {
	var b bytes.Buffer
	if err := RenderJSON(&b, fencedBroken()); err != nil {
		t.Fatal(err)
	}
	golden(t, "status_fenced.json", b.Bytes())
	var doc map[string]any
	if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc["verdict"] != "fenced" || doc["fenced_node"] != "db2" {
		t.Fatalf("verdict fields: %v %v", doc["verdict"], doc["fenced_node"])
	}
	nodes := doc["nodes"].([]any)
	n2 := nodes[1].(map[string]any)
	for _, k := range []string{"name", "reachable", "writable", "fenced", "fence_reason", "io_running", "sql_running",
		"lag_seconds", "behind_trx", "gtid_binlog_pos", "gtid_slave_pos", "last_error"} {
		if _, ok := n2[k]; !ok {
			t.Errorf("node document lacks %q", k)
		}
	}
	if v, ok := n2["lag_seconds"]; !ok || v != nil {
		t.Errorf("unknown lag must be null, got %v", v)
	}
	if _, ok := doc["error_rows"]; ok {
		t.Error("error_rows present without reports")
	}
	b.Reset()
	if err := RenderJSON(&b, fencedBroken(), errorReport()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `"error_rows"`) || !strings.Contains(b.String(), `"gtid": "1-1-1201"`) {
		t.Errorf("error rows missing from JSON:\n%s", b.String())
	}
}
