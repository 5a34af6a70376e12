package main

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Kind tells the report how to print a raw figure.
type Kind int

const (
	KindDuration Kind = iota // seconds
	KindBytes
	KindCount
	KindMillis // milliseconds, signed (measurement errors)
	KindBool   // 1 = yes, 0 = no; no ratio
)

// Value is one measured figure; Valid is false when the tool did not
// produce it (it failed, timed out, or the variant was not run).
type Value struct {
	V     float64
	Valid bool
	// Note replaces the number in the report when !Valid ("did not converge in 60s").
	Note string
}

func val(v float64) Value           { return Value{V: v, Valid: true} }
func seconds(d time.Duration) Value { return val(d.Seconds()) }
func missing(why string) Value      { return Value{Note: why} }
func bytesVal(n int64) Value        { return val(float64(n)) }
func millisVal(ms float64) Value    { return val(ms) }

// Row compares lockstep with one anchor tool on one metric.
type Row struct {
	Metric   string
	Kind     Kind
	Lockstep Value
	Anchor   string // e.g. "lsyncd (delay=0, ControlMaster)"
	AnchorV  Value
}

// Ratio is lockstep ÷ anchor, NaN when either side is missing or zero.
func (r Row) Ratio() float64 {
	if r.Kind == KindBool || !r.Lockstep.Valid || !r.AnchorV.Valid || r.AnchorV.V == 0 {
		return math.NaN()
	}
	return r.Lockstep.V / r.AnchorV.V
}

// Status of a scenario in the report.
type Status string

const (
	StatusOK      Status = "ok"
	StatusSkipped Status = "skipped"
	StatusFailed  Status = "failed"
	StatusNotRun  Status = "not run"
)

// Result is what one scenario contributes to the report.
type Result struct {
	ID       int
	Title    string
	Status   Status
	Reason   string   // why skipped / failed / not run (first line shown in the summary)
	Details  []string // long failure output (log tails), shown in fenced blocks
	Rows     []Row
	Notes    []string
	Duration time.Duration
}

func (r *Result) add(row Row) { r.Rows = append(r.Rows, row) }
func (r *Result) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// MachineFacts describe where the figures were taken.
type MachineFacts struct {
	Cores    int
	CPU      string
	MemTotal string
	Kernel   string
	Go       string
	Versions [][2]string // tool, version line (ordered)
	// Load averages at the start and the end of the run: other work on the
	// machine makes absolute figures noisier (ratios less so).
	LoadStart, LoadEnd string
	WorkDir            string // where the synced trees lived
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func gatherFacts(lockstepBin string) MachineFacts {
	f := MachineFacts{Cores: runtime.NumCPU(), Go: runtime.Version(), LoadStart: loadAvg()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		f.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				f.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && k == "MemTotal" {
				f.MemTotal = strings.TrimSpace(v)
				break
			}
		}
	}
	probes := []struct {
		name string
		args []string
		grep string
	}{
		{"lockstep", []string{lockstepBin, "version"}, ""},
		{"lsyncd", []string{"lsyncd", "--version"}, "Version"},
		{"rsync", []string{"rsync", "--version"}, "version"},
		{"OpenSSH", []string{"ssh", "-V"}, "OpenSSH"},
		{"MariaDB", []string{"mariadbd", "--version"}, "Ver"},
		{"pt-heartbeat", []string{"pt-heartbeat", "--version"}, ""},
		{"pt-table-checksum", []string{"pt-table-checksum", "--version"}, ""},
		{"sysbench", []string{"sysbench", "--version"}, ""},
		{"keepalived", []string{"keepalived", "--version"}, "Keepalived"},
	}
	for _, p := range probes {
		f.Versions = append(f.Versions, [2]string{p.name, toolVersion(p.args, p.grep)})
	}
	return f
}

// toolVersion returns the first output line (containing grep, if set) of
// a version command, or why it could not be run.
func toolVersion(args []string, grep string) string {
	path, err := lookTool(args[0])
	if err != nil {
		return "not installed"
	}
	out, err := exec.Command(path, args[1:]...).CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for _, l := range lines {
		if grep == "" || strings.Contains(l, grep) {
			return strings.TrimSpace(l)
		}
	}
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.TrimSpace(lines[0])
}

// lookTool finds a binary in PATH and in the sbin directories that a
// non-login root shell may lack.
func lookTool(name string) (string, error) {
	if strings.Contains(name, "/") {
		if _, err := os.Stat(name); err != nil {
			return "", err
		}
		return name, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := dir + "/" + name
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in PATH or sbin directories", name)
}

// Report is the whole run.
type Report struct {
	Started time.Time
	Elapsed time.Duration
	Smoke   bool
	Facts   MachineFacts
	Results []*Result
}

// Failed reports whether any scenario failed (the harness exits non-zero).
func (r *Report) Failed() bool {
	for _, res := range r.Results {
		if res.Status == StatusFailed {
			return true
		}
	}
	return false
}

// WriteMarkdown renders the report; ratios lead because absolute times on
// shared machines are noisy while both tools ran back to back.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b bytes.Buffer
	mode := "full"
	if r.Smoke {
		mode = "smoke (tiny sizes: checks the harness, figures are not meaningful)"
	}
	fmt.Fprintf(&b, "# lockstep benchmark report\n\n")
	fmt.Fprintf(&b, "Run %s, mode: %s, total %s.\n\n", r.Started.UTC().Format(time.RFC3339), mode, r.Elapsed.Round(time.Second))
	fmt.Fprintf(&b, "Ratio = lockstep ÷ anchor, from the same run on the same machine. For times, bytes and memory, below 1 means lockstep is better. ")
	fmt.Fprintf(&b, "For measurement errors, the table gives absolute values in ms. ")
	fmt.Fprintf(&b, "Reproduce with `make bench` (`go run ./integration/bench -out bench-report.md`); the harness starts its own sshd, lsyncd, MariaDB pair and lockstep daemons and installs nothing.\n\n")

	fmt.Fprintf(&b, "## Summary\n\n| # | Scenario | Status | Metric | lockstep | Anchor | Anchor figure | Ratio |\n|---|---|---|---|---|---|---|---|\n")
	for _, res := range r.Results {
		if len(res.Rows) == 0 {
			fmt.Fprintf(&b, "| %d | %s | %s | — | — | — | — | — |\n", res.ID, cell(res.Title), statusText(res))
			continue
		}
		for i, row := range res.Rows {
			id, title, st := "", "", ""
			if i == 0 {
				id, title, st = fmt.Sprint(res.ID), res.Title, statusText(res)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", id, cell(title), st, cell(row.Metric),
				cell(formatValue(row.Kind, row.Lockstep)), cell(row.Anchor), cell(formatValue(row.Kind, row.AnchorV)), formatRatio(row.Ratio()))
		}
	}
	b.WriteString("\n")

	for _, res := range r.Results {
		fmt.Fprintf(&b, "## %d. %s\n\n", res.ID, res.Title)
		fmt.Fprintf(&b, "Status: %s", res.Status)
		if res.Reason != "" {
			fmt.Fprintf(&b, ": %s", oneLine(firstLine(res.Reason)))
		}
		if res.Duration > 0 {
			fmt.Fprintf(&b, " (scenario took %s)", res.Duration.Round(100*time.Millisecond))
		}
		b.WriteString("\n\n")
		for _, n := range res.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
		if len(res.Notes) > 0 {
			b.WriteString("\n")
		}
		for _, d := range res.Details {
			d = strings.ReplaceAll(d, "```", "'''")
			if len(d) > 4000 {
				d = "…" + d[len(d)-4000:]
			}
			fmt.Fprintf(&b, "<details><summary>failure detail</summary>\n\n```\n%s\n```\n\n</details>\n\n", strings.TrimSpace(d))
		}
	}

	fmt.Fprintf(&b, "## Machine\n\n")
	fmt.Fprintf(&b, "- Cores: %d (%s)\n- Memory: %s\n- Kernel: %s\n- Go: %s\n", r.Facts.Cores, orDash(r.Facts.CPU), orDash(r.Facts.MemTotal), orDash(r.Facts.Kernel), r.Facts.Go)
	if r.Facts.WorkDir != "" {
		fs := "disk"
		if strings.HasPrefix(r.Facts.WorkDir, "/dev/shm") {
			fs = "tmpfs"
		}
		fmt.Fprintf(&b, "- Trees and configs under: %s (%s); the sshd is on 127.0.0.1 behind a byte-counting TCP proxy\n", r.Facts.WorkDir, fs)
	}
	if r.Facts.LoadStart != "" {
		fmt.Fprintf(&b, "- Load average (1/5/15 min) at start: %s, at end: %s\n", r.Facts.LoadStart, orDash(r.Facts.LoadEnd))
	}
	for _, v := range r.Facts.Versions {
		fmt.Fprintf(&b, "- %s: %s\n", v[0], oneLine(v[1]))
	}
	_, err := w.Write(b.Bytes())
	return err
}

func statusText(res *Result) string {
	if res.Status == StatusOK {
		return "ok"
	}
	if res.Reason == "" {
		return string(res.Status)
	}
	return string(res.Status) + ": " + truncate(oneLine(firstLine(res.Reason)), 100)
}

// cell makes s safe inside a Markdown table cell.
func cell(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "\n", " "), "|", "\\|") }

func oneLine(s string) string {
	s = strings.ReplaceAll(strings.TrimSpace(s), "\n", " / ")
	return strings.ReplaceAll(s, "|", "\\|")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func formatValue(k Kind, v Value) string {
	if !v.Valid {
		if v.Note == "" {
			return "—"
		}
		return "n/a (" + truncate(oneLine(v.Note), 80) + ")"
	}
	switch k {
	case KindDuration:
		return formatSeconds(v.V)
	case KindBytes:
		return formatBytes(v.V)
	case KindMillis:
		return fmt.Sprintf("%.1f ms", v.V)
	case KindBool:
		if v.V != 0 {
			return "yes"
		}
		return "**no**"
	default:
		if v.V == math.Trunc(v.V) {
			return fmt.Sprintf("%.0f", v.V)
		}
		return fmt.Sprintf("%.2f", v.V)
	}
}

func formatSeconds(s float64) string {
	switch {
	case s < 0.001:
		return fmt.Sprintf("%.0f µs", s*1e6)
	case s < 1:
		return fmt.Sprintf("%.1f ms", s*1e3)
	case s < 100:
		return fmt.Sprintf("%.2f s", s)
	default:
		return fmt.Sprintf("%.0f s", s)
	}
}

func formatBytes(n float64) string {
	switch {
	case n < 1024:
		return fmt.Sprintf("%.0f B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", n/1024)
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", n/(1<<20))
	default:
		return fmt.Sprintf("%.2f GiB", n/(1<<30))
	}
}

func formatRatio(r float64) string {
	if math.IsNaN(r) || math.IsInf(r, 0) {
		return "—"
	}
	if r < 0.01 {
		return fmt.Sprintf("%.4f", r)
	}
	return fmt.Sprintf("%.2f", r)
}

// Percentile uses the nearest-rank method on a copy of xs.
func Percentile(xs []time.Duration, p float64) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), xs...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	if rank < 1 {
		rank = 1
	}
	if rank > len(s) {
		rank = len(s)
	}
	return s[rank-1]
}
