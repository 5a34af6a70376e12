package dbrepl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
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
	cfg       Config
	logger    *slog.Logger
	rootLog   *slog.Logger // without this package's component, for the detector's restarts
	nodes     [2]*nodeConn
	store     FenceStore
	rings     [2]*heartbeatRing
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
	errantSeen [2]int
	wasDown    [2]bool
	backSince  [2]time.Time // when the node answered again after being unreachable
	skipLogged [2]bool
	loaded     bool // fence records read once (later changes are events)
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
// loop by at most this much.
func (s *Supervisor) pollTimeout() time.Duration {
	return max(4*s.cfg.Interval, time.Second)
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
	for {
		s.poll(ctx, false)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
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
	s.errantSeen = [2]int{}
	s.wasDown = [2]bool{}
	s.backSince = [2]time.Time{}
	s.skipLogged = [2]bool{}
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

func (s *Supervisor) emit(ev Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	log := s.logger.With("node", ev.Node, "event", ev.Type, "reason", ev.Reason)
	switch ev.Type {
	case EventFenceFailed, EventUnfenceFailed, EventUnreachable, EventRefence:
		log.Warn("replication event")
	default:
		log.Info("replication event")
	}
	if s.onEvent != nil {
		s.onEvent(ev)
	}
	select {
	case s.events <- ev:
	default:
		s.logger.Warn("event dropped: consumer too slow", "node", ev.Node, "event", ev.Type)
	}
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
		stamp := ""
		if fi, err := os.Stat(s.store.path(nc.Name)); err == nil {
			stamp = fi.ModTime().String() + "/" + strconv.FormatInt(fi.Size(), 10)
		}
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

// poll observes both nodes in parallel, then evaluates and acts.
func (s *Supervisor) poll(ctx context.Context, snapshot bool) {
	s.reloadFences()
	var obs [2]*Observation
	var wg sync.WaitGroup
	for i, n := range s.nodes {
		wg.Go(func() { obs[i] = n.observe(ctx, !snapshot) })
	}
	wg.Wait()
	if ctx.Err() != nil && !snapshot {
		return
	}
	for i, o := range obs {
		s.mu.Lock()
		if o.Reachable && s.wasDown[i] {
			s.backSince[i] = o.Local
		}
		s.mu.Unlock()
		if o.HeartbeatWritten != 0 {
			s.rings[i].add(o.HeartbeatWritten, o.HeartbeatCommitted, o.HeartbeatSeq)
		}
		if !o.Reachable {
			s.nodes[i].forgetFlavor()
		}
	}
	ev := s.evaluate(obs, snapshot)
	if !snapshot {
		s.act(ctx, obs, ev)
	}
	s.publish(obs, ev)
}

// nodeEval is the detector's verdict on one node.
type nodeEval struct {
	lag, age     *time.Duration
	behind       *int64
	applied      uint64
	replica      *ReplicaStatus
	errno        int
	errText      string
	failingGTID  string
	brokenNow    string // fence at once: replication stopped on an error
	lagging      string // fence: lag over max_lag
	stopped      bool   // a thread is not running
	caughtUp     bool   // qualifies for reintroduction this poll
	errant       []string
	replProblems []string
}

func (s *Supervisor) evaluate(obs [2]*Observation, snapshot bool) [2]*nodeEval {
	var out [2]*nodeEval
	for i := range obs {
		o, p := obs[i], obs[1-i]
		e := &nodeEval{}
		out[i] = e
		if !o.Reachable || o.Err != nil {
			continue
		}
		e.replica = o.Replica(p)
		r := e.replica
		if r == nil {
			e.replProblems = append(e.replProblems, fmt.Sprintf("%s: no replication configured from %s", o.Node, p.Node))
			e.stopped = true
		} else {
			e.stopped = !r.IOOK() || !r.SQLOK()
			switch {
			case r.LastSQLErrno != 0:
				e.errno, e.errText = r.LastSQLErrno, r.LastSQLError
			case r.LastIOErrno != 0:
				e.errno, e.errText = r.LastIOErrno, r.LastIOError
			}
			if e.errno != 0 {
				e.failingGTID = FailingGTIDFromError(e.errText)
				if e.failingGTID == "" && r.LastSQLErrno != 0 && p.Reachable && o.Flavor == FlavorMariaDB {
					e.failingGTID = nextMariaGTID(o.GTIDSlavePos, p.DomainID, p.ServerID)
				}
			}
			if !r.SQLOK() && r.LastSQLErrno != 0 {
				e.brokenNow = fmt.Sprintf("replication from %s broken: SQL thread stopped on error %d: %s", p.Node, r.LastSQLErrno, r.LastSQLError)
				if e.failingGTID != "" {
					e.brokenNow += " (GTID " + e.failingGTID + ")"
				}
			} else if !r.IOOK() && r.LastIOErrno != 0 && p.Reachable && !connectErrno(r.LastIOErrno) {
				e.brokenNow = fmt.Sprintf("replication from %s broken: IO thread stopped on error %d: %s", p.Node, r.LastIOErrno, r.LastIOError)
			}
			if e.stopped {
				e.replProblems = append(e.replProblems, fmt.Sprintf("%s: replication from %s not running (io=%s sql=%s)", o.Node, p.Node, r.IORunning, r.SQLRunning))
			}
		}
		if !p.Reachable || p.Err != nil {
			continue
		}
		// Lag behind the peer, on the peer's clock.
		in := LagInput{
			SourceNowUS: p.NodeNowUS,
			SourceLocal: p.Local,
			SourceOwnTS: p.HeartbeatTS[p.Node],
			SeenTS:      o.HeartbeatTS[p.Node],
			ReadLocal:   o.HeartbeatReadLocal,
			Interval:    s.cfg.Interval,
		}
		if o.Flavor == FlavorMariaDB && p.Flavor == FlavorMariaDB {
			in.AppliedSeq = MariaDBAppliedIn(o.GTIDCurrentPos, p.DomainID)
			in.AppliedLocal = o.VarsLocal
		}
		lag, age, ok := s.rings[1-i].lag(in)
		if ok && (snapshot || p.HeartbeatErr == nil) {
			e.lag, e.age = &lag, &age
		}
		if o.Flavor == FlavorMariaDB {
			if b, err := MariaDBBehind(p.GTIDBinlogPos, o.GTIDCurrentPos, p.DomainID); err == nil {
				e.behind = &b
			}
			e.applied = MariaDBAppliedIn(o.GTIDCurrentPos, p.DomainID)
			if errant, err := MariaDBErrant(o.GTIDBinlogPos, o.DomainID, p.GTIDBinlogPos, p.GTIDCurrentPos, p.DomainID); err == nil {
				e.errant = errant
			}
		} else {
			if b, err := MySQLBehind(p.GTIDExecuted, o.GTIDExecuted, p.ServerUUID); err == nil {
				e.behind = &b
			}
			e.applied = uint64(MySQLExecutedCount(o.GTIDExecuted))
			if errant, err := MySQLErrant(o.GTIDExecuted, o.ServerUUID, p.GTIDExecuted); err == nil {
				e.errant = errant
			}
		}
		// A node is not to blame for lacking what its peer wrote before it
		// went down: its receiver needs up to Connect_Retry to reconnect
		// once the peer is back. For the fence decision the lag counts
		// from then at the earliest.
		fenceLag := e.lag
		s.mu.Lock()
		back := s.backSince[1-i]
		s.mu.Unlock()
		if e.lag != nil && !back.IsZero() {
			var retry time.Duration
			if r != nil {
				retry = r.ConnectRetry
			}
			if allowed := o.Local.Sub(back) - retry; *e.lag > allowed {
				v := max(allowed, 0)
				fenceLag = &v
			}
		}
		if fenceLag != nil && *fenceLag > s.cfg.Fence.MaxLag {
			e.lagging = fmt.Sprintf("%s behind %s, over max_lag %s", e.lag.Round(time.Millisecond), p.Node, s.cfg.Fence.MaxLag)
			if e.stopped && r != nil {
				e.lagging += fmt.Sprintf(" (io=%s sql=%s)", r.IORunning, r.SQLRunning)
			}
		}
		e.caughtUp = r != nil && !e.stopped && e.errno == 0 && e.lag != nil && *e.lag < s.cfg.Fence.UnfenceLag
	}
	// Errant transactions count only once seen in three polls in a row:
	// one sample can race with a write the peer applies between the reads.
	s.mu.Lock()
	for i, e := range out {
		if len(e.errant) > 0 {
			s.errantSeen[i]++
		} else {
			s.errantSeen[i] = 0
		}
		if s.errantSeen[i] < 3 && !snapshot {
			e.errant = nil
		}
	}
	s.mu.Unlock()
	return out
}

// connectErrno: errors the IO thread reports while its source is down or
// unreachable; the peer being down is never this node's fault.
func connectErrno(n int) bool {
	switch n {
	case 2003, 2005, 2006, 2013, 2026, 1045, 1129, 1130:
		return true
	}
	return false
}

// nextMariaGTID is the transaction the applier stopped at: MariaDB numbers
// a domain consecutively, so it is the slave position's successor.
func nextMariaGTID(slavePos string, domain, serverID uint32) string {
	seq := MariaDBAppliedIn(slavePos, domain)
	return fmt.Sprintf("%d-%d-%d", domain, serverID, seq+1)
}

// act fences, reintroduces and re-enforces.
func (s *Supervisor) act(ctx context.Context, obs [2]*Observation, ev [2]*nodeEval) {
	now := time.Now()
	s.mu.Lock()
	fences := s.fences
	active := !s.inactive
	s.mu.Unlock()

	// Reachability transitions.
	for i, o := range obs {
		s.mu.Lock()
		was := s.wasDown[i]
		s.wasDown[i] = !o.Reachable
		s.mu.Unlock()
		if !o.Reachable && !was {
			s.emit(Event{Node: o.Node, Type: EventUnreachable, Reason: errString(o.Err)})
		} else if o.Reachable && was {
			s.emit(Event{Node: o.Node, Type: EventReachable, Reason: "node answers again"})
		}
	}

	// A fenced node that is writable again (restarted with read_only=OFF
	// from its config, or unfenced by hand behind our back) is fenced again.
	for i, o := range obs {
		if fences[i] != nil && o.Reachable && o.Err == nil && !o.ReadOnly {
			if !fences[i].Manual && (ev[i].caughtUp || !active) {
				// Made writable elsewhere (the active supervisor reintroduced
				// it): accept, don't flap. An active supervisor only accepts
				// it once the node has caught up.
				why := "writable again and caught up (reintroduced outside this supervisor)"
				if !ev[i].caughtUp {
					why = "writable again (reintroduced by the active supervisor)"
				}
				s.dropFence(i, why)
				fences[i] = nil
				continue
			}
			if err := s.setFenced(ctx, i, true); err != nil {
				s.emit(Event{Node: o.Node, Type: EventFenceFailed, Reason: "re-fence: " + err.Error(), Manual: fences[i].Manual})
			} else {
				s.emit(Event{Node: o.Node, Type: EventRefence, Reason: "fenced node was writable again: " + fences[i].Reason, Manual: fences[i].Manual})
			}
			s.mu.Lock()
			s.goodSince[i] = time.Time{}
			s.mu.Unlock()
		}
	}

	// Fence candidates.
	var want []int
	for i, e := range ev {
		if fences[i] != nil || !obs[i].Reachable || obs[i].Err != nil {
			continue
		}
		if e.brokenNow != "" || e.lagging != "" {
			want = append(want, i)
		}
	}
	if !active {
		// Each qualifying node that the active supervisor fenced is
		// mirrored; which one to keep writable is not ours to choose.
		for _, i := range want {
			s.follow(i, obs, ev)
		}
		want = nil
	}
	if len(want) == 2 {
		// Both are behind or broken: keep the one that applied more of
		// its peer's transactions writable; ties keep the first node.
		keep := 0
		b0, b1 := behindOrMax(ev[0]), behindOrMax(ev[1])
		switch {
		case b1 < b0:
			keep = 1
		case b1 == b0 && lagOrMax(ev[1]) < lagOrMax(ev[0]):
			keep = 1
		}
		s.skip(keep, obs, "both nodes behind or broken; this one applied more of its peer's transactions and stays writable")
		want = []int{1 - keep}
	}
	for _, i := range want {
		p := 1 - i
		switch {
		case !obs[p].Reachable:
			s.skip(i, obs, "peer unreachable: this is the last reachable writer")
			continue
		case fences[p] != nil || obs[p].ReadOnly:
			s.skip(i, obs, "peer is read-only: never fence the last writable node")
			continue
		}
		// Another supervisor (each daemon of the pair runs one) may have
		// fenced the peer since our poll: look again right before acting,
		// which narrows the window where both could fence "the other".
		if ro, err := s.nodes[p].readOnlyNow(ctx); err != nil || ro {
			why := "peer is read-only: never fence the last writable node"
			if err != nil {
				why = "peer's read_only unknown: " + err.Error()
			}
			s.skip(i, obs, why)
			continue
		}
		if !s.Active() {
			continue // deactivated since this poll began: the writer decides
		}
		_ = s.fence(ctx, i, fenceReason(ev[i]), false, obs, ev) // failures are events
	}
	for i := range ev {
		if !slicesContains(want, i) && ev[i].brokenNow == "" && ev[i].lagging == "" {
			s.mu.Lock()
			s.skipLogged[i] = false
			s.mu.Unlock()
		}
	}

	// Reintroduction with hysteresis.
	for i, e := range ev {
		f := fences[i]
		if f == nil || f.Manual {
			continue
		}
		if !active {
			if e.caughtUp {
				s.logger.Debug("inactive: would start or continue reintroducing; the active supervisor decides",
					"node", obs[i].Node, "lag", e.lag.Round(time.Millisecond))
			}
			continue
		}
		s.mu.Lock()
		if !e.caughtUp {
			s.goodSince[i] = time.Time{}
			s.mu.Unlock()
			continue
		}
		if s.goodSince[i].IsZero() {
			s.goodSince[i] = now
		}
		held := now.Sub(s.goodSince[i])
		s.mu.Unlock()
		if held >= s.cfg.Fence.UnfenceHold {
			_ = s.unfence(ctx, i, fmt.Sprintf("caught up: both threads running, lag %s < unfence_lag %s for %s",
				e.lag.Round(time.Millisecond), s.cfg.Fence.UnfenceLag, held.Round(time.Millisecond)), false)
		}
	}
}

func fenceReason(e *nodeEval) string {
	if e.brokenNow != "" {
		return e.brokenNow
	}
	return e.lagging
}

// follow is an inactive supervisor's answer to node i qualifying for a
// fence: nothing while the node is writable (the active supervisor
// decides), and once it is read-only, a fence record of its own so that
// its status and its daemon see the node fenced. The record is automatic:
// should this supervisor become active, it reintroduces the node once it
// has caught up.
func (s *Supervisor) follow(i int, obs [2]*Observation, ev [2]*nodeEval) {
	o := obs[i]
	reason := fenceReason(ev[i])
	if !o.ReadOnly && !o.SuperReadOnly {
		s.logger.Debug("inactive: would fence; the active supervisor decides", "node", o.Node, "reason", reason)
		return
	}
	s.actMu.Lock()
	defer s.actMu.Unlock()
	s.mu.Lock()
	known := s.fences[i] != nil
	s.mu.Unlock()
	if known {
		return // fenced by hand meanwhile
	}
	rec := s.newFenceRecord(i, o.Node, "read-only (fenced by the active supervisor): "+reason, false, obs, ev)
	if err := s.store.Save(rec); err != nil {
		s.logger.Error("fence record not saved", "node", o.Node, "err", err)
	}
	s.mu.Lock()
	s.fences[i] = rec
	s.fenceStamp[i] = s.stamp(o.Node)
	s.goodSince[i] = time.Time{}
	s.mu.Unlock()
	s.emit(Event{Node: o.Node, Type: EventFence, Reason: rec.Reason})
}

func slicesContains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// skip records once per episode that node i was not fenced although it
// qualified.
func (s *Supervisor) skip(i int, obs [2]*Observation, why string) {
	s.mu.Lock()
	logged := s.skipLogged[i]
	s.skipLogged[i] = true
	s.mu.Unlock()
	if !logged {
		s.emit(Event{Node: obs[i].Node, Type: EventSkipped, Reason: why})
	}
}

func behindOrMax(e *nodeEval) int64 {
	if e.behind == nil {
		return 1<<62 - 1
	}
	return *e.behind
}

func lagOrMax(e *nodeEval) time.Duration {
	if e.lag == nil {
		return 1<<62 - 1
	}
	return *e.lag
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// setFenced switches read_only on node i and, on fence, optionally kills
// client sessions.
func (s *Supervisor) setFenced(ctx context.Context, i int, on bool) error {
	n := s.nodes[i]
	if err := n.setReadOnly(ctx, on); err != nil {
		return err
	}
	if on && s.cfg.Fence.KillConnections {
		killed, err := n.killClientSessions(ctx)
		if err != nil {
			s.logger.Warn("killing client sessions failed", "node", n.name, "killed", killed, "err", err)
		} else if killed > 0 {
			s.logger.Info("killed client sessions", "node", n.name, "killed", killed)
		}
	}
	return nil
}

// newFenceRecord captures why node i is fenced and where both nodes stood,
// so that a restarted supervisor (and an admin) can tell when it has caught up.
func (s *Supervisor) newFenceRecord(i int, name, reason string, manual bool, obs [2]*Observation, ev [2]*nodeEval) *FenceRecord {
	rec := &FenceRecord{Node: name, Reason: reason, Manual: manual, Since: time.Now().UTC(), By: s.host}
	if o := obs[i]; o != nil {
		rec.GTIDCurrentPos, rec.GTIDExecuted = o.GTIDCurrentPos, o.GTIDExecuted
	}
	if p := obs[1-i]; p != nil {
		rec.PeerGTIDBinlogPos, rec.PeerGTIDExecuted = p.GTIDBinlogPos, p.GTIDExecuted
	}
	if e := ev[i]; e != nil {
		if e.lag != nil {
			v := e.lag.Seconds()
			rec.LagSeconds = &v
		}
		rec.LastErrno, rec.LastError, rec.FailingGTID = e.errno, e.errText, e.failingGTID
	}
	return rec
}

func (s *Supervisor) fence(ctx context.Context, i int, reason string, manual bool, obs [2]*Observation, ev [2]*nodeEval) error {
	s.actMu.Lock()
	defer s.actMu.Unlock()
	name := s.cfg.Nodes[i].Name
	start := time.Now()
	if err := s.setFenced(ctx, i, true); err != nil {
		s.emit(Event{Node: name, Type: EventFenceFailed, Reason: reason + ": " + err.Error(), Manual: manual})
		return err
	}
	rec := s.newFenceRecord(i, name, reason, manual, obs, ev)
	if err := s.store.Save(rec); err != nil {
		// The node is read-only, which is the safe side; without the record
		// a restart would not know why, so say it loudly.
		s.logger.Error("fence record not saved: a supervisor restart will not know this node is fenced", "node", name, "err", err)
	}
	s.mu.Lock()
	s.fences[i] = rec
	s.fenceStamp[i] = s.stamp(name)
	s.goodSince[i] = time.Time{}
	s.mu.Unlock()
	s.metrics.fences.Inc()
	s.logger.Info("fenced", "node", name, "took", time.Since(start).Round(time.Microsecond))
	s.emit(Event{Node: name, Type: EventFence, Reason: reason, Manual: manual})
	s.hook(s.cfg.Hooks.OnFence, HookFence, name, reason, manual)
	return nil
}

func (s *Supervisor) unfence(ctx context.Context, i int, reason string, manual bool) error {
	s.actMu.Lock()
	defer s.actMu.Unlock()
	name := s.cfg.Nodes[i].Name
	if err := s.setFenced(ctx, i, false); err != nil {
		s.emit(Event{Node: name, Type: EventUnfenceFailed, Reason: err.Error(), Manual: manual})
		return err
	}
	if err := s.store.Remove(name); err != nil {
		s.logger.Error("fence record not removed", "node", name, "err", err)
	}
	s.mu.Lock()
	s.fences[i] = nil
	s.fenceStamp[i] = ""
	s.goodSince[i] = time.Time{}
	s.mu.Unlock()
	s.emit(Event{Node: name, Type: EventUnfence, Reason: reason, Manual: manual})
	s.hook(s.cfg.Hooks.OnUnfence, HookUnfence, name, reason, manual)
	return nil
}

// dropFence forgets an automatic fence someone else already lifted.
func (s *Supervisor) dropFence(i int, reason string) {
	s.actMu.Lock()
	defer s.actMu.Unlock()
	name := s.cfg.Nodes[i].Name
	if err := s.store.Remove(name); err != nil {
		s.logger.Error("fence record not removed", "node", name, "err", err)
	}
	s.mu.Lock()
	s.fences[i] = nil
	s.fenceStamp[i] = ""
	s.goodSince[i] = time.Time{}
	s.mu.Unlock()
	s.emit(Event{Node: name, Type: EventUnfence, Reason: reason})
}

func (s *Supervisor) stamp(node string) string {
	if fi, err := os.Stat(s.store.path(node)); err == nil {
		return fi.ModTime().String() + "/" + strconv.FormatInt(fi.Size(), 10)
	}
	return ""
}

// hook runs a hook in the background: the poll loop never waits for it.
func (s *Supervisor) hook(path, event, node, reason string, manual bool) {
	if path == "" {
		return
	}
	env := hookEnv(event, node, reason, manual, s.peerOf(node))
	s.mu.Lock()
	ctx := s.hookCtx
	s.mu.Unlock()
	s.hookWG.Go(func() {
		_ = runHook(ctx, s.logger, path, s.cfg.Hooks.Timeout, env)
	})
}

func hookEnv(event, node, reason string, manual bool, peer string) map[string]string {
	return map[string]string{
		"LOCKSTEP_EVENT":  event,
		"LOCKSTEP_NODE":   node,
		"LOCKSTEP_PEER":   peer,
		"LOCKSTEP_REASON": reason,
		"LOCKSTEP_MANUAL": strconv.FormatBool(manual),
		"LOCKSTEP_TIME":   time.Now().UTC().Format(time.RFC3339Nano),
	}
}

func (s *Supervisor) peerOf(node string) string {
	if s.cfg.Nodes[0].Name == node {
		return s.cfg.Nodes[1].Name
	}
	return s.cfg.Nodes[0].Name
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
