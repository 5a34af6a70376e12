package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lockstep-ha/lockstep/orchestrator"
)

func newStatusCmd() *cobra.Command {
	var path, addr string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status -c FILE [--json]",
		Short: "Show the running daemon's status (exit 0 healthy, 1 unhealthy, 2 error)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if addr == "" {
				f, err := loadConfig(path)
				if err != nil {
					return err
				}
				addr = f.Listen
				if addr == "" {
					addr = orchestrator.DefaultListen
				}
			}
			raw, st, err := fetchStatus(cmd.Context(), addr)
			if err != nil {
				return usageError(err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				_, _ = out.Write(raw)
			} else {
				printStatus(out, st)
			}
			if !st.Health.OK {
				return silentExit(exitFailure)
			}
			return nil
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the /status JSON document")
	cmd.Flags().StringVar(&addr, "addr", "", "daemon address (default: listen from the config file)")
	return cmd
}

// dialAddr turns a wildcard listen address into one we can connect to.
func dialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::", "[::]":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

func fetchStatus(ctx context.Context, listen string) ([]byte, *orchestrator.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	url := "http://" + dialAddr(listen) + "/status"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot reach lockstep run at %s (is it running? listen: in the config): %w", listen, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("%s: HTTP %s", url, resp.Status)
	}
	var st orchestrator.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, nil, fmt.Errorf("%s: not a lockstep status document: %w", url, err)
	}
	return raw, &st, nil
}

func ago(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return now.Sub(t).Round(time.Millisecond).String() + " ago"
}

func printStatus(w io.Writer, st *orchestrator.Status) {
	now := st.GeneratedAt
	health := "OK"
	if !st.Health.OK {
		health = "DOWN"
	}
	fmt.Fprintf(w, "node %s  role %s (since %s: %s)\n", st.Node, strings.ToUpper(st.Role), ago(st.RoleSince, now), st.RoleReason)
	fmt.Fprintf(w, "health %s: %s  (agent check: %s)\n", health, st.Health.Reason, st.Health.Agent)
	if st.Recovering != "" {
		fmt.Fprintf(w, "recovering: %s\n", st.Recovering)
	}
	if st.NotEligible != "" {
		fmt.Fprintf(w, "not eligible for the writer role: %s\n", st.NotEligible)
	}
	fmt.Fprintln(w)
	if sf := st.SelfFence; sf != nil && !sf.Holding {
		fmt.Fprintf(w, "SELF-FENCE NOT HOLDING since %s (%d attempts): %s\n\n", ago(sf.Since, now), sf.Attempts, sf.LastError)
	}
	if r := st.ReleaseIncomplete; r != nil {
		next := ""
		if !r.NextAttempt.IsZero() {
			next = fmt.Sprintf(", next attempt in %s", r.NextAttempt.Sub(now).Round(time.Millisecond))
		}
		fmt.Fprintf(w, "RELEASE INCOMPLETE since %s (%d attempts%s): %s may still be up on this node; peers will not take the writer role until it is stopped: %s\n",
			ago(r.Since, now), r.Attempts, next, strings.Join(r.Resources, ", "), r.LastError)
		for _, e := range r.Escalated {
			fmt.Fprintf(w, "  escalated: %s\n", e)
		}
		fmt.Fprintln(w)
	}
	if dw := st.DoubleWriter; dw != nil {
		state := "resolved"
		if dw.Active {
			state = "ACTIVE"
		}
		kept := dw.Kept
		if kept == "" {
			kept = "nobody (both stepped down)"
		}
		fmt.Fprintf(w, "DOUBLE WRITER with %s (%s), detected %s, %d since start: %s keeps the writer role: %s\n\n",
			dw.Peer, state, ago(dw.DetectedAt, now), dw.Count, kept, dw.Why)
	}
	if a := st.Arbiter; a != nil {
		lease := "none"
		if a.Lease != "" {
			lease = fmt.Sprintf("%s (ttl %s, valid for %s before demotion)", a.Lease, a.LeaseTTL, a.LeaseValid.Round(time.Millisecond))
		}
		fmt.Fprintf(w, "arbiter %s %s: connected %t, leader %s (term %d), this node leader %t, lease %s, eligible %t, campaigning %t",
			a.Kind, strings.Join(a.Endpoints, ","), a.Connected, dash(a.Leader), a.Term, a.IsLeader, lease, a.Eligible, a.Campaigning)
		if a.LastError != "" {
			fmt.Fprintf(w, ", last error: %s", a.LastError)
		}
		fmt.Fprint(w, "\n\n")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tADDRESS\tALIVE\tROLE\tDB FENCED\tLAST HEARTBEAT\tREJECTED")
	for _, p := range st.Peers {
		var rej []string
		for k, v := range p.Rejected {
			rej = append(rej, fmt.Sprintf("%s=%d", k, v))
		}
		fmt.Fprintf(tw, "%s\t%s\t%t\t%s\t%t\t%s\t%s\n", p.Name, p.Address, p.Alive, dash(p.Role), p.DBFenced, ago(p.LastHeartbeat, now), dash(strings.Join(rej, " ")))
	}
	tw.Flush()
	if len(st.Witnesses) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "WITNESS\tREACHABLE\tLAST OK\tLAST ERROR")
		for _, x := range st.Witnesses {
			fmt.Fprintf(tw, "%s\t%t\t%s\t%s\n", x.URL, x.Reachable, ago(x.LastOK, now), dash(x.LastError))
		}
		tw.Flush()
	}
	if len(st.Resources) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "RESOURCE\tKIND\tSTATE\tCHANGED\tRESTARTS\tLAST ERROR")
		for _, r := range st.Resources {
			last := r.LastError
			if r.Failure != nil {
				last = "FAILED, not eligible until `lockstep clear " + r.Name + "`"
				if !r.Failure.Expires.IsZero() {
					last += " or " + r.Failure.Expires.Local().Format("15:04:05")
				}
				last += ": " + r.Failure.Reason
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", r.Name, r.Kind, r.State, ago(r.Changed, now), r.Restarts, dash(last))
		}
		tw.Flush()
	}
	if len(st.Tracks) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TRACK\tOK\tLAST CHECK\tCHANGED\tLAST ERROR")
		for _, x := range st.Tracks {
			ok := fmt.Sprint(x.OK)
			if !x.Checked {
				ok = "unchecked"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", x.Name, ok, ago(x.LastCheck, now), ago(x.Changed, now), dash(x.LastError))
		}
		tw.Flush()
	}
	if len(st.Sync) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SYNC JOB\tTARGET\tPROTOCOL\tCONNECTED\tPENDING\tREFUSED\tLAST SYNC\tLAST VERIFIED\tLAST ERROR")
		for _, s := range st.Sync {
			lastErr := s.LastError
			if s.Held != "" {
				lastErr = fmt.Sprintf("HOLDING %d deletion(s): %s", s.HeldDeletes, s.Held)
			}
			proto := dash(s.Protocol)
			if s.ProtocolFallback != "" {
				proto += " (FALLBACK)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%d\t%d\t%s\t%s\t%s\n", s.Job, s.Target, proto, s.Connected, s.PendingFiles, s.Refused,
				ago(s.LastSync, now), ago(s.LastVerified, now), dash(lastErr))
		}
		tw.Flush()
		for _, s := range st.Sync {
			if s.Refused > 0 {
				fmt.Fprintf(w, "  %s -> %s: REFUSED %d path(s), first %s: a symlink where lockstep writes on the peer (not in sync; see the log)\n",
					s.Job, s.Target, s.Refused, s.FirstRefused)
			}
			if s.ProtocolFallback != "" {
				fmt.Fprintf(w, "  %s -> %s: over SFTP because the lockstep receiver is unavailable on the peer: %s (receiver: on refuses this fallback; README: threat model)\n",
					s.Job, s.Target, s.ProtocolFallback)
			}
		}
		for _, s := range st.Sync {
			if s.Progress != nil {
				fmt.Fprintf(w, "  %s -> %s: full pass %s\n", s.Job, s.Target, progressLine(*s.Progress))
			}
		}
	}
	if r := st.Replication; r != nil {
		fmt.Fprintf(w, "\nreplication: %s", r.Verdict)
		if r.FencedNode != "" {
			fmt.Fprintf(w, " (fenced: %s)", r.FencedNode)
		}
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "DB\tREACHABLE\tWRITABLE\tFENCED\tIO/SQL\tLAG")
		for _, n := range r.Nodes {
			lag := "unknown"
			if n.LagSeconds != nil {
				lag = fmt.Sprintf("%.3fs", *n.LagSeconds)
			}
			fmt.Fprintf(tw, "%s\t%t\t%t\t%t\t%s/%s\t%s\n", n.Name, n.Reachable, n.Writable, n.Fenced, yesNo(n.IORunning), yesNo(n.SQLRunning), lag)
		}
		tw.Flush()
	}
	if len(st.Events) > 0 {
		fmt.Fprintln(w, "\nrecent events:")
		start := max(0, len(st.Events)-15)
		for _, e := range st.Events[start:] {
			fmt.Fprintf(w, "  %s  %-10s %s\n", e.Time.Local().Format("2006-01-02 15:04:05.000"), e.Kind, e.Message)
		}
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
