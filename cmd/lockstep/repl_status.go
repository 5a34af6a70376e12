package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lockstep-ha/lockstep/config"
	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/dbrepl/conflict"
	"github.com/lockstep-ha/lockstep/dbrepl/dashboard"
	"github.com/lockstep-ha/lockstep/dbrepl/repair"
)

// newReplStatusCmd shows the pair: one snapshot (table or --json) or a
// live dashboard (--watch). Exit codes: 0 healthy, 1 degraded, fenced,
// broken or split-brain risk, 2 error. The state comes from the running
// daemon's /status when it answers (--from URL, or the config's listen
// address), else from the databases directly.
func newReplStatusCmd() *cobra.Command {
	var path, from string
	var asJSON, watch, standalone bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "status -c FILE [--json | --watch [--interval D]] [--from URL]",
		Short: "Show the replication state of both nodes (exit 0 healthy, 1 not healthy, 2 error)",
		Long: `Shows one row per node (state, replication threads, lag per direction,
transactions behind, GTID positions, binlog position, last error, heartbeat age)
and a verdict: healthy, degraded, fenced <node>, broken or split-brain risk.

The state is read from the lockstep daemon when it runs (its /status endpoint:
--from URL, or http://<listen>/status from the config file), so that fences and
write conflicts it recorded are shown; otherwise, or with --standalone, both
databases are queried directly.

--json prints the documented status document (README: "repl status --json").
--watch refreshes every --interval until q or Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asJSON && watch {
				return usageError(fmt.Errorf("--json and --watch are exclusive"))
			}
			if interval < 100*time.Millisecond {
				return usageError(fmt.Errorf("--interval: %s is below the 100ms minimum", interval))
			}
			fetch, title, replCfg, err := statusSource(cmd, path, from, standalone)
			if err != nil {
				return err
			}
			if watch {
				err := dashboard.Watch(cmd.Context(), cmd.InOrStdin(), cmd.OutOrStdout(), fetch,
					dashboard.WatchOptions{Interval: interval, Title: title})
				if err != nil {
					return usageError(err)
				}
				return nil
			}
			st, err := fetch(cmd.Context())
			if err != nil {
				return usageError(err)
			}
			reports := errorRows(cmd.Context(), replCfg, &st)
			if replCfg != nil {
				if adv := repair.Advice(st, configPathOf(path)); adv != "" {
					st.Problems = append(st.Problems, "to repair: "+adv)
				}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				err = dashboard.RenderJSON(out, st, reports...)
			} else {
				err = dashboard.RenderTable(out, st, dashboard.Options{Color: isTTY(out), ErrorReports: reports})
			}
			if err != nil {
				return usageError(err)
			}
			if code := dashboard.ExitCode(st); code != exitOK {
				return silentExit(code)
			}
			return nil
		},
	}
	addConfigFlag(cmd, &path)
	fl := cmd.Flags()
	fl.BoolVar(&asJSON, "json", false, "print the status as JSON")
	fl.BoolVar(&watch, "watch", false, "refresh live until q or Ctrl-C")
	fl.DurationVar(&interval, "interval", time.Second, "refresh period for --watch")
	fl.StringVar(&from, "from", "", "read the state from a lockstep daemon's /status URL (e.g. http://127.0.0.1:9430/status)")
	fl.BoolVar(&standalone, "standalone", false, "query the databases directly even when the daemon runs")
	return cmd
}

// statusSource picks where the state comes from: an explicit URL, the
// daemon named by the config's listen address when it answers, or the
// databases themselves.
func statusSource(cmd *cobra.Command, path, from string, standalone bool) (dashboard.Fetcher, string, *dbrepl.Config, error) {
	if from != "" {
		if !strings.HasPrefix(from, "http://") && !strings.HasPrefix(from, "https://") {
			return nil, "", nil, usageError(fmt.Errorf("--from: %q is not an http(s) URL", from))
		}
		return func(ctx context.Context) (dbrepl.PairStatus, error) { return fetchDaemonStatus(ctx, from) }, from, nil, nil
	}
	f, err := replConfig(path)
	if err != nil {
		return nil, "", nil, err
	}
	cfg := *f.Repl
	if !standalone && f.Listen != "" {
		url := daemonStatusURL(f)
		ctx, cancel := context.WithTimeout(cmd.Context(), time.Second)
		_, err := fetchDaemonStatus(ctx, url)
		cancel()
		if err == nil {
			return func(ctx context.Context) (dbrepl.PairStatus, error) { return fetchDaemonStatus(ctx, url) }, url, &cfg, nil
		}
	}
	logger := slog.New(slog.DiscardHandler)
	return func(ctx context.Context) (dbrepl.PairStatus, error) {
		return dbrepl.Snapshot(ctx, cfg, logger)
	}, f.Path, &cfg, nil
}

// errorRows reads, for a node whose replication stopped on a duplicate
// key (1062) or a missing row (1032), the failing transaction's rows from
// both nodes. It needs the configured user to have REPLICATION SLAVE and
// SELECT; when it cannot, the reason is added to the problems shown.
func errorRows(ctx context.Context, cfg *dbrepl.Config, st *dbrepl.PairStatus) []*conflict.ErrorReport {
	if cfg == nil || len(cfg.Nodes) != 2 {
		return nil
	}
	var out []*conflict.ErrorReport
	for _, n := range st.Nodes {
		if n.LastErrno != 1062 && n.LastErrno != 1032 {
			continue
		}
		i := slices.IndexFunc(cfg.Nodes, func(nc dbrepl.NodeConfig) bool { return nc.Name == n.Name })
		if i < 0 {
			continue
		}
		broken := conflict.Source{Name: cfg.Nodes[i].Name, DSN: cfg.Nodes[i].DSN}
		peer := conflict.Source{Name: cfg.Nodes[1-i].Name, DSN: cfg.Nodes[1-i].DSN}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		r, err := conflict.FetchErrorRows(rctx, broken, peer, 10, nil)
		cancel()
		if err != nil {
			st.Problems = append(st.Problems, fmt.Sprintf("%s: cannot show the rows behind error %d: %v", n.Name, n.LastErrno, err))
			continue
		}
		out = append(out, r)
	}
	return out
}

func daemonStatusURL(f *config.File) string {
	host, port, err := net.SplitHostPort(f.Listen)
	if err != nil {
		return "http://" + f.Listen + "/status"
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/status"
}

// fetchDaemonStatus reads the `replication` field of the daemon's /status
// document. A bare PairStatus document is accepted too.
func fetchDaemonStatus(ctx context.Context, url string) (dbrepl.PairStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return dbrepl.PairStatus{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return dbrepl.PairStatus{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return dbrepl.PairStatus{}, fmt.Errorf("%s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return dbrepl.PairStatus{}, fmt.Errorf("%s: %s", url, resp.Status)
	}
	var doc struct {
		Replication *dbrepl.PairStatus `json:"replication"`
		Verdict     string             `json:"verdict"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return dbrepl.PairStatus{}, fmt.Errorf("%s: not a lockstep status document: %w", url, err)
	}
	if doc.Replication != nil {
		return *doc.Replication, nil
	}
	if doc.Verdict != "" {
		var st dbrepl.PairStatus
		if err := json.Unmarshal(body, &st); err != nil {
			return dbrepl.PairStatus{}, fmt.Errorf("%s: %w", url, err)
		}
		return st, nil
	}
	return dbrepl.PairStatus{}, fmt.Errorf("%s: the daemon does not supervise replication (no repl: section)", url)
}

// configPathOf is the -c value to print in a suggested command.
func configPathOf(path string) string {
	if path == "" {
		return "FILE"
	}
	return path
}
