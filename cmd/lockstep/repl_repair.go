package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/lockstep-ha/lockstep/dbrepl/repair"
)

// newReplRepairCmd makes the target identical to the source and the pair
// replicating both ways. Exit codes: 0 repaired, verified and both
// directions running; 1 it ran but could not verify (the target stays
// fenced); 2 bad input or a precondition not met.
func newReplRepairCmd() *cobra.Command {
	var path, method, verify string
	var opts repair.Options
	var yes, debug bool
	cmd := &cobra.Command{
		Use:   "repair -c FILE --source NODE --target NODE [--database DB ...] [--method auto|rows|reseed] [--dry-run] [--yes] [--force]",
		Short: "Make the target identical to the source and both directions replicate again (the source keeps serving)",
		Long: `repair fences the target (read_only, a manual fence record), stops its
replication, and reads the source inside a consistent snapshot
(START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY) whose GTID position
it takes from binlog_snapshot_file/position: clients keep writing on the
source, which is never written to. Each table is compared with the
checksum's chunk and row hashes against the snapshot and the differing rows
are fixed on the target with sql_log_bin=0 (method rows). A table whose
definition differs or that exists on one side only is copied whole
(reseed); --method auto also reseeds a table where more than 20% of the rows
differ, --method reseed copies everything. A table with no primary or NOT
NULL unique key is matched by value with counts (auto reseeds it when over
100 values differ).

The target then replicates from the source from the snapshot's position, and
the source skips the target's transactions it had not applied (errant or
conflicting writes, listed with their GTIDs: their changes are lost) and
replicates from the target again. A verifying checksum ends the repair; only
when it is clean and both directions run is the target unfenced. By default
(--verify snapshot) the target is checked against the source's snapshot
sums of the compare pass before its replication resumes: a keyed InnoDB
table is compared and fixed on a session of its own that holds it under
LOCK TABLES ... WRITE (with foreign keys or triggers: locking reads, SELECT
... FOR UPDATE, of every compared row and key gap) against any other
session until the end, so only its fixed chunks are hashed again;
other tables (keyless, non-InnoDB, copied, past 32 such sessions) are hashed
again in full. The serving source is read once. --verify live checksums
both live nodes after replication resumed instead. A repair stopped
half-way leaves the target fenced (and the locked tables' fixes rolled
back): run it again. A copy (reseed) streams the rows with LOAD DATA LOCAL
INFILE, or with extended INSERTs when the target has local_infile off.

The configured account needs SUPER (or READ_ONLY ADMIN and REPLICATION
SLAVE ADMIN), SELECT and RELOAD on the source and all privileges on the
repaired databases of the target. Without --yes the plan is shown and
confirmed on a terminal; with no terminal the command refuses (exit 2).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := replConfig(path)
			if err != nil {
				return err
			}
			opts.Method = method
			switch verify {
			case "snapshot":
			case "live":
				opts.VerifyLive = true
			default:
				return usageError(fmt.Errorf("--verify: %q, want snapshot or live", verify))
			}
			opts.Logger = replLogger(cmd, debug)
			errOut := cmd.ErrOrStderr()
			if !yes && !opts.DryRun {
				in, isFile := cmd.InOrStdin().(*os.File)
				if !isFile || !term.IsTerminal(int(in.Fd())) || !isTTY(errOut) {
					return usageError(errors.New("refusing to ask for confirmation without a terminal: pass --yes (or --dry-run to see the plan)"))
				}
				opts.Confirm = func(plan string) (bool, error) {
					fmt.Fprint(errOut, plan+"proceed? [y/N] ")
					line, err := bufio.NewReader(in).ReadString('\n')
					if err != nil && err != io.EOF {
						return false, err
					}
					a := strings.ToLower(strings.TrimSpace(line))
					return a == "y" || a == "yes", nil
				}
			}
			var bar *progressbar.ProgressBar
			if isTTY(errOut) {
				bar = progressbar.NewOptions64(-1, progressbar.OptionSetWriter(errOut), progressbar.OptionShowCount(),
					progressbar.OptionSetItsString("rows"), progressbar.OptionShowIts(), progressbar.OptionSetPredictTime(true),
					progressbar.OptionClearOnFinish(), progressbar.OptionThrottle(100e6))
				opts.Progress = func(p repair.Progress) {
					bar.ChangeMax64(p.RowsTotal)
					bar.Describe(fmt.Sprintf("%d/%d tables %s", p.TablesDone, p.TablesTotal, p.Table))
					_ = bar.Set64(p.RowsDone)
				}
			}
			rep, err := repair.Run(cmd.Context(), *f.Repl, opts)
			if bar != nil {
				_ = bar.Finish()
			}
			if rep != nil {
				writeRepairReport(cmd.OutOrStdout(), rep)
			}
			if errors.Is(err, repair.ErrUsage) {
				return usageError(err)
			}
			if err != nil {
				fmt.Fprintf(errOut, "repair stopped: %v\n", err)
				if rep != nil && !rep.DryRun {
					fmt.Fprintf(errOut, "%s stays fenced; run the repair again\n", opts.Target)
				}
				return silentExit(exitFailure)
			}
			if !rep.DryRun && !(rep.Verified && rep.Replicating) {
				return silentExit(exitFailure)
			}
			return nil
		},
	}
	addConfigFlag(cmd, &path)
	fl := cmd.Flags()
	fl.StringVar(&opts.Source, "source", "", "node whose data is kept (the writer)")
	fl.StringVar(&opts.Target, "target", "", "node made identical to the source")
	fl.StringArrayVar(&opts.Databases, "database", nil, "repair only this database (repeatable; default: all but the system schemas)")
	fl.StringVar(&method, "method", repair.MethodAuto, "auto, rows or reseed")
	fl.BoolVar(&opts.DryRun, "dry-run", false, "print what would change per table and the GTIDs that would be skipped; change nothing")
	fl.BoolVar(&yes, "yes", false, "do not ask for confirmation")
	fl.BoolVar(&opts.Force, "force", false, "repair from a source that is read-only")
	fl.StringVar(&verify, "verify", "snapshot", "snapshot: hash the whole target against the source's snapshot before replication resumes (the source is read once); live: checksum both live nodes after it resumed (reads the source twice)")
	fl.Int64Var(&opts.ChunkRows, "chunk-rows", repair.DefaultChunkRows, "rows per compared chunk")
	fl.BoolVar(&debug, "debug", false, "debug logging")
	return cmd
}

func writeRepairReport(w io.Writer, r *repair.Report) {
	var b strings.Builder
	verb := "repair"
	if r.DryRun {
		verb = "dry run (nothing changed; counts taken against the live target)"
	}
	fmt.Fprintf(&b, "%s: %s from %s, databases %s\n", verb, r.Target, r.Source, strings.Join(r.Databases, ", "))
	for _, e := range r.BreakErrors {
		fmt.Fprintf(&b, "  replication error: %s\n", e)
	}
	if r.SnapshotGTID != "" {
		fmt.Fprintf(&b, "  source snapshot at GTID %s\n", r.SnapshotGTID)
	}
	for _, t := range r.Tables {
		switch t.Method {
		case "clean":
			continue
		case "drop":
			fmt.Fprintf(&b, "  %-40s drop (%s)\n", t.Table, t.Why)
		case repair.MethodReseed:
			fmt.Fprintf(&b, "  %-40s reseed: %d row(s) copied — %s\n", t.Table, t.Copied, t.Why)
		default:
			fmt.Fprintf(&b, "  %-40s rows: %d to insert, %d to update, %d to delete — %s\n", t.Table, t.Inserted, t.Updated, t.Deleted, t.Why)
		}
	}
	if len(r.SkippedGTIDs) > 0 {
		what := "skipped"
		if r.DryRun {
			what = "would skip"
		}
		fmt.Fprintf(&b, "  %s %s the target's transactions it had not applied: %s\n", r.Source, what, strings.Join(r.SkippedGTIDs, ","))
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "  note: %s\n", n)
	}
	for _, c := range r.Checksum {
		if !c.Consistent {
			_ = c.WriteText(&b)
		}
	}
	if !r.DryRun {
		fmt.Fprintf(&b, "verified=%v replicating=%v unfenced=%v in %s (prepare and fence %s, snapshot %s, compare and fix %s of which fixes %s and commit %s, resume %s, verify against the %s %s)\n", r.Verified, r.Replicating, r.Unfenced,
			r.Duration.Round(1e6), r.PrepareTime.Round(1e6), r.SnapshotTime.Round(1e6), r.CopyTime.Round(1e6), r.FixTime.Round(1e6), r.CommitTime.Round(1e6),
			r.ResumeTime.Round(1e6), orSnapshot(r.VerifiedAgainst), r.VerifyTime.Round(1e6))
	}
	_, _ = io.WriteString(w, b.String())
}

// orSnapshot names what the repair verified against.
func orSnapshot(against string) string {
	if against == "live" {
		return "live source"
	}
	return "source's snapshot"
}
