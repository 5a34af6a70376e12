package orchestrator

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// reasonStarting is the role reason until the first decision.
const reasonStarting = "starting"

// selfFencePrefix starts the reason of every database fence this daemon
// sets itself; after a restart it recognises its own fence by it and
// lifts it once the node is no longer isolated.
const selfFencePrefix = "lockstep self-fence: "

// errCrash, as the cancel cause of Run's context, makes Run return at once
// without releasing anything or saying goodbye: a simulated kill -9.
var errCrash = errors.New("simulated crash")

// RoleManager decides this node's role and holds the resources while it
// is the writer. It composes three parts around one loop:
//
//   - the observer (observer.go) owns the heartbeat peers and the
//     witnesses and hands the loop an observation;
//   - decide (decide.go) turns an observation plus the role state into a
//     decision, a pure function;
//   - the actor (actor.go) carries the decision out: resources, fences.
//
// The role state has one owner, the goroutine running Run; it publishes
// a copy after every change, which the heartbeat sender and Status read
// without a lock.
type RoleManager struct {
	self      NodeConfig
	preferred string // lowest configured node name
	logger    *slog.Logger
	events    *EventLog
	metrics   *Metrics
	db        Database // nil: no replication supervisor
	obs       *observer
	act       *actor
	fence     *fencer
	arb       *arbiter // nil: no arbiter configured
	// double is the last double writer detected (doublewriter.go), read
	// by the HTTP goroutines.
	double atomic.Pointer[DoubleWriterStatus]
	boot   uint64
	// health and tracks feed decide's eligibility inputs; see monitor.go.
	health *resourceHealth
	tracks *tracker

	// cfg is swapped whole by Reload; everyone reads a consistent copy.
	cfg  atomic.Pointer[ClusterConfig]
	conn atomic.Pointer[net.UDPConn] // bound by Bind, taken by Run
	seq  atomic.Uint64               // heartbeat sequence within boot
	snap atomic.Pointer[roleSnapshot]

	roleCh  chan string   // role changes for db.SetActive
	sendNow chan struct{} // role changed: tell peers now

	// state is touched only by the goroutine running Run (one at a time:
	// the daemon restarts Run sequentially), so it needs no lock.
	state roleState
}

// roleSnapshot is the part of the role state others may read.
type roleSnapshot struct {
	role          string
	reason        string
	roleSince     time.Time
	writerSince   time.Time
	failHoldUntil time.Time
	decided       bool
	draining      bool
	leaving       bool
	// ineligible: why this node may not take the writer role now (failed
	// resources, failing tracks); "" = eligible.
	ineligible string
	// release is set while a release is incomplete (release.go).
	release *ReleaseStatus
}

// roleState is the role loop's memory between decisions.
type roleState struct {
	roleSnapshot
	failBackoff   time.Duration
	isolatedAt    time.Time // when we last fenced ourselves
	selfFenced    bool      // our database carries our own self-fence
	dbFencedSince time.Time
	lastWaiting   string
	// lastUnfence paces the lifting of our self-fence: the supervisors
	// report the lift only at their next poll (and the peer's active one
	// may mirror the fence back meanwhile), and every decision tick in
	// between would lift it again.
	lastUnfence time.Time
	// release: an incomplete release being retried (release.go).
	release *releaseState
}

// RoleManagerConfig gathers a RoleManager's dependencies.
type RoleManagerConfig struct {
	Node      string
	Cluster   *ClusterConfig
	Key       *Key
	Resources []Resource
	DB        Database // nil: no database to fence or watch
	Events    *EventLog
	Metrics   *Metrics
	Logger    *slog.Logger
}

// NewRoleManager checks that the node is a cluster member.
func NewRoleManager(c RoleManagerConfig) (*RoleManager, error) {
	rm := &RoleManager{
		logger:  c.Logger.With("component", "role"),
		events:  c.Events,
		metrics: c.Metrics,
		db:      c.DB,
		roleCh:  make(chan string, 1),
		sendNow: make(chan struct{}, 1),
	}
	cfg := *c.Cluster
	rm.cfg.Store(&cfg)
	found := false
	var names []string
	for _, n := range c.Cluster.Nodes {
		names = append(names, n.Name)
		if n.Name == c.Node {
			rm.self, found = n, true
		}
	}
	if !found {
		return nil, fmt.Errorf("node %q is not listed in cluster.nodes (%s)", c.Node, strings.Join(names, ", "))
	}
	rm.preferred = slices.Min(names)
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	rm.boot = binary.BigEndian.Uint64(b[:]) | 1
	rm.obs = newObserver(c.Node, rm.boot, &rm.cfg, c.Key, rm.logger, c.Events, c.Metrics)
	rm.act = newActor(c.DB, rm.self.DB, NewGroup(c.Resources, c.Events, c.Metrics), c.Events)
	rm.act.mon = newMonitorSet()
	rm.health = newResourceHealth()
	if dir := c.Cluster.StateDir; dir != "" {
		rm.health.store = &failureStore{dir: dir, node: c.Node}
		rm.health.warn = func(msg string) { c.Events.Warn(EventResource, msg) }
	}
	rm.tracks = newTracker(&rm.cfg, c.Events, c.Metrics.monitor)
	if e := c.Cluster.Arbiter.Etcd; e != nil {
		var err error
		if rm.arb, err = newArbiter(c.Node, *e, c.Logger, c.Events); err != nil {
			return nil, err
		}
	}
	rm.fence = &fencer{node: rm.self, act: rm.act, cfg: rm.cfg.Load, events: c.Events, metrics: c.Metrics}
	rm.state.role, rm.state.roleSince, rm.state.reason = RoleStandby, time.Now(), reasonStarting
	if rm.health.store != nil {
		if err := rm.restoreFailures(rm.act.group.Load(), time.Now()); err != nil {
			return nil, fmt.Errorf("cluster.state_dir: %w", err)
		}
	}
	rm.publish()
	c.Metrics.setRole(RoleStandby)
	return rm, nil
}

// publish makes the role state visible to the sender and to Status.
func (rm *RoleManager) publish() {
	s := rm.state.roleSnapshot
	rm.snap.Store(&s)
}

// Addr is the heartbeat address of this node.
func (rm *RoleManager) Addr() string { return rm.self.Address }

// Run binds the heartbeat socket and runs until ctx ends. On a normal
// shutdown it releases the resources right to left (the database is left
// as it is) and tells its peers it left, so that they take over at once.
// Every goroutine it starts ends before it returns.
func (rm *RoleManager) Run(ctx context.Context) error {
	conn := rm.conn.Swap(nil)
	if conn == nil {
		var err error
		if conn, err = rm.bind(); err != nil {
			return err
		}
	}
	for _, d := range rm.cfg.Load().Deprecations() {
		rm.events.Warn(EventSupervisor, "cluster."+d)
	}
	if len(rm.cfg.Load().Witness) == 0 && rm.arb == nil {
		rm.events.Warn(EventWitness, "no witness configured: a partitioned writer cannot tell isolation from a dead peer and will not fence itself; set cluster.witness")
	}
	rm.act.releaseLeftovers(ctx)

	var wg sync.WaitGroup
	// A reload before this Run installed its witnesses already; the
	// fresh set below reads the same configuration.
	select {
	case <-rm.obs.witnessesChanged:
	default:
	}
	rm.obs.installWitnesses()
	witnessCtx, stopWitnesses := context.WithCancel(ctx)
	wg.Go(func() { rm.obs.runWitnesses(witnessCtx) })
	trackCtx, stopTracks := context.WithCancel(ctx)
	wg.Go(func() { rm.tracks.run(trackCtx) })
	wg.Go(func() { rm.obs.receive(conn) })
	// The notifier and the sender outlive ctx: shutdown still changes the
	// role and says goodbye.
	notifyCtx, stopNotify := context.WithCancel(context.WithoutCancel(ctx))
	defer stopNotify()
	if rm.db != nil {
		wg.Go(func() { rm.notifyRoles(notifyCtx) })
	}
	// The startup wait counts from here: leftovers are released and we
	// listen, so peers heard from now on are heard in time.
	rm.obs.start(time.Now())
	rm.state.decided = false
	rm.state.leaving = false
	rm.publish()
	senderCtx, stopSender := context.WithCancel(context.WithoutCancel(ctx))
	wg.Go(func() { rm.sendLoop(senderCtx, conn) })
	// The arbiter outlives ctx too: a clean shutdown resigns only after
	// the resources are released, so that the peer cannot win first.
	arbCtx, stopArbiter := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stopArbiter(nil)
	if rm.arb != nil {
		wg.Go(func() { rm.arb.Run(arbCtx) })
	}

	rm.loop(ctx)
	rm.fence.stop()

	if !errors.Is(context.Cause(ctx), errCrash) {
		rm.shutdown(conn)
	}
	// After a crash nothing was released; the monitors still end with Run.
	rm.act.stopMonitors()
	stopArbiter(context.Cause(ctx))
	stopSender()
	stopNotify()
	stopWitnesses()
	stopTracks()
	conn.Close()
	wg.Wait()
	return nil
}

// Bind opens the heartbeat socket ahead of Run, so that a wrong address
// fails the daemon at startup instead of being retried.
func (rm *RoleManager) Bind() error {
	conn, err := rm.bind()
	if err != nil {
		return err
	}
	if old := rm.conn.Swap(conn); old != nil {
		old.Close()
	}
	return nil
}

func (rm *RoleManager) unbind() {
	if c := rm.conn.Swap(nil); c != nil {
		c.Close()
	}
}

func (rm *RoleManager) bind() (*net.UDPConn, error) {
	laddr, err := net.ResolveUDPAddr("udp", rm.self.Address)
	if err != nil {
		return nil, fmt.Errorf("cluster.nodes %s address %q: %w", rm.self.Name, rm.self.Address, err)
	}
	conn, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, fmt.Errorf("heartbeat listen on %s (cluster.nodes entry %s; must be an address of this host): %w", rm.self.Address, rm.self.Name, err)
	}
	if err := enableRecvErr(conn); err != nil {
		// Only a shortcut is lost: a crashed peer is then taken over
		// from after deadtime + takeover_margin, as after a power loss.
		rm.logger.Warn("heartbeat socket: cannot enable ICMP error reports; a crashed peer's daemon is not recognised as such", "err", err)
	}
	return conn, nil
}

// notifyRoles tells the supervisor, outside the role loop, whether this
// node is the writer: a slow SetActive must not delay a failover.
func (rm *RoleManager) notifyRoles(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case role := <-rm.roleCh:
			rm.db.SetActive(role == RoleWriter)
		}
	}
}

// loop decides every quarter keepalive, and at once when a peer announces
// a change, until ctx ends.
func (rm *RoleManager) loop(ctx context.Context) {
	tick := func() time.Duration { return max(rm.cfg.Load().Keepalive/4, 10*time.Millisecond) }
	every(ctx, tick, rm.obs.wake, func() { rm.evaluate(ctx) })
}

// every runs fn each period, and at once on poke, until ctx ends. The
// period is read again after each run, so a reloaded keepalive applies
// without a restart.
func every(ctx context.Context, period func() time.Duration, poke <-chan struct{}, fn func()) {
	p := period()
	t := time.NewTicker(p)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-poke:
		}
		fn()
		if n := period(); n != p {
			p = n
			t.Reset(n)
		}
	}
}

func (rm *RoleManager) shutdown(conn *net.UDPConn) {
	st := &rm.state
	if rm.act.holding() {
		st.draining = true
		rm.publish()
		rm.send(conn)
		rm.act.release(context.Background(), "shutdown", "shutdown")
	}
	if len(rm.act.unreleased()) > 0 {
		// Peers see the claim meanwhile: the sender still runs.
		rm.signalSend()
		if !rm.shutdownRelease(time.Now()) {
			// No goodbye: a peer would take over at once. It waits until
			// this node is gone instead (peerUnreleased), as for a crash.
			names, why := rm.unreleasedReason()
			rm.events.Warn(EventResource, fmt.Sprintf("SHUTDOWN WITH RELEASE INCOMPLETE: %s may still be up on this node (%s) after retrying for %s; no goodbye sent, so the peer takes over only once this node is gone; stop them by hand", strings.Join(names, ", "), why, shutdownReleaseBudget))
			st.draining = false
			if st.role == RoleWriter {
				rm.setRole(RoleStandby, "shutdown: release incomplete")
			}
			rm.publish()
			rm.send(conn)
			return
		}
		rm.events.Add(EventResource, "shutdown: release complete after retrying")
	}
	st.draining = false
	st.leaving = true
	if st.role == RoleWriter {
		rm.setRole(RoleStandby, "shutdown: resources released, database left as is")
	}
	rm.publish()
	// A few copies: one lost datagram must not cost the peer a deadtime.
	for range 3 {
		rm.send(conn)
		time.Sleep(5 * time.Millisecond)
	}
}

// view joins an observation with the role state for decide.
func (rm *RoleManager) view(obs observation, cfg *ClusterConfig) view {
	st := &rm.state
	if obs.dbFenced && st.dbFencedSince.IsZero() {
		st.dbFencedSince = obs.now
	} else if !obs.dbFenced {
		st.dbFencedSince = time.Time{}
	}
	return view{
		observation: obs, cfg: *cfg, self: rm.self.Name, preferred: rm.preferred,
		role: st.role, decided: st.decided, writerSince: st.writerSince, dbFencedSince: st.dbFencedSince,
		failHold:    obs.now.Before(st.failHoldUntil),
		wasIsolated: !st.isolatedAt.IsZero() && obs.lastHeard.Before(st.isolatedAt),
		selfFenced:  st.selfFenced,
		unreleased:  strings.Join(rm.act.unreleased(), ", "),
	}
}

// evaluate takes one decision and carries it out.
func (rm *RoleManager) evaluate(ctx context.Context) {
	st := &rm.state
	rm.act.swapPending()
	rm.recoverResources(ctx)
	rm.trackRelease(ctx, time.Now())
	now := time.Now()
	db := observeDB(rm.db, rm.self.DB)
	obs := rm.obs.observe(now)
	obs.dbFenced, obs.dbReason = db.fenced, db.reason
	obs.ineligible, obs.tracksPending = rm.eligibility(now)
	// Unchecked tracks are not announced: at startup the peer would elect
	// itself during the few milliseconds of our first check.
	if obs.ineligible != st.ineligible {
		st.ineligible = obs.ineligible
		rm.publish()
		rm.metrics.monitor.eligible.Set(b2f(st.ineligible == ""))
		rm.signalSend()
	}
	if rm.arb != nil {
		obs.arbiter = rm.arb.view(now)
		// Whatever this decision does, the arbiter campaigns (or resigns)
		// according to the role it leaves behind: a step-down releases
		// before it resigns. An ineligible node (failed resource, failing
		// track) and one whose tracks were not checked yet do not
		// campaign.
		pending := obs.tracksPending
		defer func() {
			rm.arb.setWant(campaignEligible(*rm.snap.Load(), pending, db, rm.db != nil && rm.self.DB != "", time.Now()))
		}()
	}
	cfg := rm.cfg.Load()
	rm.metrics.fenced.Set(b2f(st.role == RoleFenced || db.fenced))
	v := rm.view(obs, cfg)
	d := decide(v)
	rm.noteDoubleWriter(d.double, now)
	if d.decided && !st.decided {
		st.decided = true
		rm.publish()
		rm.events.Add(EventRole, fmt.Sprintf("startup wait over after %s: %s", time.Since(obs.startedAt).Round(time.Millisecond), peerSummary(obs.peers)))
	}
	if d.waiting != st.lastWaiting {
		st.lastWaiting = d.waiting
		if d.waiting != "" {
			rm.events.Warn(EventRole, d.waiting)
		}
	}
	if d.role == v.role && d.reason != "" && st.reason == reasonStarting {
		// A node that stays standby from the start never changes role;
		// say why instead of "starting" (no event: nothing changed). A
		// later reason, e.g. a failed resource start, is kept.
		st.reason = d.reason
		rm.publish()
	}
	if d.role == v.role {
		if d.unfence && now.Sub(st.lastUnfence) >= cfg.Deadtime {
			st.selfFenced = false
			st.lastUnfence = now
			rm.act.unfence(ctx, cfg.Deadtime)
		}
		return
	}
	switch {
	case d.role == RoleFenced:
		rm.selfFence(ctx, d.reason)
	case d.role == RoleWriter:
		rm.takeOver(ctx, d.reason)
	case v.role == RoleWriter:
		rm.stepDown(ctx, d.reason)
	default:
		rm.setRole(d.role, d.reason)
	}
}

func peerSummary(peers []peerView) string {
	var parts []string
	for _, p := range peers {
		switch {
		case p.alive:
			parts = append(parts, fmt.Sprintf("%s alive as %s", p.name, p.hb.Role))
		case p.heard:
			parts = append(parts, p.name+" silent")
		default:
			parts = append(parts, p.name+" not heard")
		}
	}
	return strings.Join(parts, ", ")
}

func (rm *RoleManager) setRole(role, reason string) {
	st := &rm.state
	old := st.role
	if old == role {
		return
	}
	if old == RoleFenced {
		rm.fence.stop()
	}
	st.role, st.reason, st.roleSince = role, reason, time.Now()
	if role == RoleWriter {
		st.writerSince = st.roleSince
	} else {
		st.writerSince = time.Time{}
	}
	rm.publish()
	rm.metrics.setRole(role)
	rm.metrics.roleChanges.Inc()
	rm.metrics.fenced.Set(b2f(role == RoleFenced))
	rm.signalSend()
	lvl := rm.events.Add
	if role == RoleFenced {
		lvl = rm.events.Warn
	}
	lvl(EventRole, fmt.Sprintf("role %s -> %s: %s", old, role, reason), "from", old, "to", role)
	if rm.db != nil {
		// Latest role wins; notifyRoles calls SetActive.
		select {
		case <-rm.roleCh:
		default:
		}
		rm.roleCh <- role
	}
}

func (rm *RoleManager) takeOver(ctx context.Context, reason string) {
	st := &rm.state
	rm.setRole(RoleWriter, reason)
	err := rm.act.acquire(ctx, "taking the writer role")
	if err == nil {
		st.failBackoff = 0
		rm.act.startMonitors(ctx)
		return
	}
	if ctx.Err() != nil {
		return // shutdown releases
	}
	st.failBackoff = failBackoff(st.failBackoff, rm.cfg.Load().Deadtime)
	st.failHoldUntil = time.Now().Add(st.failBackoff)
	released := "group released"
	if names, why := rm.unreleasedReason(); len(names) > 0 {
		// The role goes, the claim stays: the heartbeat lists what may
		// still be up and trackRelease retries its stop.
		released = "RELEASE INCOMPLETE (" + why + ")"
	}
	rm.setRole(RoleStandby, fmt.Sprintf("resource start failed (%v); %s; not eligible for %s", err, released, st.failBackoff))
}

func (rm *RoleManager) stepDown(ctx context.Context, reason string) {
	st := &rm.state
	st.draining = true
	rm.publish()
	rm.signalSend()
	rm.act.release(ctx, reason, "step down")
	st.draining = false
	rm.setRole(RoleStandby, reason)
	rm.act.swapPending()
}

// selfFence: role fenced first (heartbeats, /health and the agent check say
// so at once), then the database is made read-only while the resources
// are released right to left.
func (rm *RoleManager) selfFence(ctx context.Context, reason string) {
	st := &rm.state
	rm.setRole(RoleFenced, reason)
	st.isolatedAt = time.Now()
	err := rm.act.isolate(ctx, reason, rm.cfg.Load().Deadtime)
	st.selfFenced = err == nil && rm.db != nil && rm.self.DB != ""
	rm.fence.begin(ctx, reason, err)
	rm.act.swapPending()
}

func (rm *RoleManager) signalSend() {
	select {
	case rm.sendNow <- struct{}{}:
	default:
	}
}

// sendLoop sends a heartbeat every keepalive, and at once on a role
// change, until ctx ends.
func (rm *RoleManager) sendLoop(ctx context.Context, conn *net.UDPConn) {
	rm.send(conn)
	every(ctx, func() time.Duration { return rm.cfg.Load().Keepalive }, rm.sendNow, func() { rm.send(conn) })
}

// send tells every peer our current state.
func (rm *RoleManager) send(conn *net.UDPConn) {
	rm.obs.broadcast(conn, rm.heartbeat(time.Now()))
}

// heartbeat builds what this node announces: the published role state,
// our database as the supervisor sees it, the resources held and whether
// we see a witness.
func (rm *RoleManager) heartbeat(now time.Time) *Heartbeat {
	db := observeDB(rm.db, rm.self.DB)
	s := rm.snap.Load()
	hb := &Heartbeat{
		Node: rm.self.Name, Boot: rm.boot, Seq: rm.seq.Add(1), Time: now.UnixNano(),
		Role: s.role, Decided: s.decided, Draining: s.draining, Leaving: s.leaving,
		DB: rm.self.DB, DBFenced: db.fenced, DBReason: db.reason, AppliedTrx: db.applied, LagSeconds: db.lag,
		Resources:   rm.act.held(),
		Unreleased:  rm.act.unreleased(),
		Eligible:    eligible(*s, db.fenced, now),
		WitnessSeen: rm.obs.witnessSeen(now),
	}
	// The group is read after the snapshot: a heartbeat that says standby
	// also shows what the step-down could not stop (the group was marked
	// before the role changed).
	hb.Eligible = hb.Eligible && len(hb.Unreleased) == 0
	if !s.writerSince.IsZero() {
		hb.WriterSince = s.writerSince.UnixNano()
		hb.WriterForMs = max(now.Sub(s.writerSince).Milliseconds(), 1)
	}
	return hb
}

// RoleStatus is a copy of the role manager's state at one instant: what
// /health, /status and the agent check read. Plain values only, so the
// HTTP layer never touches the live state.
type RoleStatus struct {
	Node      string
	DB        string
	Role      string
	RoleSince time.Time
	Reason    string
	Decided   bool
	Draining  bool
	Leaving   bool
	// Our database as the replication supervisor sees it.
	DBFenced      bool
	DBReason      string
	DBUnreachable string
	Peers         []PeerStatus
	Witnesses     []WitnessStatus
	Resources     []ResourceStatus
	// Monitoring: why this node may not take the writer role ("" =
	// eligible), what the role loop is recovering now, the failures that
	// keep it ineligible and the track checks.
	Ineligible       string
	Recovering       string
	ResourceFailures []ResourceFailure
	Tracks           []TrackStatus
	// SelfFence is set while this node is fenced.
	SelfFence *SelfFenceStatus
	// Release is set while a release is incomplete (a stop failed).
	Release *ReleaseStatus
	// Arbiter is set when one is configured.
	Arbiter *ArbiterStatus
	// DoubleWriter is the last double writer detected since the daemon
	// started (nil: none).
	DoubleWriter *DoubleWriterStatus
}

// Status returns the current RoleStatus.
func (rm *RoleManager) Status() RoleStatus {
	now := time.Now()
	s := rm.snap.Load()
	db := observeDB(rm.db, rm.self.DB)
	return RoleStatus{
		Node: rm.self.Name, DB: rm.self.DB,
		Role: s.role, RoleSince: s.roleSince, Reason: s.reason,
		Decided: s.decided, Draining: s.draining, Leaving: s.leaving,
		DBFenced: db.fenced, DBReason: db.reason, DBUnreachable: db.unreachable,
		Peers:      rm.obs.peerStatus(),
		Witnesses:  rm.obs.witnessStatus(now),
		Resources:  rm.monitoredStatus(now),
		Ineligible: s.ineligible, Recovering: rm.health.recoveringNow(),
		ResourceFailures: rm.health.failures(), Tracks: rm.tracks.status(),
		SelfFence:    rm.fence.status(),
		Release:      s.release,
		Arbiter:      rm.arbiterStatus(now),
		DoubleWriter: rm.double.Load(),
	}
}

func (rm *RoleManager) arbiterStatus(now time.Time) *ArbiterStatus {
	if rm.arb == nil {
		return nil
	}
	return rm.arb.status(now)
}

// Reload applies a new cluster section. Timing, witnesses, failback and
// the key apply at once; a changed resource list applies when the current
// one is not held; node membership and addresses need a restart.
func (rm *RoleManager) Reload(c *ClusterConfig, key *Key, resources []Resource) []string {
	var notes []string
	cur := rm.cfg.Load()
	if !reflect.DeepEqual(c.Nodes, cur.Nodes) {
		notes = append(notes, "cluster.nodes changed: restart required (heartbeat sockets and peers are fixed at start); keeping the running list")
	}
	witnessChanged := !slices.Equal(c.Witness, cur.Witness) || c.Keepalive != cur.Keepalive || c.Deadtime != cur.Deadtime
	resourcesChanged := !reflect.DeepEqual(c.Resources, cur.Resources)
	tracksChanged := !reflect.DeepEqual(c.Track, cur.Track)
	if !reflect.DeepEqual(c.Arbiter, cur.Arbiter) {
		notes = append(notes, "cluster.arbiter changed: restart required; keeping the running arbiter")
	}
	if c.AgentCheck != cur.AgentCheck {
		notes = append(notes, "cluster.agent_check changed: restart required")
	}
	for _, ch := range []struct {
		key      string
		old, new any
	}{
		{"keepalive", cur.Keepalive, c.Keepalive}, {"deadtime", cur.Deadtime, c.Deadtime},
		{"takeover_margin", cur.TakeoverMargin, c.TakeoverMargin}, {"takeover_wait", cur.TakeoverWait, c.TakeoverWait},
		{"auto_failback", cur.AutoFailback, c.AutoFailback},
		{"failback_hold", cur.FailbackHold, c.FailbackHold},
	} {
		if ch.old != ch.new {
			notes = append(notes, fmt.Sprintf("cluster.%s %v -> %v applied", ch.key, ch.old, ch.new))
		}
	}
	next := *c
	next.Nodes = cur.Nodes
	rm.cfg.Store(&next)
	if key != nil && rm.obs.swapKey(key) {
		notes = append(notes, "cluster.key_file: new key "+key.Fingerprint()+" in use (the peer must be reloaded with the same key)")
	}
	if witnessChanged {
		rm.obs.reloadWitnesses()
		notes = append(notes, fmt.Sprintf("witnesses restarted: %v", c.Witness))
	}
	if tracksChanged {
		rm.tracks.reload()
		notes = append(notes, fmt.Sprintf("cluster.track: %d checks applied (unchanged ones keep their state)", len(c.Track)))
	}
	if resourcesChanged {
		if rm.act.replace(NewGroup(resources, rm.events, rm.metrics)) {
			notes = append(notes, "cluster.resources changed while this node holds them: the new list applies after the current one is released")
		} else {
			notes = append(notes, "cluster.resources: new list applied")
		}
	}
	return notes
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
