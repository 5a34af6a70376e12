package dbrepl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Event types delivered by Supervisor.Events.
const (
	EventFence         = "fence"
	EventUnfence       = "unfence"
	EventFenceFailed   = "fence_failed"
	EventUnfenceFailed = "unfence_failed"
	EventRefence       = "refence" // a fenced node came back writable (restart) and was fenced again
	EventUnreachable   = "unreachable"
	EventReachable     = "reachable"
	EventSkipped       = "fence_skipped" // would fence, but it is the last writable node
)

// Event is a fence transition or a node state change, with its reason.
type Event struct {
	Time   time.Time `json:"time"`
	Node   string    `json:"node"`
	Type   string    `json:"type"`
	Reason string    `json:"reason"`
	Manual bool      `json:"manual,omitempty"`
}

// Options are the supervisor's dependencies.
type Options struct {
	Logger *slog.Logger
	// Registerer receives the lockstep_repl_* metrics; nil registers none.
	Registerer prometheus.Registerer
	// OnEvent, when set, is called from the poll loop for every event; it
	// must not block.
	OnEvent func(Event)
	// Conflicts, when set (dbrepl/conflict's Detector), runs beside the
	// poll loop for as long as Run does, and its recent conflicts are part
	// of Status.
	Conflicts ConflictSource
}

// ConflictSource is a write-conflict detector: Run tails the binlogs until
// ctx ends and may be called again; Recent lists the latest conflicts.
type ConflictSource interface {
	Run(ctx context.Context) error
	Recent() []Conflict
}

// Supervisor watches both nodes of the pair, fences the one that falls
// behind or breaks, and reintroduces it once it has caught up.
type Supervisor struct {
	cfg     Config
	logger  *slog.Logger
	rootLog *slog.Logger // without this package's component, for the detector's restarts
	nodes   [2]*nodeConn
	store   FenceStore
	rings   [2]*heartbeatRing
	// stream derives the lag between polls from the binlog streams of the
	// conflict detector; streamFed says whether one feeds it.
	stream    *streamLag
	streamFed bool
	metrics   *metrics
	onEvent   func(Event)
	conflicts ConflictSource
	events    chan Event
	host      string

	// act serialises read_only changes between the poll loop and the
	// Fence/Unfence API.
	actMu sync.Mutex

	mu         sync.Mutex
	obs        [2]*Observation
	fences     [2]*FenceRecord
	fenceStamp [2]string
	goodSince  [2]time.Time
	mem        pairMemory // what the last decision remembered for the next
	skipLogged [2]bool
	// foreign: why each node's fence record is ignored (another server's);
	// foreignLogged: the record version already reported.
	foreign       [2]string
	foreignLogged [2]string
	loaded        bool // fence records read once (later changes are events)
	// inactive: only observe (see SetActive). The zero value is active so
	// that a standalone supervisor decides on its own.
	inactive    bool
	running     bool
	status      PairStatus
	hookWG      sync.WaitGroup
	hookCtx     context.Context // cancelled when a Run ends, then replaced
	cancelHooks context.CancelFunc
}

// New checks the config and opens (lazily) the connections to both nodes.
func New(cfg Config, opts Options) (*Supervisor, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("repl: %w", err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	rootLog := logger
	logger = logger.With("component", "dbrepl")
	host, _ := os.Hostname()
	s := &Supervisor{
		cfg:       cfg,
		logger:    logger,
		rootLog:   rootLog,
		store:     FenceStore{Dir: cfg.StateDir},
		metrics:   newMetrics(opts.Registerer),
		onEvent:   opts.OnEvent,
		conflicts: opts.Conflicts,
		events:    make(chan Event, 256),
		host:      fmt.Sprintf("%s/%d", host, os.Getpid()),
	}
	s.hookCtx, s.cancelHooks = context.WithCancel(context.Background())
	s.stream = newStreamLag(time.Now)
	if src, ok := opts.Conflicts.(GTIDStreamSource); ok {
		src.SetGTIDStream(s.stream)
		s.streamFed = true
		refresh := func() { s.refreshStreamLag(false) }
		s.metrics.refreshLag.Store(&refresh)
	}
	for i, nc := range cfg.Nodes {
		n, err := openNode(nc, s.pollTimeout(), logger)
		if err != nil {
			s.closeNodes()
			return nil, fmt.Errorf("repl: nodes[%d]: %w", i, err)
		}
		s.nodes[i] = n
		s.rings[i] = newHeartbeatRing(1024)
		s.metrics.init(nc.Name)
	}
	return s, nil
}

// pollTimeout bounds one node's observation, so a hung server delays the
// loop by at most this much: one interval, and at least a second so that
// a loaded server is not declared unreachable for a slow answer.
func (s *Supervisor) pollTimeout() time.Duration {
	return max(s.cfg.Interval, time.Second)
}

func (s *Supervisor) closeNodes() {
	for _, n := range s.nodes {
		if n != nil {
			_ = n.close()
		}
	}
}

// Events delivers fence transitions and node state changes. Events are
// dropped (and logged) when the consumer falls 256 behind.
func (s *Supervisor) Events() <-chan Event { return s.events }

// Run polls every interval until ctx ends, then waits for running hooks
// (they are cancelled) and closes the connections. Run may be called
// again once it has returned (the daemon restarts a failed supervisor):
// each run starts from what the servers and state_dir say then, while
// metrics, the active flag and the event channel carry over. Runs must
// not overlap.
func (s *Supervisor) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("repl: supervisor already running")
	}
	s.running = true
	s.mu.Unlock()
	s.startRun()
	ctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stop()
		wg.Wait()
		s.stopHooks()
		s.closeNodes()
		s.mu.Lock()
		s.running = false
		s.mu.Unlock()
	}()
	if s.conflicts != nil {
		wg.Go(func() { s.runConflicts(ctx) })
	}
	s.logger.Info("supervising", "nodes", []string{s.cfg.Nodes[0].Name, s.cfg.Nodes[1].Name},
		"interval", s.cfg.Interval, "max_lag", s.cfg.Fence.MaxLag)
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	// Between polls the lag is followed on the binlog streams, at no cost
	// to the databases; a node crossing max_lag is polled at once, so that
	// fencing does not wait for the next interval.
	var lagTick <-chan time.Time
	if s.streamFed {
		lt := time.NewTicker(streamLagTick)
		defer lt.Stop()
		lagTick = lt.C
	}
	for {
		s.poll(ctx, false)
	wait:
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				break wait
			case <-lagTick:
				if s.refreshStreamLag(true) {
					t.Reset(s.cfg.Interval)
					break wait
				}
			}
		}
	}
}

// startRun forgets what an earlier run learnt: fence records are read
// again (and logged as loaded, not announced as new), reachability,
// hysteresis and heartbeat history start empty, and the servers' flavor
// is asked again, as for a newly built supervisor. Only the last status
// stays, so that Status answers between a failure and the restart.
func (s *Supervisor) startRun() {
	s.mu.Lock()
	s.obs = [2]*Observation{}
	s.fences = [2]*FenceRecord{}
	s.fenceStamp = [2]string{}
	s.goodSince = [2]time.Time{}
	s.mem = pairMemory{}
	s.skipLogged = [2]bool{}
	s.foreign, s.foreignLogged = [2]string{}, [2]string{}
	s.loaded = false
	s.mu.Unlock()
	for i, n := range s.nodes {
		s.rings[i] = newHeartbeatRing(1024)
		n.forgetFlavor()
	}
}

// stopHooks cancels the running hooks and waits for them; hooks started
// later (a manual Fence between runs, the next run) get a fresh context.
func (s *Supervisor) stopHooks() {
	s.mu.Lock()
	cancel := s.cancelHooks
	s.hookCtx, s.cancelHooks = context.WithCancel(context.Background())
	s.mu.Unlock()
	cancel()
	s.hookWG.Wait()
}

// runConflicts keeps the write-conflict detector running until ctx ends.
// The detector retries unreachable nodes and refused binlog dumps (a
// missing REPLICATION SLAVE grant) with backoff itself; should Run ever
// return early, it is restarted here, because losing conflict detection
// must not take the supervisor down with it.
func (s *Supervisor) runConflicts(ctx context.Context) {
	backoff := time.Second
	for {
		err := s.conflicts.Run(ctx)
		if ctx.Err() != nil {
			return
		}
		s.rootLog.Error("write-conflict detector stopped; the supervisor keeps running, restarting the detector",
			"component", "conflict", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// Close releases the connections that Fence or Unfence opened outside
// Run (Run closes its own when it returns).
func (s *Supervisor) Close() error {
	s.hookWG.Wait()
	s.closeNodes()
	return nil
}

// SetActive says whether this supervisor makes the automatic decisions.
// When two supervisors watch the same pair (one per daemon), only the
// cluster writer's is active: two deciders could each fence a different
// node when both qualify at once, leaving no writable database. An
// inactive supervisor keeps observing, writing heartbeats and publishing
// status; it enforces the manual fence records of its state_dir, mirrors
// the active supervisor's fences into its own records (so that its status
// says which node is fenced) and never fences or reintroduces a node on
// its own. Fence and Unfence act in either mode. A supervisor that is never
// told is active. Becoming active restarts the unfence_hold of every
// fenced node, which counts from then. Safe for concurrent use.
func (s *Supervisor) SetActive(active bool) {
	s.mu.Lock()
	changed := s.inactive == active
	s.inactive = !active
	if changed && active {
		s.goodSince = [2]time.Time{}
		s.skipLogged = [2]bool{}
	}
	s.metrics.active.Set(b2f(active))
	s.mu.Unlock()
	if changed {
		if active {
			s.logger.Info("active: this supervisor now fences and reintroduces nodes automatically")
		} else {
			s.logger.Info("inactive: observing only; the active supervisor fences and reintroduces nodes")
		}
	}
}

// Active reports whether the supervisor makes automatic decisions.
func (s *Supervisor) Active() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.inactive
}

// Status is the latest view of the pair.
func (s *Supervisor) Status() PairStatus {
	s.mu.Lock()
	st := s.status
	st.Nodes = append([]NodeStatus(nil), s.status.Nodes...)
	st.Problems = append([]string(nil), s.status.Problems...)
	s.mu.Unlock()
	if s.conflicts != nil {
		st.Conflicts = s.conflicts.Recent()
	}
	return st
}

// Snapshot observes the pair once without writing heartbeats or fencing:
// `lockstep repl status` when no daemon runs. Lags are estimated from the
// heartbeats a running supervisor writes (pt-heartbeat style, within one
// interval); without one, lag reads 0 and heartbeat ages grow.
func Snapshot(ctx context.Context, cfg Config, logger *slog.Logger) (PairStatus, error) {
	s, err := New(cfg, Options{Logger: logger})
	if err != nil {
		return PairStatus{}, err
	}
	defer s.closeNodes()
	s.poll(ctx, true)
	return s.Status(), nil
}

func (s *Supervisor) index(node string) (int, error) {
	for i, nc := range s.cfg.Nodes {
		if nc.Name == node {
			return i, nil
		}
	}
	return -1, fmt.Errorf("%w %q (configured: %s, %s)", ErrUnknownNode, node, s.cfg.Nodes[0].Name, s.cfg.Nodes[1].Name)
}

// reloadFences picks up records changed by `lockstep repl fence|unfence`
// while the supervisor runs (keyed on mtime and size).
func (s *Supervisor) reloadFences() {
	defer func() {
		s.mu.Lock()
		s.loaded = true
		s.mu.Unlock()
	}()
	for i, nc := range s.cfg.Nodes {
		stamp := s.stamp(nc.Name)
		s.mu.Lock()
		same := stamp == s.fenceStamp[i]
		s.mu.Unlock()
		if same {
			continue
		}
		rec, err := s.store.Load(nc.Name)
		if err != nil {
			s.logger.Error("cannot read fence record; keeping the previous state", "node", nc.Name, "err", err)
			continue
		}
		s.mu.Lock()
		prev := s.fences[i]
		loaded := s.loaded
		s.fences[i] = rec
		s.fenceStamp[i] = stamp
		s.goodSince[i] = time.Time{}
		s.mu.Unlock()
		switch {
		case prev == nil && rec != nil && !loaded:
			s.logger.Info("fence record loaded", "node", nc.Name, "reason", rec.Reason, "manual", rec.Manual, "since", rec.Since)
		case prev == nil && rec != nil:
			// `lockstep repl fence` while we run: consumers must hear of it.
			s.metrics.fences.Inc()
			s.emit(Event{Node: nc.Name, Type: EventFence, Reason: rec.Reason, Manual: rec.Manual})
		case prev != nil && rec == nil:
			s.emit(Event{Node: nc.Name, Type: EventUnfence, Reason: "fence record removed (lockstep repl unfence)", Manual: true})
		}
	}
}

// poll observes both nodes, decides and acts.
func (s *Supervisor) poll(ctx context.Context, snapshot bool) {
	s.reloadFences()
	obs := s.observePair(ctx, snapshot)
	if ctx.Err() != nil && !snapshot {
		return
	}
	s.step(ctx, obs, snapshot)
}

// step decides on one poll's observations, acts on the decision (not for
// a snapshot) and publishes the result.
func (s *Supervisor) step(ctx context.Context, obs [2]*Observation, snapshot bool) {
	v := s.view(obs, snapshot)
	d := decide(v)
	s.mu.Lock()
	s.mem = d.mem
	s.foreign = d.foreign
	s.mu.Unlock()
	if !snapshot {
		s.act(ctx, v, d)
	}
	s.publish(obs, d.eval)
}

// view captures what decide needs, at one instant.
func (s *Supervisor) view(obs [2]*Observation, snapshot bool) pairView {
	lag := s.measureLag(obs, snapshot)
	s.mu.Lock()
	defer s.mu.Unlock()
	return pairView{
		now:       time.Now(),
		fence:     s.cfg.Fence,
		active:    !s.inactive,
		snapshot:  snapshot,
		obs:       obs,
		addrs:     [2]string{s.nodes[0].addr, s.nodes[1].addr},
		lag:       lag,
		fences:    s.fences,
		goodSince: s.goodSince,
		mem:       s.mem,
	}
}

// Fence fences node by hand: it stays fenced until Unfence, whatever its
// replication does. It does not refuse to fence the last writable node:
// an operator may want exactly that.
func (s *Supervisor) Fence(ctx context.Context, node, reason string) error {
	i, err := s.index(node)
	if err != nil {
		return err
	}
	if reason == "" {
		reason = "manual fence"
	}
	s.mu.Lock()
	obs := s.obs
	s.mu.Unlock()
	return s.fence(ctx, i, reason, true, obs, [2]*nodeEval{})
}

// Unfence lifts a manual or automatic fence. If the node is still behind
// or broken the next poll fences it again.
func (s *Supervisor) Unfence(ctx context.Context, node string) error {
	i, err := s.index(node)
	if err != nil {
		return err
	}
	return s.unfence(ctx, i, "manual unfence", true)
}

// ManualFence is `lockstep repl fence`: without a running supervisor it
// sets read_only on the node and writes the manual fence record to
// state_dir, where a running supervisor picks it up on its next poll.
func ManualFence(ctx context.Context, cfg Config, node, reason string, logger *slog.Logger) error {
	s, err := New(cfg, Options{Logger: logger})
	if err != nil {
		return err
	}
	defer s.closeNodes()
	err = s.Fence(ctx, node, reason)
	s.hookWG.Wait()
	return err
}

// ManualUnfence is `lockstep repl unfence`.
func ManualUnfence(ctx context.Context, cfg Config, node string, logger *slog.Logger) error {
	s, err := New(cfg, Options{Logger: logger})
	if err != nil {
		return err
	}
	defer s.closeNodes()
	if _, err := s.index(node); err != nil {
		return err
	}
	s.reloadFences()
	err = s.Unfence(ctx, node)
	s.hookWG.Wait()
	return err
}

// ErrUnknownNode is wrapped by Fence/Unfence for a node not in the config.
var ErrUnknownNode = errors.New("unknown node")
