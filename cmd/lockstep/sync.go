package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/lockstep-ha/lockstep/config"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/localtarget"
	"github.com/lockstep-ha/lockstep/lsync/sftptarget"
)

func newSyncCmd() *cobra.Command {
	var path, jobName, metricsAddr string
	var once, allowMassDelete, full, debug bool
	cmd := &cobra.Command{
		Use:   "sync -c FILE [--once] [--job NAME]",
		Short: "Keep docroots identical on every node (the lsyncd + rsync replacement)",
		Long: `sync watches each sync job's source tree and pushes every change to the
job's targets within milliseconds. With --once it runs one reconciliation
pass per job and exits 0 only when every target matches the source.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if full && !once {
				return usageError(fmt.Errorf("--full is about one pass: use it with --once"))
			}
			if allowMassDelete && !once {
				return usageError(fmt.Errorf("--allow-mass-delete confirms one pass: use it with --once"))
			}
			f, err := loadConfig(path)
			if err != nil {
				return err
			}
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug // each batch and each operation
			}
			logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			reg := prometheus.NewRegistry()
			// The daemon's own memory and CPU, next to the sync metrics,
			// as `lockstep run` serves them.
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			jobs, err := buildSyncJobs(f, jobName, logger, reg)
			if err != nil {
				return err
			}
			for _, sj := range jobs {
				sj.job.AllowMassDelete(allowMassDelete)
				sj.job.FullOnce(full)
			}
			if once {
				return runSyncOnce(cmd.Context(), cmd.OutOrStdout(), jobs)
			}
			return runSyncDaemon(cmd.Context(), metricsAddr, jobs, logger)
		},
	}
	addConfigFlag(cmd, &path)
	_ = cmd.MarkFlagRequired("config")
	cmd.Flags().BoolVar(&debug, "debug", false, "debug logging (each batch and each operation on the targets)")
	cmd.Flags().BoolVar(&once, "once", false, "run one reconciliation pass and exit (0: all targets match, 1: something differs)")
	cmd.Flags().StringVar(&jobName, "job", "", "run only the sync job with this name")
	cmd.Flags().BoolVar(&full, "full", false, "with --once: list every target and compare it with the source, instead of trusting the sync state for what was synced before")
	cmd.Flags().BoolVar(&allowMassDelete, "allow-mass-delete", false, "with --once: confirm deletions the mass-deletion guard (max_delete, an empty source) holds")
	// Not the config's `listen:`: that address belongs to `lockstep run`,
	// which runs the sync jobs itself and serves their metrics.
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus metrics on this address (e.g. 127.0.0.1:9431) when running standalone")
	return cmd
}

// syncJob pairs a job with the registry its metrics live in.
type syncJob struct {
	job *lsync.Job
	reg *prometheus.Registry
}

// buildSyncJobs builds one Job per `sync:` entry (or just --job).
func buildSyncJobs(f *config.File, only string, logger *slog.Logger, reg *prometheus.Registry) ([]syncJob, error) {
	if len(f.Sync) == 0 {
		return nil, usageError(fmt.Errorf("%s: no `sync:` jobs configured", f.Path))
	}
	var names []string
	var out []syncJob
	for _, jc := range f.Sync {
		names = append(names, jc.Name)
		if only != "" && jc.Name != only {
			continue
		}
		var conns []lsync.Connector
		for _, tc := range jc.Targets {
			var c lsync.Connector
			var err error
			if tc.IsLocal() {
				c, err = localtarget.NewConnector(tc)
			} else {
				c, err = sftptarget.NewConnector(tc, logger.With("job", jc.Name))
			}
			if err != nil {
				for _, j := range out {
					j.job.Stop()
				}
				return nil, usageError(fmt.Errorf("%s: sync job %q target %q: %w", f.Path, jc.Name, tc.Name, err))
			}
			conns = append(conns, c)
		}
		j, err := lsync.NewJob(jc, conns, lsync.JobOptions{Node: f.Node, Logger: logger, Registerer: reg})
		if err != nil {
			for _, j := range out {
				j.job.Stop()
			}
			return nil, usageError(fmt.Errorf("%s: %w", f.Path, err))
		}
		out = append(out, syncJob{job: j, reg: reg})
	}
	if len(out) == 0 {
		return nil, usageError(fmt.Errorf("%s: no sync job named %q (have: %s)", f.Path, only, strings.Join(names, ", ")))
	}
	return out, nil
}

// runSyncOnce reconciles every job once and reports what still differs.
func runSyncOnce(ctx context.Context, out io.Writer, jobs []syncJob) error {
	var bad []string
	for _, sj := range jobs {
		stopBars := progressBars(ctx, out, []syncJob{sj})
		results := sj.job.ReconcileOnce(ctx)
		stopBars()
		sj.job.Stop()
		for _, r := range results {
			prefix := fmt.Sprintf("%s -> %s", sj.job.Name(), r.Target)
			if r.Applied != nil {
				fmt.Fprintf(out, "%s: pushed %d file(s) (%d bytes), %d dir(s), %d link(s), %d attribute fix(es), %d deletion(s)\n",
					prefix, r.Applied.Files, r.Applied.Bytes, r.Applied.Dirs, r.Applied.Links, r.Applied.Attrs, r.Applied.Deleted)
			}
			if r.StatePath != "" {
				fmt.Fprintf(out, "%s: sync state %s (%d paths)\n", prefix, r.StatePath, r.StateEntries)
			}
			if r.OK() {
				if r.Applied.Trusted && r.Applied.Actions() == 0 {
					fmt.Fprintf(out, "%s: in sync (%d entries compared with the sync state; --full lists the target)\n", prefix, r.Applied.Compared)
				} else {
					fmt.Fprintf(out, "%s: in sync\n", prefix)
				}
				continue
			}
			var why []string
			if r.Err != nil {
				why = append(why, r.Err.Error())
			}
			for _, rep := range []*lsync.Report{r.Applied, r.Verify} {
				if rep == nil {
					continue
				}
				for _, e := range rep.Errors {
					why = append(why, e.Error())
				}
				for _, e := range rep.Refused {
					why = append(why, "refused by the target: "+e.Error())
				}
				for _, p := range rep.Retry {
					why = append(why, "changed while copying: "+p)
				}
			}
			if r.Applied != nil && r.Applied.Held > 0 {
				why = append(why, fmt.Sprintf("HELD %d deletion(s): %s; check the source, then confirm with --allow-mass-delete", r.Applied.Held, r.Applied.HeldReason))
			}
			if r.Verify != nil {
				why = append(why, r.Verify.Changes...)
			}
			fmt.Fprintf(out, "%s: DIFFERS\n", prefix)
			for _, w := range why {
				fmt.Fprintf(out, "  %s\n", w)
			}
			bad = append(bad, prefix)
		}
	}
	if len(bad) > 0 {
		return failure(fmt.Errorf("not in sync: %s", strings.Join(bad, ", ")))
	}
	return nil
}

// runSyncDaemon runs every job until ctx is cancelled (SIGINT/SIGTERM).
func runSyncDaemon(ctx context.Context, metricsAddr string, jobs []syncJob, logger *slog.Logger) error {
	g, ctx := errgroup.WithContext(ctx)
	if metricsAddr != "" && len(jobs) > 0 {
		ln, err := net.Listen("tcp", metricsAddr)
		if err != nil {
			for _, sj := range jobs {
				sj.job.Stop()
			}
			return usageError(fmt.Errorf("--metrics-addr: %w", err))
		}
		srv := &http.Server{
			Handler:           promhttp.HandlerFor(jobs[0].reg, promhttp.HandlerOpts{}),
			ReadHeaderTimeout: 5 * time.Second,
		}
		logger.Info("serving metrics", "addr", ln.Addr().String(), "path", "/metrics")
		g.Go(func() error {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		})
	}
	for _, sj := range jobs {
		g.Go(func() error { return sj.job.Run(ctx) })
	}
	if err := g.Wait(); err != nil {
		return failure(err)
	}
	logger.Info("sync stopped")
	return nil
}
