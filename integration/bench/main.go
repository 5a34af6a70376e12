// Command bench measures lockstep side by side with the tools it replaces
// (lsyncd + rsync over ssh, pt-heartbeat, pt-table-checksum) on the same
// machine in one run, and writes a Markdown report that leads with ratios.
//
//	go run ./integration/bench [-smoke] [-out report.md] [-scenarios 1,2,...]
//
// lockstep is driven through its built binary with generated configs, like
// an admin would run it. A scenario whose anchor tool is missing is
// reported as skipped with the reason; a harness error fails the run.
// The servers, network namespaces, child processes and run configs come
// from internal/testbed, as for the tests and the playground.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// errSkip marks a scenario that cannot run here (a tool is missing, not
// root); it is reported, not counted as a failure.
type errSkip struct{ why string }

func (e errSkip) Error() string { return e.why }

func skipf(format string, args ...any) error { return errSkip{fmt.Sprintf(format, args...)} }

// errNotRun marks a scenario whose lockstep side does not exist yet.
type errNotRun struct{ why string }

func (e errNotRun) Error() string { return e.why }

type scenario struct {
	id    int
	title string
	run   func(ctx context.Context, e *Env, res *Result) error
	// budget bounds the scenario in full mode (smoke uses a fraction).
	budget time.Duration
}

func scenarios() []scenario {
	return []scenario{
		{1, "Single-file propagation", runSingleFile, 6 * time.Minute},
		{2, "Burst: copy of the Go source tree", runBurst, 4 * time.Minute},
		{3, "Big tree: initial sync, watch setup, RSS", runBigTree, 12 * time.Minute},
		{4, "Modification storm", runStorm, 3 * time.Minute},
		{5, "Directory rename", runRename, 3 * time.Minute},
		{6, "Peer outage", runOutage, 3 * time.Minute},
		{7, "Replication lag measurement and fencing", runLag, 5 * time.Minute},
		{8, "Checksum: lockstep repl checksum vs pt-table-checksum", runChecksum, 6 * time.Minute},
		{9, "Failover: writer daemon killed → VIP answering on the survivor", runFailover, 5 * time.Minute},
		{10, "Churn: thousands of random changes, moves across the tree", runChurn, 9 * time.Minute}, // three tools: lockstep and both lsyncd layers
		{11, "Resource death: service killed → answering through the VIP again", runResourceDeath, 5 * time.Minute},
		{12, "Repair: lockstep repl repair vs pt-table-sync (3 drifted rows)", runRepair, 8 * time.Minute},
		{13, "DB watching cost: queries/s, heartbeat writes/s, binlog bytes/s, lag error", runWatchCost, 5 * time.Minute},
		{14, "Reseed: lockstep repl repair --method reseed vs mariadb-dump | mariadb", runReseed, 8 * time.Minute},
		{15, "keepalived side by side: death → VIP answers, node↔node cut (defaults, equal detection)", runKeepalivedSideBySide, 15 * time.Minute},
		{16, "100k tree: initial sync and restart vs rsync", runScale, 15 * time.Minute},
	}
}

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	smoke := fs.Bool("smoke", false, "tiny version of every scenario (seconds): checks the harness, not performance")
	out := fs.String("out", "", "also write the Markdown report to this file")
	only := fs.String("scenarios", "", "comma-separated scenario numbers to run (default: all)")
	keep := fs.Bool("keep", false, "keep the work directory (configs, logs) for inspection")
	verbose := fs.Bool("v", false, "debug logging")
	prebuilt := fs.String("lockstep", "", "use this lockstep binary instead of building ./cmd/lockstep")
	scaleFiles := fs.Int("scale-files", 0, "scenario 16's tree size in files (a tenth as many directories); default 100000, 300 in smoke mode")
	workdir := fs.String("workdir", "", "parent of the work directory (default: /dev/shm when it is a tmpfs with room, else $TMPDIR)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bench: unexpected arguments %q\n", fs.Args())
		return 2
	}
	selected, err := parseSelection(*only)
	if err != nil {
		fmt.Fprintf(stderr, "bench: -scenarios: %v\n", err)
		return 2
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	report, err := Run(ctx, RunOptions{Smoke: *smoke, Selected: selected, Keep: *keep, Logger: logger, Lockstep: *prebuilt, WorkDir: *workdir, ScaleFiles: *scaleFiles})
	if err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
	var md strings.Builder
	_ = report.WriteMarkdown(&md)
	fmt.Fprint(stdout, md.String())
	if *out != "" {
		if err := os.WriteFile(*out, []byte(md.String()), 0o644); err != nil {
			fmt.Fprintf(stderr, "bench: write report: %v\n", err)
			return 1
		}
	}
	if report.Failed() {
		fmt.Fprintln(stderr, "bench: at least one scenario failed (see report)")
		return 1
	}
	return 0
}

func scenarioIDs() string {
	var ids []string
	for _, sc := range scenarios() {
		ids = append(ids, strconv.Itoa(sc.id))
	}
	return strings.Join(ids, ",")
}

func parseSelection(s string) (map[int]bool, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	sel := map[int]bool{}
	for _, part := range strings.Split(s, ",") {
		// Numbers are ids, not positions: the list has gaps.
		n, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil || !slices.ContainsFunc(scenarios(), func(s scenario) bool { return s.id == n }) {
			return nil, fmt.Errorf("%q is not a scenario number (%s)", part, scenarioIDs())
		}
		sel[n] = true
	}
	return sel, nil
}

// RunOptions select what Run does.
type RunOptions struct {
	Smoke    bool
	Selected map[int]bool // nil = all
	Keep     bool
	Logger   *slog.Logger
	Lockstep string // prebuilt binary; "" = go build ./cmd/lockstep
	WorkDir  string // parent of the work directory; "" = pickWorkDir()
	// ScaleFiles overrides scenario 16's tree size (0: the mode's default).
	ScaleFiles int
}

// pickWorkDir prefers tmpfs: both tools then compete on CPU and protocol,
// not on a shared disk's journal, and creating and removing the 100k-file
// trees takes seconds instead of minutes.
func pickWorkDir() string {
	var st syscall.Statfs_t
	const tmpfsMagic = 0x01021994
	if err := syscall.Statfs("/dev/shm", &st); err == nil && st.Type == tmpfsMagic && st.Bavail*uint64(st.Bsize) >= 4<<30 {
		return "/dev/shm"
	}
	return os.TempDir()
}

// Env is what scenarios share: the built binary, a work dir, sizes, and
// lazily started servers.
type Env struct {
	Smoke    bool
	Dir      string
	Lockstep string // built binary
	Sizes    Sizes
	Log      *slog.Logger

	ssh *sshEnv
}

// Run builds lockstep, runs the selected scenarios one after another (never
// concurrently: they compete for the same 2 cores) and returns the report.
func Run(ctx context.Context, o RunOptions) (*Report, error) {
	start := time.Now()
	parent := o.WorkDir
	if parent == "" {
		parent = pickWorkDir()
	}
	dir, err := os.MkdirTemp(parent, "lockstep-bench-")
	if err != nil {
		return nil, err
	}
	if o.Keep {
		o.Logger.Info("keeping work directory", "dir", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	env := &Env{Smoke: o.Smoke, Dir: dir, Log: o.Logger, Sizes: fullSizes()}
	if o.Smoke {
		env.Sizes = smokeSizes()
	}
	if o.ScaleFiles > 0 {
		env.Sizes.ScaleFiles = o.ScaleFiles
	}
	defer env.close()

	bin := o.Lockstep
	if bin == "" {
		o.Logger.Info("building lockstep")
		if bin, err = buildLockstep(ctx, dir); err != nil {
			return nil, err
		}
	} else if bin, err = filepath.Abs(bin); err != nil {
		return nil, err
	}
	env.Lockstep = bin

	rep := &Report{Started: start, Smoke: o.Smoke, Facts: gatherFacts(bin)}
	rep.Facts.WorkDir = dir
	for _, sc := range scenarios() {
		if o.Selected != nil && !o.Selected[sc.id] {
			continue
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		res := &Result{ID: sc.id, Title: sc.title, Status: StatusOK}
		budget := sc.budget
		if o.Smoke {
			budget = budget / 2
		}
		sctx, cancel := context.WithTimeout(ctx, budget)
		o.Logger.Info("scenario start", "id", sc.id, "title", sc.title)
		t0 := time.Now()
		err := runGuarded(sctx, sc, env, res)
		res.Duration = time.Since(t0)
		cancel()
		var skip errSkip
		var notRun errNotRun
		switch {
		case err == nil:
		case errors.As(err, &skip):
			res.Status, res.Reason = StatusSkipped, skip.why
		case errors.As(err, &notRun):
			res.Status, res.Reason = StatusNotRun, notRun.why
		case ctx.Err() != nil:
			return nil, ctx.Err()
		default:
			res.Status, res.Reason = StatusFailed, err.Error()
			if _, rest, ok := strings.Cut(err.Error(), "\n"); ok {
				res.Details = append(res.Details, rest)
			}
		}
		o.Logger.Info("scenario done", "id", sc.id, "status", res.Status, "reason", firstLine(res.Reason), "took", res.Duration.Round(time.Millisecond))
		rep.Results = append(rep.Results, res)
	}
	rep.Elapsed = time.Since(start)
	rep.Facts.LoadEnd = loadAvg()
	return rep, nil
}

// runGuarded turns a panic in a scenario into its failure, so the report
// still gets written.
func runGuarded(ctx context.Context, sc scenario, env *Env, res *Result) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return sc.run(ctx, env, res)
}

func (e *Env) close() {
	if e.ssh != nil {
		e.ssh.close()
	}
}

// scenarioDir makes a fresh directory for one scenario's trees and logs.
func (e *Env) scenarioDir(name string) (string, error) {
	d := filepath.Join(e.Dir, name)
	if err := os.RemoveAll(d); err != nil {
		return "", err
	}
	return d, os.MkdirAll(d, 0o755)
}

// moduleRoot finds the directory holding go.mod, from the working
// directory upwards.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory; run from the lockstep checkout")
		}
		dir = parent
	}
}

func buildLockstep(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "lockstep")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/lockstep")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/lockstep: %v\n%s", err, out)
	}
	return bin, nil
}
