package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"sync"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/lockstep-ha/lockstep/config"
	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/dbrepl/conflict"
	"github.com/lockstep-ha/lockstep/orchestrator"
)

func newRunCmd() *cobra.Command {
	var path string
	var debug bool
	cmd := &cobra.Command{
		Use:   "run -c FILE",
		Short: "Run this node's HA daemon: sync jobs, replication supervisor and the writer role",
		Long: `run is the per-node daemon. It runs the node's sync jobs and the replication
supervisor, exchanges authenticated heartbeats with its peers, decides which
node is the writer (the one holding cluster.resources), fences itself when it
is isolated, and serves /health, /status and /metrics on listen (default
127.0.0.1:9430) and the HAProxy agent check on cluster.agent_check.
SIGTERM releases the resources right to left and stops; SIGHUP reloads the file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := loadConfig(path)
			if err != nil {
				return err
			}
			if f.Cluster == nil {
				return usageError(fmt.Errorf("%s: no cluster: section; lockstep run needs one", f.Path))
			}
			if f.Node == "" {
				return usageError(fmt.Errorf("%s: node: required for lockstep run", f.Path))
			}
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug
			}
			logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level})).With("node", f.Node)
			return runDaemon(cmd.Context(), f, path, logger)
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().BoolVar(&debug, "debug", false, "debug logging")
	return cmd
}

func runDaemon(ctx context.Context, f *config.File, path string, logger *slog.Logger) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	var jobs []orchestrator.SyncJob
	if len(f.Sync) > 0 {
		built, err := buildSyncJobs(f, "", logger, reg)
		if err != nil {
			return err
		}
		for _, b := range built {
			jobs = append(jobs, b.job)
		}
	}
	dcfg := orchestrator.DaemonConfig{Node: f.Node, Listen: f.Listen, Cluster: f.Cluster, Sync: jobs, Registry: reg, Logger: logger}
	// The daemon's event log exists once the daemon does, which needs the
	// supervisor first; nothing runs before it is set.
	var events *orchestrator.EventLog
	var sup *dbrepl.Supervisor
	if f.Repl != nil {
		var err error
		sup, _, err = newDaemonSupervisor(*f.Repl, reg, logger, func(c dbrepl.Conflict) { logConflict(events, c) })
		if err != nil {
			return usageError(err)
		}
		defer sup.Close()
		dcfg.Repl = sup
	}
	d, err := orchestrator.NewDaemon(dcfg)
	if err != nil {
		return usageError(fmt.Errorf("%s: %w", f.Path, err))
	}
	events = d.Events()

	// SIGHUP reloads; the watcher is owned by this function.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-runCtx.Done():
				return
			case <-hup:
				reload(d, f, path)
			}
		}
	})
	if sup != nil {
		wg.Go(func() { forwardReplEvents(runCtx, sup.Events(), events) })
	}
	err = d.Run(runCtx)
	stop()
	wg.Wait()
	if err != nil {
		return failure(err)
	}
	return nil
}

// reload re-reads the file and applies what can change while running.
func reload(d *orchestrator.Daemon, running *config.File, path string) {
	ev := d.Events()
	nf, err := config.Load(path)
	if err != nil {
		ev.Warn(orchestrator.EventReload, fmt.Sprintf("reload failed, keeping the running configuration: %v", err))
		return
	}
	ev.Add(orchestrator.EventReload, "SIGHUP: reloading "+path)
	if !reflect.DeepEqual(nf.Sync, running.Sync) {
		ev.Warn(orchestrator.EventReload, "reload: sync jobs changed: restart required (running jobs keep their configuration)")
	}
	if !reflect.DeepEqual(nf.Repl, running.Repl) {
		ev.Warn(orchestrator.EventReload, "reload: repl section changed: restart required (the supervisor keeps its configuration)")
	}
	if err := d.Reload(nf.Node, nf.Listen, nf.Cluster); err != nil {
		return // already recorded as an event
	}
}

// newReplSupervisor builds the supervisor of a repl: section with its
// write-conflict detector (nil when repl.conflicts.enabled is false), which
// runs and stops with it. Both register their metrics on reg once: the
// supervisor's Run can be called again without rebuilding anything.
func newReplSupervisor(cfg dbrepl.Config, reg prometheus.Registerer, logger *slog.Logger, onConflict func(dbrepl.Conflict)) (*dbrepl.Supervisor, *conflict.Detector, error) {
	det, err := newConflictDetector(cfg, reg, logger, onConflict)
	if err != nil {
		return nil, nil, err
	}
	opts := dbrepl.Options{Logger: logger, Registerer: reg}
	if det != nil {
		opts.Conflicts = det
	}
	sup, err := dbrepl.New(cfg, opts)
	if err != nil {
		return nil, nil, err
	}
	return sup, det, nil
}

// newDaemonSupervisor is newReplSupervisor for `lockstep run`, where both
// nodes run a supervisor on the same pair but only the writer's decides:
// two deciders could each fence a different node when both qualify within
// a few milliseconds, leaving no writable database. The daemon calls
// SetActive(true) when this node becomes the writer and false when it
// stops being one; it says nothing to a node that starts and stays
// standby, so the supervisor starts inactive. A node left alone takes the
// writer role and then decides.
func newDaemonSupervisor(cfg dbrepl.Config, reg prometheus.Registerer, logger *slog.Logger, onConflict func(dbrepl.Conflict)) (*dbrepl.Supervisor, *conflict.Detector, error) {
	sup, det, err := newReplSupervisor(cfg, reg, logger, onConflict)
	if err != nil {
		return nil, nil, err
	}
	sup.SetActive(false)
	return sup, det, nil
}

// logConflict files a write conflict in the daemon's event log. It runs on
// a binlog reader goroutine; EventLog.Warn only takes a mutex, so it does
// not hold the reader up.
func logConflict(events *orchestrator.EventLog, c dbrepl.Conflict) {
	events.Warn(orchestrator.EventSupervisor, conflictMessage(c), "table", c.Schema+"."+c.Table)
}

// forwardReplEvents copies the supervisor's events into the daemon's
// event log until ctx ends.
func forwardReplEvents(ctx context.Context, in <-chan dbrepl.Event, events *orchestrator.EventLog) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-in:
			kind, warn := replEventKind(ev.Type)
			msg := fmt.Sprintf("replication: %s %s: %s", ev.Type, ev.Node, ev.Reason)
			if warn {
				events.Warn(kind, msg, "db", ev.Node)
			} else {
				events.Add(kind, msg, "db", ev.Node)
			}
		}
	}
}

// The daemon's Database is the supervisor itself; a failing self-fence
// escalates through it (see orchestrator.ClientKiller).
var _ orchestrator.ClientKiller = (*dbrepl.Supervisor)(nil)

// replEventKind files a supervisor event under the daemon's event kinds:
// read_only transitions are fences; reachability of a database server has
// no kind of its own (peer is for cluster nodes), so it goes under the
// supervisor. warn marks what needs an operator's attention.
func replEventKind(typ string) (kind string, warn bool) {
	switch typ {
	case dbrepl.EventFence, dbrepl.EventUnfence:
		return orchestrator.EventFence, false
	case dbrepl.EventFenceFailed, dbrepl.EventUnfenceFailed, dbrepl.EventRefence, dbrepl.EventSkipped:
		return orchestrator.EventFence, true
	case dbrepl.EventUnreachable:
		return orchestrator.EventSupervisor, true
	default: // EventReachable and any later addition
		return orchestrator.EventSupervisor, false
	}
}

func conflictMessage(c dbrepl.Conflict) string {
	return fmt.Sprintf("replication: write conflict on %s.%s %s: written on %s concurrently (gtids %s)",
		c.Schema, c.Table, c.PrimaryKey, strings.Join(c.Origins, " and "), strings.Join(c.GTIDs, " "))
}

// newConflictDetector builds the detector of a repl: section, or nil when
// repl.conflicts.enabled is false. Its metrics go to reg.
func newConflictDetector(cfg dbrepl.Config, reg prometheus.Registerer, logger *slog.Logger, onConflict func(dbrepl.Conflict)) (*conflict.Detector, error) {
	if !cfg.Conflicts.IsEnabled() {
		return nil, nil
	}
	src, err := conflict.SourcesFrom(cfg)
	if err != nil {
		return nil, err
	}
	det, err := conflict.New(cfg.Conflicts, src, reg, logger, onConflict)
	if err != nil {
		return nil, fmt.Errorf("conflicts: %w", err)
	}
	return det, nil
}
