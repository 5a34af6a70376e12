package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/lockstep-ha/lockstep/config"
	"github.com/lockstep-ha/lockstep/dbrepl"
)

func newReplCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "repl",
		Short: "Supervise a MariaDB/MySQL master-master pair",
	}
	cmd.AddCommand(newReplSuperviseCmd(), newReplStatusCmd(), newReplFenceCmd(), newReplUnfenceCmd(), newReplChecksumCmd(), newReplRepairCmd())
	return cmd
}

// replConfig loads the file and insists on a repl: section.
func replConfig(path string) (*config.File, error) {
	f, err := loadConfig(path)
	if err != nil {
		return nil, err
	}
	if f.Repl == nil {
		return nil, usageError(fmt.Errorf("%s: no repl: section", f.Path))
	}
	return f, nil
}

func replLogger(cmd *cobra.Command, debug bool) *slog.Logger {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
}

func newReplSuperviseCmd() *cobra.Command {
	var path, metricsAddr string
	var debug bool
	cmd := &cobra.Command{
		Use:   "supervise -c FILE",
		Short: "Watch both nodes, fence the one that falls behind, reintroduce it once caught up (foreground)",
		Long: `supervise polls both nodes, fences the one that falls behind or breaks
(read_only=ON) and reintroduces it once caught up. Unless
repl.conflicts.enabled is false it also tails both binlogs and logs every
row written on both nodes before either had applied the other's write
(needs REPLICATION SLAVE on the monitoring user).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := replConfig(path)
			if err != nil {
				return err
			}
			logger := replLogger(cmd, debug)
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			// The detector logs each conflict itself; nothing else to tell.
			sup, _, err := newReplSupervisor(*f.Repl, reg, logger, nil)
			if err != nil {
				return usageError(err)
			}
			defer sup.Close()
			ctx := cmd.Context()
			if metricsAddr != "" {
				ln, err := net.Listen("tcp", metricsAddr)
				if err != nil {
					return usageError(fmt.Errorf("--metrics-addr: %w", err))
				}
				mux := http.NewServeMux()
				mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
				srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
				go func() {
					<-ctx.Done()
					_ = srv.Close()
				}()
				go func() {
					if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
						logger.Error("metrics server", "err", err)
					}
				}()
				logger.Info("metrics", "addr", ln.Addr().String())
			}
			return sup.Run(ctx)
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus /metrics on this address (e.g. 127.0.0.1:9431)")
	// The flag's name before it matched `lockstep sync --metrics-addr`.
	cmd.Flags().StringVar(&metricsAddr, "metrics", "", "")
	_ = cmd.Flags().MarkDeprecated("metrics", "use --metrics-addr")
	cmd.Flags().BoolVar(&debug, "debug", false, "debug logging")
	return cmd
}

func newReplFenceCmd() *cobra.Command {
	var path, reason string
	cmd := &cobra.Command{
		Use:   "fence NODE --reason TEXT",
		Short: "Fence a node by hand (read_only=ON); it stays fenced until `repl unfence`",
		Long: "Sets read_only on NODE (verified), writes a manual fence record to state_dir and runs on_fence.\n" +
			"A running supervisor rereads state_dir every poll and keeps the node fenced until `repl unfence`.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := replConfig(path)
			if err != nil {
				return err
			}
			if reason == "" {
				return usageError(errors.New("--reason is required (it is shown in status and passed to hooks)"))
			}
			err = dbrepl.ManualFence(cmd.Context(), *f.Repl, args[0], reason, replLogger(cmd, false))
			if errors.Is(err, dbrepl.ErrUnknownNode) {
				return usageError(err)
			}
			if err != nil {
				return failure(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s fenced (read_only=ON): %s\n", args[0], reason)
			return nil
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().StringVar(&reason, "reason", "", "why (required)")
	return cmd
}

func newReplUnfenceCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "unfence NODE",
		Short: "Lift a manual or automatic fence (read_only=OFF); a node still behind is fenced again by the supervisor",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := replConfig(path)
			if err != nil {
				return err
			}
			err = dbrepl.ManualUnfence(cmd.Context(), *f.Repl, args[0], replLogger(cmd, false))
			if errors.Is(err, dbrepl.ErrUnknownNode) {
				return usageError(err)
			}
			if err != nil {
				return failure(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s unfenced (read_only=OFF)\n", args[0])
			return nil
		},
	}
	addConfigFlag(cmd, &path)
	return cmd
}
