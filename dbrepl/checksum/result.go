package checksum

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Table statuses, part of the `repl checksum --json` document.
const (
	StatusConsistent = "consistent"
	StatusDrift      = "drift"
	StatusMissing    = "missing" // the table exists on one node only
	StatusError      = "error"
)

// Comparison methods.
const (
	MethodChunks    = "primary-key chunks"
	MethodWhole     = "whole table (no primary key)"
	MethodSchemaOff = "schema differs"
)

// Row difference kinds.
const (
	KindDiffers = "differs" // same primary key, different column values
	KindMissing = "missing" // the row exists on one node only
)

// Result is the outcome of one checksum run.
type Result struct {
	Nodes           [2]string     `json:"nodes"`
	Consistent      bool          `json:"consistent"`
	TablesChecked   int           `json:"tables_checked"`
	TablesDrifted   int           `json:"tables_drifted"`
	RowsChecked     int64         `json:"rows_checked"`
	DurationSeconds float64       `json:"duration_seconds"`
	Tables          []TableResult `json:"tables"`
	Warnings        []string      `json:"warnings,omitempty"`
}

// TableResult is one table's comparison.
type TableResult struct {
	Schema string `json:"schema"`
	Table  string `json:"table"`
	Status string `json:"status"`
	Method string `json:"method"`
	Note   string `json:"note,omitempty"`
	// Rows counts the rows compared on the first node.
	Rows   int64 `json:"rows"`
	Chunks int   `json:"chunks"`
	// Rechecks counts chunk comparisons repeated after the nodes caught
	// up with each other: mismatches caused by in-flight replication.
	Rechecks  int    `json:"rechecks"`
	MissingOn string `json:"missing_on,omitempty"`
	// DiffCount is the number of differing rows; Diffs lists at most
	// Options.MaxRowsReported of them.
	DiffCount      int       `json:"diff_count"`
	Diffs          []RowDiff `json:"diffs,omitempty"`
	DiffsTruncated bool      `json:"diffs_truncated,omitempty"`
	Error          string    `json:"error,omitempty"`
}

// Name is the qualified `db.table` name.
func (t TableResult) Name() string { return t.Schema + "." + t.Table }

// RowDiff is one row that differs between the nodes.
type RowDiff struct {
	// PrimaryKey is "col=value[,col=value]"; empty for tables without a
	// primary key, where Row identifies the row.
	PrimaryKey string `json:"primary_key,omitempty"`
	Kind       string `json:"kind"`
	OnlyOn     string `json:"only_on,omitempty"`
	MissingOn  string `json:"missing_on,omitempty"`
	// Count is how many more copies of the row one node holds (tables
	// without a primary key may hold duplicates).
	Count   int          `json:"count,omitempty"`
	Columns []ColumnDiff `json:"columns,omitempty"`
	// Row holds the values of a row present on one node only.
	Row map[string]*string `json:"row,omitempty"`
}

// ColumnDiff is one column whose value differs; Values is keyed by node
// name, null for SQL NULL.
type ColumnDiff struct {
	Column string             `json:"column"`
	Values map[string]*string `json:"values"`
	// FirstDifferenceAt is the byte offset of the first difference when
	// both values are non-NULL (a prefix of one another differs at the
	// shorter one's length). Long values are shown from around there.
	FirstDifferenceAt *int `json:"first_difference_at,omitempty"`
}

// firstDifference is the offset of the first differing byte of a and b.
func firstDifference(a, b string) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// showAt renders a value around offset off: a long BLOB that differs
// deep inside is shown where it differs, not by its common prefix.
func showAt(v *string, off *int) string {
	if v == nil || off == nil || len(*v) <= maxValueLen {
		return show(v)
	}
	start := max(0, *off-maxValueLen/4)
	if start == 0 {
		return show(v)
	}
	end := min(len(*v), start+maxValueLen)
	return fmt.Sprintf("…%q…(%d bytes, from byte %d)", (*v)[start:end], len(*v), start)
}

// WriteJSON writes the result as an indented JSON document.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// maxValueLen bounds a rendered value so that a BLOB cannot flood the
// terminal.
const maxValueLen = 64

func show(v *string) string {
	if v == nil {
		return "NULL"
	}
	s := *v
	if len(s) > maxValueLen {
		s = s[:maxValueLen] + fmt.Sprintf("…(%d bytes)", len(*v))
	}
	return fmt.Sprintf("%q", s)
}

// WriteText writes a human report: one line per table with a problem,
// the rows below it, and a summary.
func (r *Result) WriteText(w io.Writer) error {
	var b strings.Builder
	for _, t := range r.Tables {
		switch t.Status {
		case StatusConsistent:
			if t.Note != "" {
				fmt.Fprintf(&b, "%-40s ok (%d rows) — %s\n", t.Name(), t.Rows, t.Note)
			}
			continue
		case StatusMissing:
			fmt.Fprintf(&b, "%-40s MISSING on %s\n", t.Name(), t.MissingOn)
			continue
		case StatusError:
			fmt.Fprintf(&b, "%-40s ERROR: %s\n", t.Name(), t.Error)
			continue
		}
		if t.Method == MethodSchemaOff {
			fmt.Fprintf(&b, "%-40s DRIFT: %s\n", t.Name(), t.Note)
			continue
		}
		fmt.Fprintf(&b, "%-40s DRIFT: %d row(s) differ", t.Name(), t.DiffCount)
		if t.Note != "" {
			fmt.Fprintf(&b, " — %s", t.Note)
		}
		b.WriteString("\n")
		for _, d := range t.Diffs {
			id := d.PrimaryKey
			if id == "" {
				id = "row"
			}
			switch d.Kind {
			case KindMissing:
				fmt.Fprintf(&b, "    %s: only on %s (missing on %s)", id, d.OnlyOn, d.MissingOn)
				if d.Count > 1 {
					fmt.Fprintf(&b, " ×%d", d.Count)
				}
				if d.PrimaryKey == "" && len(d.Row) > 0 {
					b.WriteString(" " + renderRow(d.Row))
				}
				b.WriteString("\n")
			default:
				fmt.Fprintf(&b, "    %s: differs", id)
				for _, c := range d.Columns {
					fmt.Fprintf(&b, " %s:", c.Column)
					if c.FirstDifferenceAt != nil && max(lenOf(c.Values[r.Nodes[0]]), lenOf(c.Values[r.Nodes[1]])) > maxValueLen {
						fmt.Fprintf(&b, " first difference at byte %d:", *c.FirstDifferenceAt)
					}
					fmt.Fprintf(&b, " %s=%s %s=%s;", r.Nodes[0], showAt(c.Values[r.Nodes[0]], c.FirstDifferenceAt), r.Nodes[1], showAt(c.Values[r.Nodes[1]], c.FirstDifferenceAt))
				}
				b.WriteString("\n")
			}
		}
		if t.DiffsTruncated {
			fmt.Fprintf(&b, "    … %d more row(s) not listed\n", t.DiffCount-len(t.Diffs))
		}
	}
	for _, wmsg := range r.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", wmsg)
	}
	verdict := "consistent"
	if !r.Consistent {
		verdict = "DRIFT"
	}
	fmt.Fprintf(&b, "%s: %d table(s), %d row(s) compared between %s and %s in %.2fs; %d table(s) differ\n",
		verdict, r.TablesChecked, r.RowsChecked, r.Nodes[0], r.Nodes[1], r.DurationSeconds, r.TablesDrifted)
	_, err := io.WriteString(w, b.String())
	return err
}

func lenOf(v *string) int {
	if v == nil {
		return 0
	}
	return len(*v)
}

func renderRow(row map[string]*string) string {
	cols := make([]string, 0, len(row))
	for c := range row {
		cols = append(cols, c)
	}
	sort.Strings(cols)
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = c + "=" + show(row[c])
	}
	return "(" + strings.Join(parts, ", ") + ")"
}
