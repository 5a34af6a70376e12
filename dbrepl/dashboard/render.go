// Package dashboard renders the state of a replication pair for people
// (a table, optionally live and coloured) and for programs (JSON).
//
// The `lockstep repl status --json` document is stable (fields are added,
// never renamed):
//
//	verdict        healthy | degraded | fenced | broken | split-brain risk
//	fenced_node    the fenced node when verdict is "fenced"
//	nodes[]        one per node:
//	  name, address, reachable, error (why unreachable)
//	  writable, read_only, fenced, fence_reason, fence_manual, fence_since
//	  io_running, sql_running
//	  lag_seconds            heartbeat lag behind the peer; null when unknown
//	  seconds_behind_master  as the server says; null for NULL
//	  behind_trx             peer transactions not applied; null when unknown
//	  gtid_binlog_pos, gtid_slave_pos, gtid_current_pos (MariaDB),
//	  gtid_executed (MySQL), gtid_retrieved, errant_gtids
//	  binlog_file, binlog_pos
//	  last_errno, last_error, last_error_gtid
//	  heartbeat_age_seconds  age of the newest heartbeat; null when none
//	  observed_at
//	problems[]     human-readable findings
//	conflicts[]    write conflicts seen by the daemon's detector:
//	  schema, table, primary_key, origins[], gtids[], first_seen, last_seen
//	error_rows[]   when replication stopped on 1062/1032: gtid, origin,
//	  broken_node, rows[] {schema, table, primary_key, event, columns[],
//	  versions{node: {column: value|null} | null}}
//	generated_at
package dashboard

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/dbrepl/conflict"
)

// Options control RenderTable.
type Options struct {
	// Color adds ANSI colours: state and verdict by severity, and cells
	// that changed since Previous in reverse video.
	Color bool
	// Previous is the status shown before, to highlight what changed.
	Previous *dbrepl.PairStatus
	// MaxConflicts bounds the conflicts listed (default 5).
	MaxConflicts int
	// ErrorReports are the rows behind a replication stop on 1062/1032
	// (conflict.FetchErrorRows), shown as both nodes have them.
	ErrorReports []*conflict.ErrorReport
}

const (
	ansiReset  = "\x1b[0m"
	ansiBold   = "\x1b[1m"
	ansiRed    = "\x1b[31m"
	ansiGreen  = "\x1b[32m"
	ansiYellow = "\x1b[33m"
	ansiRev    = "\x1b[7m"
)

// Verdict is the verdict line's text: "fenced db2" names the node.
func Verdict(st dbrepl.PairStatus) string {
	if st.Verdict == dbrepl.VerdictFenced && st.FencedNode != "" {
		return st.Verdict + " " + st.FencedNode
	}
	if st.Verdict == "" {
		return "unknown"
	}
	return st.Verdict
}

// ExitCode is what `repl status` exits with: 0 healthy, 1 otherwise.
func ExitCode(st dbrepl.PairStatus) int {
	if st.Verdict == dbrepl.VerdictHealthy {
		return 0
	}
	return 1
}

func verdictColor(v string) string {
	switch v {
	case dbrepl.VerdictHealthy:
		return ansiGreen
	case dbrepl.VerdictDegraded, dbrepl.VerdictFenced:
		return ansiYellow
	default:
		return ansiRed
	}
}

type cell struct {
	text  string
	style string
}

// Columns of the table, in order. Keep in sync with nodeCells.
var header = []string{"NODE", "ADDRESS", "STATE", "IO", "SQL", "LAG", "BEHIND", "HB AGE", "GTID BINLOG", "GTID SLAVE", "BINLOG", "LAST ERROR"}

func state(n dbrepl.NodeStatus) (string, string) {
	switch {
	case !n.Reachable:
		return "UNREACHABLE", ansiRed
	case n.Fenced:
		s := "FENCED"
		if n.FenceManual {
			s += " (manual)"
		}
		return s, ansiRed
	case n.ReadOnly:
		return "read-only", ansiYellow
	default:
		return "writable", ansiGreen
	}
}

func thread(n dbrepl.NodeStatus, running bool) cell {
	switch {
	case !n.Reachable:
		return cell{"-", ""}
	case running:
		return cell{"yes", ""}
	default:
		return cell{"NO", ansiRed}
	}
}

func seconds(v *float64, warnAt float64) cell {
	if v == nil {
		return cell{"?", ansiYellow}
	}
	c := cell{text: formatSeconds(*v)}
	if *v >= warnAt {
		c.style = ansiYellow
	}
	return c
}

func formatSeconds(s float64) string {
	switch {
	case s < 10:
		return fmt.Sprintf("%.2fs", s)
	case s < 120:
		return fmt.Sprintf("%.0fs", s)
	default:
		return (time.Duration(s) * time.Second).String()
	}
}

func lastError(n dbrepl.NodeStatus) string {
	switch {
	case n.LastErrno != 0:
		return fmt.Sprintf("%d %s", n.LastErrno, n.LastError)
	case n.LastError != "":
		return n.LastError
	case n.Error != "":
		return n.Error
	}
	return "-"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func nodeCells(n dbrepl.NodeStatus) []cell {
	st, stStyle := state(n)
	behind := cell{"?", ""}
	if n.BehindTrx != nil {
		behind = cell{fmt.Sprint(*n.BehindTrx), ""}
		if *n.BehindTrx > 0 {
			behind.style = ansiYellow
		}
	}
	binlog := "-"
	if n.BinlogFile != "" {
		binlog = fmt.Sprintf("%s:%d", n.BinlogFile, n.BinlogPos)
	}
	gtidBinlog := n.GTIDBinlogPos
	if gtidBinlog == "" {
		gtidBinlog = n.GTIDExecuted // MySQL
	}
	errCell := cell{truncate(oneLine(lastError(n)), 48), ""}
	if errCell.text != "-" {
		errCell.style = ansiRed
	}
	return []cell{
		{n.Name, ansiBold},
		{orDash(n.Address), ""},
		{st, stStyle},
		thread(n, n.IORunning),
		thread(n, n.SQLRunning),
		seconds(n.LagSeconds, 1),
		behind,
		seconds(n.HeartbeatAge, 5),
		{orDash(gtidBinlog), ""},
		{orDash(n.GTIDSlavePos), ""},
		{binlog, ""},
		errCell,
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// RenderTable writes the dashboard: a row per node, the verdict, then
// details (fence reasons, full errors, problems, recent conflicts).
func RenderTable(w io.Writer, st dbrepl.PairStatus, opts Options) error {
	if opts.MaxConflicts == 0 {
		opts.MaxConflicts = 5
	}
	rows := [][]cell{make([]cell, len(header))}
	for i, h := range header {
		rows[0][i] = cell{h, ansiBold}
	}
	prev := map[string][]cell{}
	if opts.Previous != nil {
		for _, n := range opts.Previous.Nodes {
			prev[n.Name] = nodeCells(n)
		}
	}
	for _, n := range st.Nodes {
		cells := nodeCells(n)
		if p, ok := prev[n.Name]; ok {
			for i := range cells {
				if cells[i].text != p[i].text {
					cells[i].style += ansiRev
				}
			}
		}
		rows = append(rows, cells)
	}
	widths := make([]int, len(header))
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], utf8.RuneCountInString(c.text))
		}
	}
	var b strings.Builder
	for _, r := range rows {
		for i, c := range r {
			pad := widths[i] - utf8.RuneCountInString(c.text)
			if opts.Color && c.style != "" {
				b.WriteString(c.style + c.text + ansiReset)
			} else {
				b.WriteString(c.text)
			}
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", pad+2))
			}
		}
		b.WriteString("\n")
	}

	v := Verdict(st)
	if opts.Color {
		style := ansiBold + verdictColor(st.Verdict)
		if opts.Previous != nil && Verdict(*opts.Previous) != v {
			style += ansiRev
		}
		v = style + v + ansiReset
	}
	fmt.Fprintf(&b, "\nverdict: %s\n", v)
	for _, n := range st.Nodes {
		if n.Fenced {
			since := ""
			if n.FenceSince != nil {
				since = " since " + n.FenceSince.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(&b, "  %s fenced%s: %s\n", n.Name, since, orDash(oneLine(n.FenceReason)))
		}
		if n.FenceDisagrees != "" {
			fmt.Fprintf(&b, "  %s fence record and server DISAGREE: record says fenced, server read_only=%s\n", n.Name, onOff(n.ReadOnly))
		}
		if n.FenceRecordIgnored != "" {
			fmt.Fprintf(&b, "  %s fence record IGNORED (server read_only=%s): it belongs to another server: %s\n", n.Name, onOff(n.ReadOnly), oneLine(n.FenceRecordIgnored))
		}
		if n.LastErrno != 0 || n.LastError != "" || (!n.Reachable && n.Error != "") {
			fmt.Fprintf(&b, "  %s error: %s", n.Name, truncate(oneLine(lastError(n)), 300))
			if n.LastErrorGTID != "" {
				fmt.Fprintf(&b, " (GTID %s)", n.LastErrorGTID)
			}
			b.WriteString("\n")
		}
		if len(n.ErrantGTIDs) > 0 {
			fmt.Fprintf(&b, "  %s errant GTIDs: %s\n", n.Name, strings.Join(n.ErrantGTIDs, ","))
		}
	}
	for _, p := range st.Problems {
		fmt.Fprintf(&b, "  - %s\n", truncate(oneLine(p), 200))
	}
	for _, r := range opts.ErrorReports {
		renderErrorReport(&b, r)
	}
	if len(st.Conflicts) > 0 {
		fmt.Fprintf(&b, "write conflicts (%d, newest last):\n", len(st.Conflicts))
		cs := st.Conflicts
		if len(cs) > opts.MaxConflicts {
			fmt.Fprintf(&b, "  … %d older not shown\n", len(cs)-opts.MaxConflicts)
			cs = cs[len(cs)-opts.MaxConflicts:]
		}
		for _, c := range cs {
			fmt.Fprintf(&b, "  %s %s.%s %s written on %s (%s)\n", c.LastSeen.UTC().Format("15:04:05"), c.Schema, c.Table,
				truncate(c.PrimaryKey, 80), strings.Join(c.Origins, " and "), strings.Join(c.GTIDs, ", "))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// RenderJSON writes the status as the documented `repl status --json`
// document: the fields of dbrepl.PairStatus (lag_seconds null when
// unknown), plus "error_rows" when replication stopped on a row.
func RenderJSON(w io.Writer, st dbrepl.PairStatus, reports ...*conflict.ErrorReport) error {
	if st.Nodes == nil {
		st.Nodes = []dbrepl.NodeStatus{}
	}
	doc := struct {
		dbrepl.PairStatus
		ErrorRows []*conflict.ErrorReport `json:"error_rows,omitempty"`
	}{st, reports}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

func renderErrorReport(b *strings.Builder, r *conflict.ErrorReport) {
	fmt.Fprintf(b, "replication on %s stopped at GTID %s (written on %s); the rows as each node has them:\n", r.BrokenNode, r.GTID, r.Origin)
	for _, row := range r.Rows {
		fmt.Fprintf(b, "  %s.%s %s (%s)\n", row.Schema, row.Table, truncate(row.PrimaryKey, 80), row.Event)
		for _, node := range []string{r.Origin, r.BrokenNode} {
			fmt.Fprintf(b, "    %-6s %s\n", node+":", renderRow(row.Columns, row.Versions[node]))
		}
	}
	if r.Truncated {
		b.WriteString("  … more rows not shown\n")
	}
}

func renderRow(cols []string, row map[string]*string) string {
	if row == nil {
		return "(no such row)"
	}
	if len(cols) == 0 {
		for c := range row {
			cols = append(cols, c)
		}
		sort.Strings(cols)
	}
	parts := make([]string, len(cols))
	for i, c := range cols {
		v := "NULL"
		if row[c] != nil {
			v = fmt.Sprintf("%q", truncate(*row[c], 40))
		}
		parts[i] = c + "=" + v
	}
	return truncate(strings.Join(parts, " "), 200)
}

func onOff(b bool) string {
	if b {
		return "ON"
	}
	return "OFF"
}
