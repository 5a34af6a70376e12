package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/lockstep-ha/lockstep/dbrepl"
)

// newReplStatusCmd prints one snapshot of the pair. The dashboard issue
// replaces the rendering (dashboard.Render); exit codes are 0 healthy,
// 1 anything else, 2 bad input.
func newReplStatusCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "status -c FILE",
		Short: "Show the replication state of both nodes (exit 0 healthy, 1 not healthy, 2 error)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := replConfig(path)
			if err != nil {
				return err
			}
			logger := slog.New(slog.DiscardHandler)
			st, err := dbrepl.Snapshot(cmd.Context(), *f.Repl, logger)
			if err != nil {
				return usageError(err)
			}
			renderReplStatus(cmd.OutOrStdout(), st)
			if st.Verdict != dbrepl.VerdictHealthy {
				return silentExit(exitFailure)
			}
			return nil
		},
	}
	addConfigFlag(cmd, &path)
	return cmd
}

func renderReplStatus(w io.Writer, st dbrepl.PairStatus) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tADDRESS\tSTATE\tIO\tSQL\tLAG\tBEHIND\tGTID\tBINLOG\tERROR")
	for _, n := range st.Nodes {
		state := "writable"
		switch {
		case !n.Reachable:
			state = "UNREACHABLE"
		case n.Fenced:
			state = "FENCED"
			if n.FenceManual {
				state += "(manual)"
			}
		case n.ReadOnly:
			state = "read-only"
		}
		lag := "-"
		if n.LagSeconds != nil {
			lag = fmt.Sprintf("%.2fs", *n.LagSeconds)
		}
		behind := "-"
		if n.BehindTrx != nil {
			behind = fmt.Sprint(*n.BehindTrx)
		}
		gtid := n.GTIDCurrentPos
		if gtid == "" {
			gtid = n.GTIDExecuted
		}
		binlog := "-"
		if n.BinlogFile != "" {
			binlog = fmt.Sprintf("%s:%d", n.BinlogFile, n.BinlogPos)
		}
		errText := n.Error
		if n.LastErrno != 0 {
			errText = fmt.Sprintf("%d %s", n.LastErrno, n.LastError)
			if n.LastErrorGTID != "" {
				errText += " (GTID " + n.LastErrorGTID + ")"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.Address, state,
			yesNo(n.Reachable, n.IORunning), yesNo(n.Reachable, n.SQLRunning), lag, behind, orDash(gtid), binlog, oneLine(errText, 100))
	}
	_ = tw.Flush()
	verdict := st.Verdict
	if st.Verdict == dbrepl.VerdictFenced {
		verdict += " " + st.FencedNode
	}
	fmt.Fprintf(w, "verdict: %s\n", verdict)
	for _, n := range st.Nodes {
		if n.Fenced {
			fmt.Fprintf(w, "  %s fenced: %s\n", n.Name, n.FenceReason)
		}
	}
	for _, p := range st.Problems {
		fmt.Fprintf(w, "  - %s\n", oneLine(p, 200))
	}
}

func yesNo(known, b bool) string {
	if !known {
		return "-"
	}
	if b {
		return "yes"
	}
	return "NO"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n-3] + "..."
	}
	return s
}
