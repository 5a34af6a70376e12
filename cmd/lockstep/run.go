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
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/lockstep-ha/lockstep/config"
	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/dbrepl/conflict"
	"github.com/lockstep-ha/lockstep/lsync"
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
			name := b.job.Name()
			jobs = append(jobs, &syncRunner{job: b.job, build: func() (*lsync.Job, error) {
				again, err := buildSyncJobs(f, name, logger, reg)
				if err != nil {
					return nil, err
				}
				return again[0].job, nil
			}})
		}
	}
	var repl *replRunner
	dcfg := orchestrator.DaemonConfig{Node: f.Node, Listen: f.Listen, Cluster: f.Cluster, Sync: jobs, Registry: reg, Logger: logger}
	if f.Repl != nil {
		repl = &replRunner{cfg: *f.Repl, logger: logger, reg: &trackingRegisterer{reg: reg}}
		if err := repl.build(); err != nil {
			return usageError(err)
		}
		dcfg.Repl = repl
	}
	d, err := orchestrator.NewDaemon(dcfg)
	if err != nil {
		return usageError(fmt.Errorf("%s: %w", f.Path, err))
	}
	if repl != nil {
		repl.events = d.Events()
	}

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

// syncRunner adapts an lsync.Job (single-use) to the daemon's restartable
// SyncJob: a restart after a failure builds a fresh job.
type syncRunner struct {
	build func() (*lsync.Job, error)
	mu    sync.Mutex
	job   *lsync.Job
	used  bool
}

func (s *syncRunner) Name() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.job.Name()
}

func (s *syncRunner) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.used {
		j, err := s.build()
		if err != nil {
			s.mu.Unlock()
			return err
		}
		s.job = j
	}
	s.used = true
	j := s.job
	s.mu.Unlock()
	return j.Run(ctx)
}

func (s *syncRunner) Targets() []orchestrator.SyncTargetStatus {
	s.mu.Lock()
	j := s.job
	s.mu.Unlock()
	var out []orchestrator.SyncTargetStatus
	for _, t := range j.Status() {
		out = append(out, orchestrator.SyncTargetStatus{Job: t.Job, Target: t.Target, Connected: t.Connected,
			PendingFiles: t.PendingFiles, LastSync: t.LastSync, LastError: t.LastError})
	}
	return out
}

// replRunner adapts dbrepl.Supervisor to the daemon: a restart after a
// failure builds a fresh supervisor (Run closes its connections), and its
// events are copied into the daemon's event log. The write-conflict
// detector, when repl.conflicts is enabled, shares the supervisor's
// lifetime and is rebuilt with it.
//
// Both nodes run a supervisor on the same pair, but only the writer's
// decides: two deciders could each fence a different node when both
// qualify within a few milliseconds, leaving no writable database. The
// daemon calls SetActive(true) when this node becomes the writer and
// false when it stops being one; it says nothing to a node that starts
// and stays standby, so the runner starts inactive. A node left alone
// takes the writer role and then decides.
type replRunner struct {
	cfg    dbrepl.Config
	logger *slog.Logger
	reg    *trackingRegisterer
	events *orchestrator.EventLog

	mu   sync.Mutex
	sup  *dbrepl.Supervisor
	det  *conflict.Detector // nil when repl.conflicts.enabled is false
	used bool
	// active is the last SetActive value, given to every supervisor
	// built, so a restarted one keeps the role's decision.
	active bool
}

// SetActive tells the current supervisor (and any rebuilt one) whether
// this node is the writer, whose supervisor makes the automatic fence and
// reintroduction decisions.
func (r *replRunner) SetActive(active bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.active = active
	if r.sup != nil {
		r.sup.SetActive(active)
	}
}

func (r *replRunner) build() error {
	r.reg.reset()
	sup, err := dbrepl.New(r.cfg, dbrepl.Options{Logger: r.logger, Registerer: r.reg})
	if err != nil {
		return err
	}
	det, err := newConflictDetector(r.cfg, r.reg, r.logger, r.onConflict)
	if err != nil {
		return err
	}
	sup.SetActive(r.active)
	r.sup, r.det = sup, det
	return nil
}

// onConflict runs on a binlog reader goroutine; EventLog.Warn only takes
// a mutex, so it does not hold the reader up.
func (r *replRunner) onConflict(c dbrepl.Conflict) {
	if r.events != nil {
		r.events.Warn(orchestrator.EventSupervisor, conflictMessage(c), "table", c.Schema+"."+c.Table)
	}
}

func (r *replRunner) current() (*dbrepl.Supervisor, *conflict.Detector) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sup, r.det
}

func (r *replRunner) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.used {
		if err := r.build(); err != nil {
			r.mu.Unlock()
			return err
		}
	}
	r.used = true
	sup, det := r.sup, r.det
	r.mu.Unlock()
	var wg sync.WaitGroup
	fwdCtx, stop := context.WithCancel(ctx)
	wg.Go(func() {
		for {
			select {
			case <-fwdCtx.Done():
				return
			case ev := <-sup.Events():
				if r.events == nil {
					continue
				}
				kind, warn := replEventKind(ev.Type)
				msg := fmt.Sprintf("replication: %s %s: %s", ev.Type, ev.Node, ev.Reason)
				if warn {
					r.events.Warn(kind, msg, "db", ev.Node)
				} else {
					r.events.Add(kind, msg, "db", ev.Node)
				}
			}
		}
	})
	runConflictDetector(fwdCtx, &wg, det, r.logger)
	err := sup.Run(ctx)
	stop()
	wg.Wait()
	return err
}

// Status is the supervisor's view with the detector's recent conflicts.
func (r *replRunner) Status() dbrepl.PairStatus {
	sup, det := r.current()
	st := sup.Status()
	if det != nil {
		st.Conflicts = det.Recent()
	}
	return st
}

func (r *replRunner) Fence(ctx context.Context, node, reason string) error {
	sup, _ := r.current()
	return sup.Fence(ctx, node, reason)
}

func (r *replRunner) Unfence(ctx context.Context, node string) error {
	sup, _ := r.current()
	return sup.Unfence(ctx, node)
}

// KillClientSessions lets a failing self-fence escalate (see
// orchestrator.ClientKiller).
func (r *replRunner) KillClientSessions(ctx context.Context, node string) (int, error) {
	sup, _ := r.current()
	return sup.KillClientSessions(ctx, node)
}

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
// repl.conflicts.enabled is false. Its metrics go to reg, so a rebuild
// after trackingRegisterer.reset registers them again.
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

// runConflictDetector starts det (nil: nothing) on wg until ctx ends. The
// detector retries unreachable nodes and refused binlog dumps (a missing
// REPLICATION SLAVE grant) with backoff itself; should Run ever return
// early, it is restarted here, because losing conflict detection must not
// take the supervisor down with it.
func runConflictDetector(ctx context.Context, wg *sync.WaitGroup, det *conflict.Detector, logger *slog.Logger) {
	if det == nil {
		return
	}
	wg.Go(func() {
		backoff := time.Second
		for {
			err := det.Run(ctx)
			if ctx.Err() != nil {
				return
			}
			logger.Error("write-conflict detector stopped; the supervisor keeps running, restarting the detector",
				"component", "conflict", "error", err, "in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 30*time.Second)
		}
	})
}

// trackingRegisterer remembers what a supervisor registered so that a
// rebuilt supervisor can register the same metric names again.
type trackingRegisterer struct {
	reg  prometheus.Registerer
	mu   sync.Mutex
	cols []prometheus.Collector
}

func (t *trackingRegisterer) Register(c prometheus.Collector) error {
	if err := t.reg.Register(c); err != nil {
		return err
	}
	t.mu.Lock()
	t.cols = append(t.cols, c)
	t.mu.Unlock()
	return nil
}

func (t *trackingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := t.Register(c); err != nil {
			panic(err)
		}
	}
}

func (t *trackingRegisterer) Unregister(c prometheus.Collector) bool { return t.reg.Unregister(c) }

func (t *trackingRegisterer) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.cols {
		t.reg.Unregister(c)
	}
	t.cols = nil
}
