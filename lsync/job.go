package lsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lockstep-ha/lockstep/lsync/syncstate"
	"github.com/prometheus/client_golang/prometheus"
)

// JobOptions carries what a job needs besides its config.
type JobOptions struct {
	// Node is this node's name; it breaks two-way conflict ties.
	Node       string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// ReconnectMin and ReconnectMax bound the reconnection backoff
	// (defaults 250ms and 30s).
	ReconnectMin, ReconnectMax time.Duration
	// OwnerNames names the source's uids and gids for owner: names (nil:
	// this host's user database). Tests give the source names its ids
	// do not have here, to show that the peer maps them; it only
	// changes what this node asks for, which it could ask by number.
	OwnerNames OwnerNamer
}

// TargetStatus is one target's state, for `lockstep status` and the
// orchestrator.
type TargetStatus struct {
	Job          string
	Target       string
	Connected    bool
	PendingFiles int
	// Rescanning is true while a full pass is queued.
	Rescanning bool
	LastSync   time.Time // last time the target was known to match
	// LastVerified is the end of the last full comparison that found or
	// left the target equal to the source (zero: none yet).
	LastVerified time.Time
	LastError    string
	Lag          time.Duration // age of the oldest change not yet on the target
	// Held says why deletions on the target are being held (the
	// mass-deletion guard, a missing source root); HeldDeletes counts the
	// entries kept.
	Held        string
	HeldDeletes int
	// StatePath is the target's sync state file, StateEntries the paths
	// it records ("" / 0 when the job keeps no state).
	StatePath    string
	StateEntries int
	// JobError is set when the job as a whole broke (the source can no
	// longer be watched completely, e.g. out of inotify watches).
	JobError string
	// Progress is the running full pass, nil when none runs.
	Progress *ProgressSnapshot
	// Protocol is how the current (or last) session reaches the peer:
	// "receiver v5", "sftp" or "local" ("" before the first connection).
	// ProtocolFallback says why receiver: auto fell back to SFTP.
	Protocol         string
	ProtocolFallback string
	// Refused counts the paths the target refuses (ErrRefused: a symlink
	// where lockstep writes on the peer) until a later pass lands them;
	// FirstRefused is the one refused first. While any is refused the
	// target is not in sync (LastSync stays).
	Refused      int
	FirstRefused string
}

// Job pushes one source tree to its targets: a watcher feeds a batcher,
// whose batches fan out to one worker per target. Each worker has its own
// queue and session, so a target that is down never holds up the others.
type Job struct {
	cfg      JobConfig
	opts     JobOptions
	logger   *slog.Logger
	metrics  *metrics
	excluder *Excluder
	// deliveries are the files the two-way peer landed in the source.
	deliveries deliveries
	source     *Source
	workers    []*targetWorker

	// lifecycle serialises Start and Stop. A job runs again after it
	// stopped (the daemon restarts a job that failed): the source is
	// reopened and the workers keep their queues, so nothing pending is
	// lost.
	lifecycle sync.Mutex
	running   bool
	mu        sync.Mutex // guards fatalErr, which the watcher's goroutine sets
	cancel    context.CancelFunc
	watcher   *Watcher
	// live is the running watcher, for the source's onChange (called from
	// the workers' goroutines).
	live     atomic.Pointer[Watcher]
	wg       sync.WaitGroup
	fatal    chan error
	fatalErr string
	// fullOnce: ReconcileOnce lists the targets (see FullOnce).
	fullOnce bool
}

// NewJob validates cfg and opens the source. connectors holds one
// Connector per target.
func NewJob(cfg JobConfig, connectors []Connector, opts JobOptions) (*Job, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sync job %q: %w", cfg.Name, err)
	}
	if cfg.TwoWay && opts.Node == "" {
		return nil, fmt.Errorf("sync job %q: two_way needs the node name (top-level `node:`)", cfg.Name)
	}
	if len(connectors) == 0 {
		return nil, fmt.Errorf("sync job %q: no targets", cfg.Name)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.ReconnectMin == 0 {
		opts.ReconnectMin = 250 * time.Millisecond
	}
	if opts.ReconnectMax == 0 {
		opts.ReconnectMax = 30 * time.Second
	}
	ex, err := NewExcluder(cfg.Exclude)
	if err != nil {
		return nil, fmt.Errorf("sync job %q: %w", cfg.Name, err)
	}
	src, err := OpenSource(cfg.Source, ex)
	if err != nil {
		return nil, fmt.Errorf("sync job %q: %w", cfg.Name, err)
	}
	j := &Job{
		cfg:      cfg,
		opts:     opts,
		logger:   opts.Logger.With("component", "lsync", "job", cfg.Name),
		metrics:  newMetrics(opts.Registerer),
		excluder: ex,
		source:   src,
		fatal:    make(chan error, 1),
	}
	src.onChange = j.sourceChanged
	for _, c := range connectors {
		j.workers = append(j.workers, newTargetWorker(j, c))
	}
	return j, nil
}

// Name is the job's configured name.
func (j *Job) Name() string { return j.cfg.Name }

// Start watches the source and starts one worker per target. It returns
// an error when the tree cannot be watched completely. After Stop, Start
// may be called again.
func (j *Job) Start(ctx context.Context) error {
	j.lifecycle.Lock()
	defer j.lifecycle.Unlock()
	if j.running {
		return errors.New("sync job already running")
	}
	if j.source == nil {
		src, err := OpenSource(j.cfg.Source, j.excluder)
		if err != nil {
			return fmt.Errorf("sync job %q: %w", j.cfg.Name, err)
		}
		j.source = src
		src.onChange = j.sourceChanged
		for _, wk := range j.workers {
			wk.rec.Source = src
		}
	}
	w, err := NewWatcher(j.cfg.Source, j.excluder, j.logger)
	if err != nil {
		return fmt.Errorf("sync job %q: %w", j.cfg.Name, err)
	}
	j.openState()
	j.watcher = w
	j.live.Store(w)
	j.running = true
	j.mu.Lock()
	j.fatalErr = ""
	j.mu.Unlock()
	select {
	case <-j.fatal: // a previous run's
	default:
	}
	ctx, j.cancel = context.WithCancel(ctx)
	batcher := NewBatcher(j.cfg.Delay, j.cfg.MaxDelay, DefaultMaxPendingPaths, func(b Batch) {
		for _, wk := range j.workers {
			wk.enqueue(b)
		}
	})
	j.logger.Info("watching", "source", j.cfg.Source, "directories", w.WatchedDirs(), "targets", len(j.workers))
	j.wg.Add(3 + len(j.workers))
	go func() {
		defer j.wg.Done()
		batcher.Run(ctx)
	}()
	go func() {
		defer j.wg.Done()
		var out sink = batcher
		if j.cfg.TwoWay {
			out = deliverySink{sink: batcher, d: &j.deliveries, logger: j.logger}
		}
		if err := w.Run(ctx, out); err != nil {
			j.logger.Error("watcher failed; the tree is no longer fully watched", "err", err)
			j.mu.Lock()
			j.fatalErr = err.Error()
			j.mu.Unlock()
			select {
			case j.fatal <- err:
			default:
			}
		}
	}()
	go func() {
		defer j.wg.Done()
		j.gaugeLoop(ctx)
	}()
	for _, wk := range j.workers {
		go func() {
			defer j.wg.Done()
			wk.run(ctx)
		}()
	}
	return nil
}

// FullOnce makes ReconcileOnce list the targets instead of trusting the
// sync state (`sync --once --full`).
func (j *Job) FullOnce(full bool) { j.fullOnce = full }

// AllowMassDelete confirms, for this job's next passes, the deletions
// the mass-deletion guard would hold (`sync --once --allow-mass-delete`).
func (j *Job) AllowMassDelete(allow bool) {
	for _, w := range j.workers {
		w.rec.AllowMassDelete = allow
	}
}

// Fatal delivers an error that stops the job from doing its work (the
// tree can no longer be watched completely).
func (j *Job) Fatal() <-chan error { return j.fatal }

// openState opens each target's sync state (cfg.StateDir). A state that
// cannot be opened is not fatal: the job then runs on the classic rules,
// which never delete on the strength of missing state.
func (j *Job) openState() {
	if j.cfg.StateDir == "" {
		return
	}
	for i, w := range j.workers {
		if w.state != nil {
			continue
		}
		where := w.name
		if i < len(j.cfg.Targets) {
			tc := j.cfg.Targets[i]
			where = tc.Host + ":" + tc.Path
		}
		identity := fmt.Sprintf("job %s from %s to target %s (%s)", j.cfg.Name, j.cfg.Source, w.name, where)
		st, err := syncstate.Open(syncstate.FileName(j.cfg.StateDir, j.cfg.Name, w.name), identity)
		switch {
		case errors.Is(err, syncstate.ErrSetAside):
			w.logger.Warn("sync state could not be used and was set aside; starting from nothing known (a full comparison, no deletions on its strength)", "err", err, "kept_at", st.SetAside)
		case err != nil:
			w.logger.Warn("sync state unavailable; running without it (two-way falls back to the newer-mtime rule, full passes never delete)", "err", err)
			continue
		}
		if st.Migrated {
			w.logger.Info("sync state migrated to record owners; until both nodes agree on a path's owner, a chown of it is not merged in two-way sync", "path", st.Path())
		}
		w.mu.Lock()
		w.state = st
		w.mu.Unlock()
		w.rec.State = st
		// Trusted only once a full pass ended in sync (and none failed
		// since): see Reconciler.stateComplete. And only after a run that
		// ended cleanly: a run killed mid-batch may have left temp files
		// or half a rename on the target, which only a listing finds.
		trust := false
		if m, ok := any(st).(completeMarker); ok {
			trust = m.Complete()
			if trust && m.InUse() {
				trust = false
				w.logger.Info("the previous run did not end cleanly: the target is listed once instead of trusting the sync state (leftover temp files, a batch cut short)")
			}
			if err := m.SetInUse(true); err != nil {
				w.logger.Warn("sync state: cannot record that it is in use; a crash of this run would not be noticed at the next start", "err", err)
			}
		}
		w.rec.TrustState(trust)
	}
}

func (j *Job) closeState() {
	for _, w := range j.workers {
		w.mu.Lock()
		st := w.state
		w.state = nil
		w.mu.Unlock()
		if st != nil {
			w.rec.State = nil
			w.rec.TrustState(false)
			if m, ok := any(st).(completeMarker); ok && !w.cutShort.Swap(false) {
				_ = m.SetInUse(false) // a clean end: the next start may trust it
			}
			_ = st.Close()
		}
	}
}

// sourceChanged hears from the source that its root now leads elsewhere
// (seen by a pass: a volume mounted over it, which inotify does not
// report), and has the watcher follow.
func (j *Job) sourceChanged() {
	if w := j.live.Load(); w != nil {
		w.Reroot("replaced")
	}
}

// Stop stops every goroutine of the job and waits for them.
func (j *Job) Stop() {
	j.lifecycle.Lock()
	defer j.lifecycle.Unlock()
	if !j.running {
		if j.source != nil {
			j.source.Close() // opened by NewJob, never started
			j.source = nil
		}
		return
	}
	j.running = false
	j.cancel()
	j.wg.Wait()
	j.live.Store(nil)
	j.watcher.Close()
	j.watcher = nil
	j.closeState()
	j.source.Close()
	j.source = nil
}

// Run runs the job until ctx is done or it fails; it may be called again
// after it returned.
func (j *Job) Run(ctx context.Context) error {
	if err := j.Start(ctx); err != nil {
		j.Stop()
		return err
	}
	defer j.Stop()
	select {
	case <-ctx.Done():
		return nil
	case err := <-j.fatal:
		return fmt.Errorf("sync job %q: %w", j.cfg.Name, err)
	}
}

// Status returns the state of every target.
func (j *Job) Status() []TargetStatus {
	j.mu.Lock()
	jobErr := j.fatalErr
	j.mu.Unlock()
	out := make([]TargetStatus, 0, len(j.workers))
	for _, w := range j.workers {
		st := w.status()
		st.JobError = jobErr
		out = append(out, st)
	}
	return out
}

func (j *Job) gaugeLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for _, w := range j.workers {
				st := w.status()
				w.lagGauge.Set(st.Lag.Seconds())
				w.pendingGauge.Set(float64(st.PendingFiles))
				w.setProgressGauges(st.Progress)
			}
		}
	}
}

// OnceResult is the outcome of ReconcileOnce for one target.
type OnceResult struct {
	Target  string
	Applied *Report // the pass that pushed differences
	Verify  *Report // a dry comparison afterwards
	Err     error   // connection or walk failure
	// StatePath and StateEntries describe the target's sync state after
	// the pass ("" when the job keeps none).
	StatePath    string
	StateEntries int
}

// OK reports whether the target matches the source.
func (r OnceResult) OK() bool {
	return r.Err == nil && r.Applied != nil && r.Applied.InSync() && r.Verify != nil && r.Verify.Matches()
}

// ReconcileOnce runs one reconciliation pass per target (concurrently),
// then compares again without writing, for `lockstep sync --once`.
func (j *Job) ReconcileOnce(ctx context.Context) []OnceResult {
	j.lifecycle.Lock()
	if !j.running {
		j.openState()
		defer j.closeState()
	}
	j.lifecycle.Unlock()
	out := make([]OnceResult, len(j.workers))
	var wg sync.WaitGroup
	for i, w := range j.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := OnceResult{Target: w.name}
			defer func() { out[i] = res }()
			// A trusted restart dials the peer only once the comparison
			// with the sync state finds a difference (most restarts find
			// none, and a handshake costs the peer a login); a full pass
			// dials at once, while its estimate is counted.
			type dialed struct {
				t   Target
				err error
			}
			dctx, cancelDial := context.WithCancel(ctx)
			defer cancelDial()
			conn := make(chan dialed, 1)
			var dialing atomic.Bool
			dial := sync.OnceFunc(func() {
				dialing.Store(true)
				go func() {
					t, err := w.conn.Connect(dctx)
					conn <- dialed{t, err}
				}()
			})
			var d *trustedDiff
			trusted := false
			var err error
			if !j.fullOnce && w.rec.canTrust() {
				d, trusted, err = w.rec.trustedPrepare(ctx, dial)
			}
			if !trusted {
				dial()
				// A full pass follows: its estimate is counted while the
				// dial is under way.
				stopCount := w.rec.CountAhead(ctx)
				defer stopCount()
			}
			if trusted && err == nil && d.empty() && len(d.errors) == 0 {
				// Nothing differs from what the state says the target
				// holds: the peer has nothing to be told, and was not
				// dialed. The daemon's verification, or --full, lists
				// the peer.
				if dialing.Load() {
					cancelDial()
					if c := <-conn; c.err == nil {
						_ = c.t.Close()
					}
				}
				res.Applied = &Report{Target: w.name, Trusted: true, Compared: d.entries}
				res.Verify = &Report{Target: w.name, Trusted: true, Compared: d.entries}
				w.logReport("reconcile (trusting the sync state; the peer was not contacted)", res.Applied)
				if st := w.status(); st.StatePath != "" {
					res.StatePath, res.StateEntries = st.StatePath, st.StateEntries
				}
				return
			}
			dial()
			c := <-conn
			if c.err != nil {
				res.Err = c.err
				return
			}
			t := c.t
			defer t.Close()
			if err != nil {
				res.Err = err
				return
			}
			w.adopt(ctx, t)
			var watch *passWatch
			if trusted {
				res.Applied, _, res.Err = w.rec.applyTrusted(ctx, t, d, nil)
			} else {
				if !j.cfg.TwoWay {
					// A two-way pass writes to the source itself.
					watch = newPassWatch()
				}
				res.Applied, res.Err = w.rec.Reconcile(withPassWatch(ctx, watch), t, false)
			}
			quiet, why := watch.close()
			if res.Err != nil {
				return
			}
			w.logReport("reconcile", res.Applied)
			switch {
			case trusted && res.Applied.Actions() == 0 && res.Applied.InSync():
				// Nothing differed from the state, and nothing was done:
				// the comparison was the verification.
				res.Verify = &Report{Target: w.name, Trusted: true, Compared: res.Applied.Compared}
			case w.rec.watchVouches(quiet, res.Applied):
				res.Verify = &Report{Target: w.name, Trusted: true, Watched: true, Compared: res.Applied.Compared}
			default:
				if watch != nil {
					w.logger.Debug("verifying the pass by walking the source again", "why", why)
				}
				var ok bool
				// After a pass, the state records what the target holds:
				// checking the source against it needs no second listing.
				if res.Verify, ok, res.Err = w.rec.trustedVerify(ctx); !ok && res.Err == nil {
					res.Verify, res.Err = w.rec.Reconcile(ctx, t, true)
				}
			}
			if st := w.status(); st.StatePath != "" {
				res.StatePath, res.StateEntries = st.StatePath, st.StateEntries
			}
		}()
	}
	wg.Wait()
	return out
}

// freeMemoryAfter is the tree size (entries) past which a full pass is
// followed by returning freed memory to the OS.
const freeMemoryAfter = 10000

// idleTrimAfter is how long a worker must have had nothing to do after
// such a pass before it also drops the pass's landed cache (see
// Reconciler.dropLanded): the last 8,192 to 16,384 paths of the pass,
// about 1.6 MiB of an idle daemon's heap for a 100k-file tree (issue 15).
// The trailing batches of the pass are applied by then.
const idleTrimAfter = 2 * time.Second

// targetWorker owns one target's queue and session.
type targetWorker struct {
	job    *Job
	conn   Connector
	name   string
	rec    *Reconciler
	logger *slog.Logger

	pendingGauge, lagGauge, connectedGauge, verifiedGauge prometheus.Gauge
	heldGauge, missingGauge                               prometheus.Gauge
	filesCounter, bytesCounter, errCounter, driftCounter  prometheus.Counter

	notify chan struct{}

	mu sync.Mutex
	// pending maps path → when its first unsynced change was seen. It is
	// kept while a full pass is queued: the pass must content-check these
	// paths, since a same-size rewrite within the second of the target's
	// copy looks equal by size and whole-second mtime (see CatchUp).
	pending  map[string]time.Time
	renames  []Rename
	scan     map[string]bool // subtrees to check entry by entry (Batch.Scan)
	rescan   bool
	reason   string
	rescanAt time.Time
	// changedSince is set when pending paths were dropped (overflow):
	// the full pass content-checks everything modified since.
	changedSince time.Time
	retry        map[string]time.Time // path → first seen, waiting for its retry
	// retryAt is when each retried path is due (absent: at once) and
	// failures how often in a row it failed: each path backs off on its
	// own, so one path the peer keeps refusing (a permission, a full
	// disk) never slows down the retry of another's passing failure.
	retryAt  map[string]time.Time
	failures map[string]int
	// cutShort is set when the job was stopped in the middle of a batch:
	// the state is then left marked in use, as after a crash.
	cutShort     atomic.Bool
	connected    bool
	lastSync     time.Time
	lastVerified time.Time
	lastErr      string
	held         string // why deletions are held ("" = not held)
	heldDeletes  int
	heldPaths    map[string]bool   // the removals being held, retried until they go through
	logged       map[string]string // path → the failure last logged (worker goroutine only)
	state        *syncstate.Store  // nil when the job keeps no state; set while stopped

	// refused maps the paths the target refuses to when they were first
	// refused; a pass that lands one (or a full pass) clears it.
	refused          map[string]time.Time
	protocol         string
	protocolFallback string
	protocolGauge    *prometheus.GaugeVec
}

func newTargetWorker(j *Job, c Connector) *targetWorker {
	name := c.Name()
	w := &targetWorker{
		job: j, conn: c, name: name,
		logger:   j.logger.With("target", name),
		notify:   make(chan struct{}, 1),
		pending:  map[string]time.Time{},
		retry:    map[string]time.Time{},
		retryAt:  map[string]time.Time{},
		failures: map[string]int{},
		scan:     map[string]bool{},
		refused:  map[string]time.Time{},
	}
	w.rec = &Reconciler{
		Source: j.source, Target: name,
		Delete: j.cfg.DeleteEnabled(), Checksum: j.cfg.Checksum,
		TwoWay: j.cfg.TwoWay, Node: j.opts.Node,
		Concurrency: j.cfg.Concurrency,
		VerifyRate:  j.cfg.EffectiveVerifyRate(),
		MaxDelete:   j.cfg.EffectiveMaxDelete(),
		Logger:      w.logger,
		Delivered:   j.deliveries.has,
		Owner:       j.cfg.EffectiveOwner(),
		OwnerNames:  j.opts.OwnerNames,
	}
	m := j.metrics
	w.pendingGauge = m.pending.WithLabelValues(j.cfg.Name, name)
	w.lagGauge = m.lag.WithLabelValues(j.cfg.Name, name)
	w.connectedGauge = m.connected.WithLabelValues(j.cfg.Name, name)
	w.filesCounter = m.files.WithLabelValues(j.cfg.Name, name)
	w.bytesCounter = m.bytes.WithLabelValues(j.cfg.Name, name)
	w.errCounter = m.errors.WithLabelValues(j.cfg.Name, name)
	w.verifiedGauge = m.verified.WithLabelValues(j.cfg.Name, name)
	w.driftCounter = m.drift.WithLabelValues(j.cfg.Name, name)
	w.heldGauge = m.held.WithLabelValues(j.cfg.Name, name)
	w.missingGauge = m.missing.WithLabelValues(j.cfg.Name, name)
	w.protocolGauge = m.protocol
	w.rec.OnRefused = m.refused.WithLabelValues(j.cfg.Name, name).Inc
	w.rec.OnTransfer = func(n int64) {
		w.filesCounter.Inc()
		w.bytesCounter.Add(float64(n))
	}
	return w
}

func (w *targetWorker) signal() {
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// enqueue merges a batch into this target's queue; it never blocks on the
// target, so a slow or dead target cannot hold up the others.
func (w *targetWorker) enqueue(b Batch) {
	w.mu.Lock()
	w.mergeLocked(b)
	w.mu.Unlock()
	w.signal()
}

func (w *targetWorker) mergeLocked(b Batch) {
	when := b.Oldest
	if when.IsZero() {
		when = time.Now()
	}
	if b.Rescan && !w.rescan {
		w.rescan, w.rescanAt, w.reason = true, when, b.Reason
	}
	w.changedSince = earliest(w.changedSince, b.ChangedSince)
	for _, p := range b.Paths {
		if _, ok := w.pending[p]; !ok {
			w.pending[p] = when
		}
	}
	for _, s := range b.Scan {
		w.scan[s] = true
	}
	if w.rescan {
		w.renames = nil // the full pass covers them
		clear(w.scan)
	} else {
		w.renames = append(w.renames, b.Renames...)
		// Paths queued by earlier batches, or waiting for a retry, are
		// applied after these renames are replayed: they must be looked
		// at under the new names too.
		for _, rn := range b.Renames {
			followRename(w.pending, rn.From, rn.To, keep)
			followRename(w.retry, rn.From, rn.To, keep)
			followRename(w.scan, rn.From, rn.To, keep)
			if w.scan[rn.From] {
				w.scan[rn.To] = true
			}
		}
	}
	if len(w.pending) > DefaultMaxPendingPaths {
		// Too many paths to remember: the full pass content-checks
		// every file modified since the oldest of them instead.
		since := when
		for _, t := range w.pending {
			since = earliest(since, t)
		}
		w.changedSince = earliest(w.changedSince, since)
		if !w.rescan {
			w.rescan, w.rescanAt, w.reason = true, when, "queue overflow"
		}
		clear(w.pending)
		clear(w.scan)
		w.renames = nil
	}
}

// earliest returns the earlier of two times, a zero time meaning unset.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || !b.IsZero() && b.Before(a) {
		return b
	}
	return a
}

// take empties the queue.
func (w *targetWorker) take() (Batch, map[string]time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := Batch{Rescan: w.rescan, Reason: w.reason, Renames: w.renames, ChangedSince: w.changedSince}
	firstSeen := w.pending
	for p := range w.pending {
		b.Paths = append(b.Paths, p)
	}
	if w.rescan {
		// Paths waiting for a retry changed too; the full pass replaces
		// their retry, so it must treat them like pending ones.
		for p := range w.retry {
			if _, ok := firstSeen[p]; !ok {
				b.Paths = append(b.Paths, p)
			}
		}
	}
	if !w.rescan {
		for s := range w.scan {
			b.Scan = append(b.Scan, s)
		}
		sort.Strings(b.Scan)
	}
	w.scan = map[string]bool{}
	w.pending = map[string]time.Time{}
	w.renames = nil
	w.rescan = false
	w.reason = ""
	w.changedSince = time.Time{}
	return b, firstSeen
}

func (w *targetWorker) requeue(b Batch, firstSeen map[string]time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if b.Rescan {
		w.rescan = true
		w.reason = b.Reason
		w.renames = nil
	} else {
		w.renames = append(b.Renames, w.renames...)
		for _, s := range b.Scan {
			w.scan[s] = true
		}
	}
	w.changedSince = earliest(w.changedSince, b.ChangedSince)
	for _, p := range b.Paths {
		if _, ok := w.pending[p]; !ok {
			first, ok := firstSeen[p]
			if !ok {
				first = time.Now() // a retry path added by take
			}
			w.pending[p] = first
		}
	}
}

func (w *targetWorker) setConnected(ok bool, err error) {
	w.mu.Lock()
	w.connected = ok
	if err != nil {
		w.lastErr = err.Error()
	}
	w.mu.Unlock()
	if ok {
		w.connectedGauge.Set(1)
	} else {
		w.connectedGauge.Set(0)
	}
}

// setProtocol records how a new session reaches the peer; a fallback
// to SFTP is also said loudly in the connector's log.
func (w *targetWorker) setProtocol(t Target) {
	pr, ok := t.(ProtocolReporter)
	if !ok {
		return
	}
	name, fallback := pr.Protocol(), pr.Fallback()
	w.mu.Lock()
	prevName, prevFallback := w.protocol, w.protocolFallback
	w.protocol, w.protocolFallback = name, fallback
	w.mu.Unlock()
	fb := func(reason string) string { return strconv.FormatBool(reason != "") }
	if prevName != "" && (prevName != name || fb(prevFallback) != fb(fallback)) {
		w.protocolGauge.WithLabelValues(w.job.cfg.Name, w.name, prevName, fb(prevFallback)).Set(0)
	}
	w.protocolGauge.WithLabelValues(w.job.cfg.Name, w.name, name, fb(fallback)).Set(1)
	// owner: names on a target that cannot map them is said once per
	// change of protocol, not on every reconnection: owners then go by
	// number, which is right only where the nodes' ids agree.
	if name != prevName && w.rec.Owner == OwnerNames {
		if why := ownerNotMapped(t); why != "" {
			w.logger.Warn("owner: names is kept by number on this target: user and group names are not mapped", "protocol", name, "why", why)
		}
	}
}

func (w *targetWorker) status() TargetStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := TargetStatus{
		Job: w.job.cfg.Name, Target: w.name, Connected: w.connected,
		PendingFiles: len(w.pending) + len(w.retry), Rescanning: w.rescan,
		LastSync: w.lastSync, LastVerified: w.lastVerified, LastError: w.lastErr,
		Held: w.held, HeldDeletes: w.heldDeletes,
		Protocol: w.protocol, ProtocolFallback: w.protocolFallback,
		Refused: len(w.refused),
	}
	var firstAt time.Time
	for p, at := range w.refused {
		if st.FirstRefused == "" || at.Before(firstAt) || at.Equal(firstAt) && p < st.FirstRefused {
			st.FirstRefused, firstAt = p, at
		}
	}
	if p := w.rec.Progress.Snapshot(); p.Running {
		st.Progress = &p
	}
	if w.state != nil {
		st.StatePath = w.state.Path()
		st.StateEntries, _ = w.state.Stats()
	}
	var oldest time.Time
	for _, m := range []map[string]time.Time{w.pending, w.retry} {
		for _, t := range m {
			if oldest.IsZero() || t.Before(oldest) {
				oldest = t
			}
		}
	}
	if w.rescan && (oldest.IsZero() || w.rescanAt.Before(oldest)) {
		oldest = w.rescanAt
	}
	if !oldest.IsZero() {
		st.Lag = time.Since(oldest)
	}
	return st
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// Outage retries: for the first fastRetryFor of an outage the target is
// dialled at least every fastRetryMax, so that the catch-up starts within
// a second of a short blip (an sshd restart, a reboot); past that the
// backoff grows to ReconnectMax, as a long outage should not flood the
// log. A failed dial costs a refused or timed-out TCP connect, no more.
const (
	fastRetryFor = time.Minute
	fastRetryMax = time.Second
)

// run connects, catches up and applies batches until ctx is done,
// reconnecting with backoff whenever the session breaks.
func (w *targetWorker) run(ctx context.Context) {
	minB, maxB := w.job.opts.ReconnectMin, w.job.opts.ReconnectMax
	dialBackoff, sessionBackoff := minB, minB
	var downSince time.Time
	for ctx.Err() == nil {
		t, err := w.conn.Connect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if downSince.IsZero() {
				downSince = time.Now()
			}
			w.errCounter.Inc()
			w.setConnected(false, err)
			w.logger.Warn("target unavailable; retrying", "err", err, "retry_in", dialBackoff)
			if !sleepCtx(ctx, jitter(dialBackoff)) {
				return
			}
			limit := maxB
			// Only an unreachable peer is worth a quick retry; a refused
			// host key or login waits for an admin.
			if errors.Is(err, ErrDisconnected) && time.Since(downSince) < fastRetryFor {
				limit = min(fastRetryMax, maxB)
			}
			dialBackoff = max(min(dialBackoff*2, limit), minB)
			continue
		}
		dialBackoff, downSince = minB, time.Time{}
		w.adopt(ctx, t)
		w.setProtocol(t)
		w.setConnected(true, nil)
		w.logger.Info("target connected")
		began := time.Now()
		err = w.session(ctx, t)
		t.Close()
		w.setConnected(false, err)
		if ctx.Err() != nil {
			return
		}
		w.errCounter.Inc()
		downSince = time.Now()
		// A session that worked for a while restarts the backoff; one
		// that fails right away (a target walk that always errors) must
		// not turn into a busy loop of full passes.
		if time.Since(began) > time.Minute {
			sessionBackoff = minB
		}
		w.logger.Warn("target session ended; reconnecting", "err", err, "retry_in", sessionBackoff)
		if !sleepCtx(ctx, jitter(sessionBackoff)) {
			return
		}
		sessionBackoff = min(sessionBackoff*2, maxB)
	}
}

// sourceMissingRetry and heldRetry pace a job that holds: often enough
// to resume within moments of a remount or a confirmation, seldom enough
// to cost nothing.
const (
	sourceMissingRetry = 2 * time.Second
	heldRetry          = 5 * time.Second
	// refusedRetry and refusedRetryMax pace the retries of a path the
	// target refused.
	refusedRetry    = 2 * time.Second
	refusedRetryMax = 5 * time.Minute
)

// hold records (why != "") or clears the reason deletions are held, and
// logs the transitions loudly: a job that holds is doing its job, but an
// operator has to know.
func (w *targetWorker) hold(why string, n int, sourceMissing bool) {
	w.mu.Lock()
	prev := w.held
	w.held, w.heldDeletes = why, n
	w.mu.Unlock()
	w.heldGauge.Set(float64(n))
	if sourceMissing {
		w.missingGauge.Set(1)
	} else {
		w.missingGauge.Set(0)
	}
	switch {
	case why != "" && why != prev:
		w.logger.Error("holding deletions on the target", "reason", why, "entries", n,
			"resume", "restore the source, or confirm with: lockstep sync --once --allow-mass-delete --job "+w.job.cfg.Name)
	case why == "" && prev != "":
		w.logger.Warn("deletions no longer held", "was", prev)
	}
}

// updateHold follows the guard through a report: a hold lasts until the
// removals it kept were retried without being held (the source came back,
// the removals are gone, or an operator confirmed).
func (w *targetWorker) updateHold(b Batch, rep *Report) {
	w.mu.Lock()
	if w.heldPaths == nil {
		w.heldPaths = map[string]bool{}
	}
	if b.Rescan {
		clear(w.heldPaths)
	} else {
		for _, p := range b.Paths {
			delete(w.heldPaths, p)
		}
	}
	for _, p := range rep.HeldPaths {
		w.heldPaths[p] = true
	}
	stillHeld := len(w.heldPaths) > 0
	why, n := w.held, w.heldDeletes
	w.mu.Unlock()
	switch {
	case rep.Held > 0:
		w.hold(rep.HeldReason, rep.Held, false)
	case !stillHeld:
		w.hold("", 0, false)
	default:
		w.hold(why, n, false) // other removals still held
	}
}

// verifyReason marks the periodic verification pass, whose repairs are
// drift (see Report.Unlisted).
const verifyReason = "verification"

// disconnectNotifier is implemented by targets that learn of a dead
// session on their own (the SFTP session's keepalive); without it an idle
// worker would only notice at its next change.
type disconnectNotifier interface {
	Disconnected() <-chan struct{}
}

// unmarkedDelivery is implemented by targets that can land files
// without the delivery mark (DeliveredXattr), which only a two-way
// peer's merge reads: a one-way job spares its peer an xattr per file.
type unmarkedDelivery interface {
	SkipDeliveryMarks(ctx context.Context) error
}

// adopt readies a new connection to the target for this job.
func (w *targetWorker) adopt(ctx context.Context, t Target) {
	m, ok := t.(unmarkedDelivery)
	if !ok || w.job.cfg.TwoWay {
		return
	}
	if err := m.SkipDeliveryMarks(ctx); err != nil && ctx.Err() == nil {
		// The marks are only extra work for the peer; a broken
		// connection shows at the next request.
		w.logger.Warn("the peer keeps putting delivery marks on the files it lands", "err", err)
	}
}

func (w *targetWorker) session(ctx context.Context, t Target) error {
	var lost <-chan struct{} // nil (never ready) when the target cannot tell
	if dn, ok := t.(disconnectNotifier); ok {
		lost = dn.Disconnected()
	}
	// Catch up: whatever happened while disconnected, a full pass repairs;
	// the paths that had events meanwhile stay queued so that the pass
	// content-checks them (it cannot see a same-second same-size rewrite).
	w.mu.Lock()
	w.rescan, w.reason = true, "connect"
	if w.rescanAt.IsZero() {
		w.rescanAt = time.Now()
	}
	w.mu.Unlock()
	w.signal()

	var verify <-chan time.Time
	if iv := w.job.cfg.EffectiveVerifyInterval(); iv > 0 {
		tk := time.NewTicker(iv)
		defer tk.Stop()
		verify = tk.C
	}
	retryTimer := time.NewTimer(time.Hour)
	retryTimer.Stop()
	defer retryTimer.Stop()
	// trimTimer runs while a big pass's memory waits for the worker to
	// have been idle for idleTrimAfter (trimPending); idleSince is when
	// its last batch ended.
	trimTimer := time.NewTimer(time.Hour)
	trimTimer.Stop()
	defer trimTimer.Stop()
	trimPending, worked, idleSince := false, false, time.Now()
	for {
		if worked {
			worked, idleSince = false, time.Now()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-lost:
			return fmt.Errorf("%w: target %s: session lost", ErrDisconnected, w.name)
		case <-w.notify:
		case <-verify:
			w.enqueue(Batch{Rescan: true, Reason: verifyReason})
		case <-retryTimer.C:
			if d := w.dueRetries(time.Now()); d > 0 {
				retryTimer.Reset(d)
			}
		case <-trimTimer.C:
			// The timer may have expired during a batch: only a wait
			// of idleTrimAfter counts.
			if quiet := time.Since(idleSince); trimPending && quiet < idleTrimAfter {
				trimTimer.Reset(idleTrimAfter - quiet)
			} else if trimPending {
				trimPending = false
				w.rec.dropLanded()
				debug.FreeOSMemory()
			}
		}
		b, firstSeen := w.take()
		if b.Empty() {
			continue
		}
		worked = true
		var rep *Report
		var err error
		if b.Rescan {
			trusted := false
			if b.Reason != verifyReason {
				// A reconnect or a lost event queue: the source is
				// compared with the state, and only what differs is
				// applied; the verification lists the target.
				rep, trusted, err = w.rec.TrustedCatchUp(ctx, t, b)
			}
			if !trusted {
				rep, err = w.rec.CatchUp(ctx, t, b)
			}
		} else {
			rep, err = w.rec.Apply(ctx, t, b)
		}
		if errors.Is(err, ErrSourceMissing) {
			// Not the session's fault: keep it, hold, look again soon.
			w.requeue(b, firstSeen)
			w.hold(err.Error()+"; nothing is deleted on the target until it is back", 0, true)
			retryTimer.Reset(sourceMissingRetry)
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				// Stopped mid-batch: what it was doing on the target is
				// not known to have finished (see closeState).
				w.cutShort.Store(true)
				return nil
			}
			w.requeue(b, firstSeen)
			return err
		}
		kind := "batch"
		if b.Rescan {
			kind = "reconcile (" + b.Reason + ")"
		}
		w.logReport(kind, rep)
		if b.Reason == verifyReason && rep.Unlisted > 0 {
			w.driftCounter.Add(float64(rep.Unlisted))
			w.logger.Error("verification repaired drift that the live sync had not queued: a bug, or a change made on the target behind lockstep's back",
				"paths", rep.Unlisted, "first", rep.UnlistedPaths)
		}
		if rep.Entries > freeMemoryAfter {
			// A full pass over a big tree grew the heap by both listings;
			// the runtime would hand that back to the OS only over minutes,
			// and an idle daemon's RSS should reflect its live heap.
			debug.FreeOSMemory()
			trimPending = true
			trimTimer.Reset(idleTrimAfter)
		}
		w.updateHold(b, rep)
		if d := w.afterReport(b, rep, firstSeen); d > 0 {
			retryTimer.Reset(d)
		}
	}
}

// afterReport records the outcome and returns when failed paths should be
// retried (0: nothing to retry).
func (w *targetWorker) afterReport(b Batch, rep *Report, firstSeen map[string]time.Time) time.Duration {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if b.Rescan {
		w.rescanAt = time.Time{}
		// The full pass covered every path waiting for a retry; its own
		// failures are added back below.
		clear(w.retry)
		clear(w.retryAt)
	}
	first := func(p string) time.Time {
		if t, ok := firstSeen[p]; ok {
			return t
		}
		return now
	}
	retryIn := func(p string, d time.Duration) {
		w.retry[p] = first(p)
		if at, ok := w.retryAt[p]; !ok || now.Add(d).Before(at) {
			w.retryAt[p] = now.Add(d)
		}
	}
	for _, p := range rep.Retry {
		// Still being written: look again after the next quiet period.
		retryIn(p, max(2*w.job.cfg.Delay, 50*time.Millisecond))
	}
	failed := map[string]bool{}
	for _, e := range rep.Errors {
		failed[e.Path] = true
		w.failures[e.Path]++
		n := w.failures[e.Path]
		retryIn(e.Path, min(500*time.Millisecond<<min(n-1, 6), 30*time.Second))
		w.errCounter.Inc()
		if strings.HasPrefix(e.Op, "list ") {
			// What is below it was never compared: the retry
			// compares the whole subtree.
			w.scan[e.Path] = true
		}
	}
	for _, e := range rep.Refused {
		// The peer refused it (a symlink where a directory should be, a
		// hard link out of the root): look again, slowly. The peer may be
		// put right, and the next full pass may be far away (never, with
		// verify_interval: 0).
		failed[e.Path] = true
		w.failures[e.Path]++
		n := w.failures[e.Path]
		retryIn(e.Path, min(refusedRetry<<min(n-1, 8), refusedRetryMax))
	}
	// What went through this time starts its backoff afresh.
	if b.Rescan {
		for p := range w.failures {
			if !failed[p] {
				delete(w.failures, p)
			}
		}
	} else {
		for _, p := range b.Paths {
			if !failed[p] {
				delete(w.failures, p)
			}
		}
	}
	for _, p := range rep.HeldPaths {
		retryIn(p, heldRetry/5)
	}
	w.noteRefused(b, rep, now)
	w.followQueuedRenames(b, first)
	if len(rep.Errors) > 0 {
		w.lastErr = rep.Errors[0].Error()
	}
	if b.Rescan && rep.InSync() && !rep.Trusted {
		// A trusted pass read the state, not the target: it verified
		// nothing there.
		w.lastVerified = now
		w.verifiedGauge.Set(float64(now.Unix()))
	}
	// A refused path is a difference the target keeps: not in sync.
	if len(w.pending) == 0 && len(w.retry) == 0 && !w.rescan && len(w.refused) == 0 {
		w.lastSync = now
		if len(rep.Errors) == 0 {
			w.lastErr = ""
		}
	}
	return w.nextRetryLocked(now)
}

// nextRetryLocked is how long until the first retried path is due (0:
// none waits).
func (w *targetWorker) nextRetryLocked(now time.Time) time.Duration {
	if len(w.retry) == 0 {
		return 0
	}
	next := time.Duration(-1)
	for p := range w.retry {
		d := time.Millisecond // no due time (a path moved by a rename): at once
		if at, ok := w.retryAt[p]; ok {
			d = max(at.Sub(now), time.Millisecond)
		}
		if next < 0 || d < next {
			next = d
		}
	}
	return next
}

// dueRetries moves the retried paths that are due into the queue and
// returns how long until the next one is (0: none left).
func (w *targetWorker) dueRetries(now time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	for p, first := range w.retry {
		if at, ok := w.retryAt[p]; ok && at.After(now) {
			continue
		}
		if _, ok := w.pending[p]; !ok {
			w.pending[p] = first
		}
		delete(w.retry, p)
		delete(w.retryAt, p)
	}
	if len(w.retryAt) > len(w.retry) {
		for p := range w.retryAt { // left behind by a rename of a retried path
			if _, ok := w.retry[p]; !ok {
				delete(w.retryAt, p)
			}
		}
	}
	return w.nextRetryLocked(now)
}

// maxRefusedTracked bounds the refused paths status keeps (a hostile
// peer must not grow the daemon's memory); the count stops there.
const maxRefusedTracked = 10000

// noteRefused keeps the paths the target refused for status. A full pass
// compared everything: what it did not refuse is no longer refused. A
// live batch clears the paths it carried, then adds its own refusals.
// Called with w.mu held.
func (w *targetWorker) noteRefused(b Batch, rep *Report, now time.Time) {
	if b.Rescan {
		clear(w.refused)
	} else {
		for _, p := range b.Paths {
			delete(w.refused, p)
		}
		for _, sub := range b.Scan {
			for p := range w.refused {
				if p == sub || strings.HasPrefix(p, sub+"/") {
					delete(w.refused, p)
				}
			}
		}
	}
	for _, e := range rep.Refused {
		if _, ok := w.refused[e.Path]; !ok && len(w.refused) < maxRefusedTracked {
			w.refused[e.Path] = now
		}
	}
}

// followQueuedRenames handles directory renames that were queued while b
// was being applied. b's paths were looked at in the source as it was at
// that moment, possibly already under the new name, where b did not look;
// and its failed paths wait for a retry that comes after the renames are
// replayed. Both are therefore listed under the new names too. A full pass
// walked a tree that was being moved under it: the new subtrees are
// scanned whole.
func (w *targetWorker) followQueuedRenames(b Batch, first func(string) time.Time) {
	if len(w.renames) == 0 {
		return
	}
	if b.Rescan {
		for _, rn := range w.renames {
			w.scan[rn.To] = true
		}
		return
	}
	applied := make(map[string]time.Time, len(b.Paths))
	for _, p := range b.Paths {
		applied[p] = first(p)
	}
	for _, rn := range w.renames {
		followRename(applied, rn.From, rn.To, keep)
		followRename(w.retry, rn.From, rn.To, keep)
	}
	for p, t := range applied {
		if _, ok := w.pending[p]; !ok {
			w.pending[p] = t
		}
	}
}

func (w *targetWorker) logReport(kind string, rep *Report) {
	if rep.Actions() == 0 && len(rep.Errors) == 0 && len(rep.Retry) == 0 && rep.Conflicts == 0 && rep.Held == 0 {
		if kind != "batch" {
			w.logger.Info(kind+": target already in sync", "duration", rep.Duration.Round(time.Microsecond))
		}
		return
	}
	attrs := []any{"kind", kind, "files", rep.Files, "bytes", rep.Bytes, "dirs", rep.Dirs, "links", rep.Links,
		"attrs", rep.Attrs, "deleted", rep.Deleted, "renamed", rep.Renamed, "duration", rep.Duration.Round(time.Microsecond)}
	if rep.Conflicts > 0 {
		attrs = append(attrs, "conflicts_lost", rep.Conflicts)
	}
	if len(rep.Retry) > 0 {
		attrs = append(attrs, "changing_retry", len(rep.Retry))
	}
	if len(rep.Errors) > 0 {
		attrs = append(attrs, "errors", len(rep.Errors))
		// Once per path and error, not at every retry: a directory that
		// stays unreadable for a day must not flood the log.
		if w.logged == nil {
			w.logged = map[string]string{}
		}
		shown := 0
		for _, e := range rep.Errors {
			msg := e.Op + ": " + e.Err.Error()
			if w.logged[e.Path] == msg || shown == 5 {
				continue
			}
			if len(w.logged) < 10000 {
				w.logged[e.Path] = msg
			}
			shown++
			w.logger.Warn("sync failed for path; will retry", "path", e.Path, "op", e.Op, "err", e.Err)
		}
	} else if len(w.logged) > 0 {
		clear(w.logged) // all well again: a new failure is news
	}
	w.logger.Info("synced", attrs...)
}

// setProgressGauges publishes the running pass (zeros when none runs).
func (w *targetWorker) setProgressGauges(p *ProgressSnapshot) {
	var s ProgressSnapshot
	if p != nil {
		s = *p
	}
	g := w.job.metrics.passProgress
	for what, v := range map[string]float64{
		"compared": float64(s.Compared), "total": float64(s.Total), "files": float64(s.Files),
		"bytes": float64(s.Bytes), "rate": s.Rate, "eta_seconds": s.ETA.Seconds(),
	} {
		g.WithLabelValues(w.job.cfg.Name, w.name, what).Set(v)
	}
}
