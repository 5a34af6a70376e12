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
	"strconv"
	"strings"
	"sync"
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

// RoleManager runs the heartbeat protocol and decides this node's role.
type RoleManager struct {
	self    NodeConfig
	logger  *slog.Logger
	events  *EventLog
	metrics *Metrics
	db      Database // nil: no replication supervisor

	roleCh  chan string   // role changes for db.SetActive
	wake    chan struct{} // heartbeat received: decide now
	sendNow chan struct{} // role changed: tell peers now

	mu            sync.Mutex
	conn          *net.UDPConn // bound by Bind, taken by Run
	cfg           ClusterConfig
	key           *Key
	peers         map[string]*peerState
	witnesses     []*Witness
	stopWitnesses func()
	group         *Group
	pendingGroup  *Group
	role          string
	roleSince     time.Time
	reason        string
	writerSince   time.Time
	draining      bool
	leaving       bool
	decided       bool
	startedAt     time.Time
	failHoldUntil time.Time
	wasIsolated   bool // self-fenced, no peer heard since
	failBackoff   time.Duration
	dbFencedSince time.Time
	lastWaiting   string
	selfFenced    bool // our database is fenced by our own self-fence
	witnessState  string
	boot          uint64
	seq           uint64
	rejectLog     map[string]time.Time
}

type peerState struct {
	cfg        NodeConfig
	addr       *net.UDPAddr
	guard      replayGuard
	heard      bool
	lastValid  time.Time
	aliveSince time.Time
	alive      bool
	hb         *Heartbeat
	from       string
	authFailAt time.Time
	rejected   map[string]int
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
		logger:    c.Logger.With("component", "role"),
		events:    c.Events,
		metrics:   c.Metrics,
		db:        c.DB,
		wake:      make(chan struct{}, 1),
		roleCh:    make(chan string, 1),
		sendNow:   make(chan struct{}, 1),
		cfg:       *c.Cluster,
		key:       c.Key,
		peers:     map[string]*peerState{},
		role:      RoleStandby,
		roleSince: time.Now(),
		reason:    reasonStarting,
		rejectLog: map[string]time.Time{},
	}
	found := false
	for _, n := range c.Cluster.Nodes {
		if n.Name == c.Node {
			rm.self, found = n, true
			continue
		}
		rm.peers[n.Name] = &peerState{cfg: n, rejected: map[string]int{}}
	}
	if !found {
		var names []string
		for _, n := range c.Cluster.Nodes {
			names = append(names, n.Name)
		}
		return nil, fmt.Errorf("node %q is not listed in cluster.nodes (%s)", c.Node, strings.Join(names, ", "))
	}
	rm.group = NewGroup(c.Resources, c.Events, c.Metrics)
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	rm.boot = binary.BigEndian.Uint64(b[:]) | 1
	c.Metrics.setRole(RoleStandby)
	return rm, nil
}

// Run binds the heartbeat socket and runs until ctx ends. On a normal
// shutdown it releases the resources right to left (the database is left
// as it is) and tells its peers it left, so that they take over at once.
func (rm *RoleManager) Run(ctx context.Context) error {
	rm.mu.Lock()
	conn := rm.conn
	rm.conn = nil
	rm.mu.Unlock()
	if conn == nil {
		var err error
		if conn, err = rm.bind(); err != nil {
			return err
		}
	}
	if len(rm.cfg.Witness) == 0 {
		rm.events.Warn(EventWitness, "no witness configured: a partitioned writer cannot tell isolation from a dead peer and will not fence itself; set cluster.witness")
	}
	if err := rm.group.ReleaseLeftovers(ctx); err != nil {
		rm.events.Warn(EventResource, fmt.Sprintf("startup cleanup: %v", err))
	}

	var wg sync.WaitGroup
	witnessCtx, stopWitnesses := context.WithCancel(ctx)
	rm.startWitnesses(witnessCtx, &wg)
	wg.Go(func() { rm.receive(conn) })
	notifyCtx, stopNotify := context.WithCancel(context.WithoutCancel(ctx))
	defer stopNotify()
	if rm.db != nil {
		wg.Go(func() { rm.notifyRoles(notifyCtx) })
	}
	// The startup wait counts from here: leftovers are released and we
	// listen, so peers heard from now on are heard in time.
	rm.mu.Lock()
	rm.startedAt = time.Now()
	rm.decided = false
	rm.leaving = false
	rm.mu.Unlock()
	senderCtx, stopSender := context.WithCancel(context.WithoutCancel(ctx))
	wg.Go(func() { rm.sendLoop(senderCtx, conn) })

	rm.decideLoop(ctx)

	if !errors.Is(context.Cause(ctx), errCrash) {
		rm.shutdown(conn)
	}
	stopSender()
	stopNotify()
	stopWitnesses()
	rm.mu.Lock()
	if rm.stopWitnesses != nil {
		rm.stopWitnesses()
	}
	rm.mu.Unlock()
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
	rm.mu.Lock()
	rm.conn = conn
	rm.mu.Unlock()
	return nil
}

func (rm *RoleManager) unbind() {
	rm.mu.Lock()
	defer rm.mu.Unlock()
	if rm.conn != nil {
		rm.conn.Close()
		rm.conn = nil
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
	return conn, nil
}

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

func (rm *RoleManager) decideLoop(ctx context.Context) {
	rm.mu.Lock()
	tick := max(rm.cfg.Keepalive/4, 10*time.Millisecond)
	rm.mu.Unlock()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-rm.wake:
		}
		rm.evaluate(ctx)
		rm.mu.Lock()
		if n := max(rm.cfg.Keepalive/4, 10*time.Millisecond); n != tick {
			tick = n
			t.Reset(n)
		}
		rm.mu.Unlock()
	}
}

func (rm *RoleManager) shutdown(conn *net.UDPConn) {
	ctx := context.Background()
	if rm.group.Holding() {
		rm.mu.Lock()
		rm.draining = true
		rm.mu.Unlock()
		rm.send(conn)
		if err := rm.group.Release(ctx, "shutdown"); err != nil {
			rm.events.Warn(EventResource, fmt.Sprintf("shutdown: release incomplete: %v", err))
		}
	}
	rm.mu.Lock()
	rm.draining = false
	rm.leaving = true
	if rm.role == RoleWriter {
		rm.setRoleLocked(RoleStandby, "shutdown: resources released, database left as is")
	}
	rm.mu.Unlock()
	// A few copies: one lost datagram must not cost the peer a deadtime.
	for range 3 {
		rm.send(conn)
		time.Sleep(5 * time.Millisecond)
	}
}

// evaluate takes one decision and carries it out.
func (rm *RoleManager) evaluate(ctx context.Context) {
	v := rm.snapshot(time.Now())
	d := decide(v)
	rm.mu.Lock()
	if d.decided && !rm.decided {
		rm.decided = true
		rm.mu.Unlock()
		rm.events.Add(EventRole, fmt.Sprintf("startup wait over after %s: %s", time.Since(v.startedAt).Round(time.Millisecond), peerSummary(v.peers)))
		rm.mu.Lock()
	}
	if d.waiting != rm.lastWaiting {
		rm.lastWaiting = d.waiting
		if d.waiting != "" {
			rm.mu.Unlock()
			rm.events.Warn(EventRole, d.waiting)
			rm.mu.Lock()
		}
	}
	if d.role == v.role && d.reason != "" && d.role == rm.role && rm.reason == reasonStarting {
		// A node that stays standby from the start never changes role;
		// say why instead of "starting" (no event: nothing changed). A
		// later reason, e.g. a failed resource start, is kept.
		rm.reason = d.reason
	}
	rm.mu.Unlock()
	if d.role == v.role {
		if v.role != RoleFenced && (v.selfFenced || v.dbFenced && strings.HasPrefix(v.dbReason, selfFencePrefix)) {
			// Our own fence (maybe from before a restart): lift it only
			// once a peer is back for a moment; the witness alone is not
			// enough, the peer's database may be the writable one.
			for _, p := range v.peers {
				if p.alive && p.aliveFor >= 2*v.cfg.Keepalive {
					rm.mu.Lock()
					rm.selfFenced = true
					rm.mu.Unlock()
					rm.liftSelfFence(ctx)
					break
				}
			}
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

func (rm *RoleManager) liftSelfFence(ctx context.Context) {
	db := rm.self.DB
	if rm.db == nil || db == "" {
		return
	}
	rm.mu.Lock()
	fenced := rm.selfFenced
	rm.selfFenced = false
	timeout := rm.cfg.Deadtime
	rm.mu.Unlock()
	if !fenced {
		return
	}
	uctx, cancel := context.WithTimeout(ctx, max(timeout, time.Second))
	defer cancel()
	if err := rm.db.Unfence(uctx, db); err != nil {
		rm.events.Warn(EventFence, fmt.Sprintf("could not lift our self-fence of database %s: %v", db, err), "db", db)
		return
	}
	rm.events.Add(EventFence, fmt.Sprintf("lifted our self-fence of database %s; the replication supervisor fences it again while it is behind", db), "db", db)
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
	rm.mu.Lock()
	rm.setRoleLocked(role, reason)
	rm.mu.Unlock()
}

func (rm *RoleManager) setRoleLocked(role, reason string) {
	old := rm.role
	if old == role {
		return
	}
	rm.role, rm.reason, rm.roleSince = role, reason, time.Now()
	if role == RoleWriter {
		rm.writerSince = rm.roleSince
	} else {
		rm.writerSince = time.Time{}
	}
	rm.metrics.setRole(role)
	rm.metrics.roleChanges.Inc()
	rm.metrics.fenced.Set(b2f(role == RoleFenced))
	select {
	case rm.sendNow <- struct{}{}:
	default:
	}
	// Logging under the lock is fine: the event log never calls back.
	lvl := rm.events.Add
	if role == RoleFenced {
		lvl = rm.events.Warn
	}
	lvl(EventRole, fmt.Sprintf("role %s -> %s: %s", old, role, reason), "from", old, "to", role)
	if rm.db != nil {
		// Latest role wins; notifyRoles calls SetActive outside our lock.
		select {
		case <-rm.roleCh:
		default:
		}
		rm.roleCh <- role
	}
}

func (rm *RoleManager) takeOver(ctx context.Context, reason string) {
	rm.mu.Lock()
	rm.setRoleLocked(RoleWriter, reason)
	rm.mu.Unlock()
	err := rm.group.Acquire(ctx, "taking the writer role")
	if err == nil {
		rm.mu.Lock()
		rm.failBackoff = 0
		rm.mu.Unlock()
		return
	}
	if ctx.Err() != nil {
		return // shutdown releases
	}
	rm.mu.Lock()
	rm.failBackoff = min(max(2*rm.failBackoff, 2*rm.cfg.Deadtime), time.Minute)
	rm.failHoldUntil = time.Now().Add(rm.failBackoff)
	rm.setRoleLocked(RoleStandby, fmt.Sprintf("resource start failed (%v); group released; not eligible for %s", err, rm.failBackoff))
	rm.mu.Unlock()
}

func (rm *RoleManager) stepDown(ctx context.Context, reason string) {
	rm.mu.Lock()
	rm.draining = true
	rm.mu.Unlock()
	rm.signalSend()
	if err := rm.group.Release(context.WithoutCancel(ctx), reason); err != nil {
		rm.events.Warn(EventResource, fmt.Sprintf("step down: release incomplete: %v", err))
	}
	rm.mu.Lock()
	rm.draining = false
	rm.setRoleLocked(RoleStandby, reason)
	rm.swapPendingGroupLocked()
	rm.mu.Unlock()
}

// selfFence: role fenced first (heartbeats, /health and the agent check say
// so at once), then the database is made read-only while the resources
// are released right to left.
func (rm *RoleManager) selfFence(ctx context.Context, reason string) {
	rm.mu.Lock()
	db := rm.self.DB
	timeout := rm.cfg.Deadtime
	rm.setRoleLocked(RoleFenced, reason)
	rm.wasIsolated = true
	rm.mu.Unlock()
	var wg sync.WaitGroup
	if rm.db != nil && db != "" {
		wg.Go(func() {
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
			defer cancel()
			if err := rm.db.Fence(fctx, db, selfFencePrefix+reason); err != nil {
				rm.events.Warn(EventFence, fmt.Sprintf("could not fence database %s: %v", db, err), "db", db)
				return
			}
			rm.mu.Lock()
			rm.selfFenced = true
			rm.mu.Unlock()
			rm.events.Warn(EventFence, fmt.Sprintf("database %s fenced (read-only): %s", db, reason), "db", db)
		})
	}
	if rm.group.Holding() {
		if err := rm.group.Release(context.WithoutCancel(ctx), "self-fence"); err != nil {
			rm.events.Warn(EventResource, fmt.Sprintf("self-fence: release incomplete: %v", err))
		}
	}
	wg.Wait()
	rm.mu.Lock()
	rm.swapPendingGroupLocked()
	rm.mu.Unlock()
}

func (rm *RoleManager) swapPendingGroupLocked() {
	if rm.pendingGroup != nil && !rm.group.Holding() {
		rm.group, rm.pendingGroup = rm.pendingGroup, nil
		rm.events.Add(EventReload, "new resource list applied now that the old one is released")
	}
}

func (rm *RoleManager) signalSend() {
	select {
	case rm.sendNow <- struct{}{}:
	default:
	}
}

// dbState reads our own database's state from the replication supervisor.
func (rm *RoleManager) dbState() (fenced bool, reason string, applied int64, lag *float64) {
	if rm.db == nil || rm.self.DB == "" {
		return false, "", 0, nil
	}
	st := rm.db.Status()
	for _, n := range st.Nodes {
		if n.Name == rm.self.DB {
			return n.Fenced, n.FenceReason, appliedTrx(n.GTIDCurrentPos), n.LagSeconds
		}
	}
	return false, "", 0, nil
}

// appliedTrx sums the sequence numbers of a MariaDB GTID position
// ("0-1-100,1-2-50"): a monotonic hint of how much a node has applied.
func appliedTrx(pos string) int64 {
	var total int64
	for g := range strings.SplitSeq(pos, ",") {
		i := strings.LastIndexByte(g, '-')
		if i < 0 {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(g[i+1:]), 10, 64); err == nil {
			total += n
		}
	}
	return total
}

// snapshot captures the decision inputs and updates peer liveness.
func (rm *RoleManager) snapshot(now time.Time) view {
	dbFenced, dbReason, _, _ := rm.dbState()
	rm.mu.Lock()
	defer rm.mu.Unlock()
	cfg := rm.cfg
	rm.metrics.fenced.Set(b2f(rm.role == RoleFenced || dbFenced))
	if dbFenced && rm.dbFencedSince.IsZero() {
		rm.dbFencedSince = now
	} else if !dbFenced {
		rm.dbFencedSince = time.Time{}
	}
	v := view{
		now: now, cfg: cfg, self: rm.self.Name, role: rm.role, decided: rm.decided, startedAt: rm.startedAt,
		writerSince: rm.writerSince, dbFenced: dbFenced, dbReason: dbReason, dbFencedSince: rm.dbFencedSince,
		failHold:          now.Before(rm.failHoldUntil),
		wasIsolated:       rm.wasIsolated,
		selfFenced:        rm.selfFenced,
		witnessConfigured: len(rm.witnesses) > 0,
	}
	names := []string{rm.self.Name}
	for _, name := range rm.peerNames() {
		p := rm.peers[name]
		names = append(names, name)
		silent := now.Sub(p.lastValid)
		if !p.heard {
			silent = now.Sub(rm.startedAt)
		}
		if p.alive && silent >= cfg.Deadtime {
			p.alive = false
			rm.metrics.peerAlive.WithLabelValues(name).Set(0)
			rm.metrics.heartbeatLosses.WithLabelValues(name).Inc()
			rm.events.Warn(EventPeer, fmt.Sprintf("peer %s dead: no valid heartbeat for %s (deadtime %s)", name, silent.Round(time.Millisecond), cfg.Deadtime), "peer", name)
		}
		pv := peerView{name: name, heard: p.heard, silent: silent, alive: p.alive, hb: p.hb,
			authFail: !p.authFailAt.IsZero() && now.Sub(p.authFailAt) < cfg.Deadtime}
		if p.alive {
			pv.aliveFor = now.Sub(p.aliveSince)
		}
		v.peers = append(v.peers, pv)
	}
	slices.Sort(names)
	v.preferred = names[0]
	var seen, all []string
	for _, w := range rm.witnesses {
		all = append(all, w.URL)
		if w.seen(now, cfg.Deadtime) {
			seen = append(seen, w.URL)
		}
	}
	v.witnessSeen = len(seen) > 0
	if v.witnessSeen {
		v.witnessNames = strings.Join(seen, ", ")
	} else {
		v.witnessNames = strings.Join(all, ", ") + " unreachable"
	}
	// Witness transitions are events: they explain later decisions.
	if len(all) > 0 && now.Sub(rm.startedAt) >= cfg.Deadtime {
		state := "up"
		if !v.witnessSeen {
			state = "down"
		}
		if state != rm.witnessState {
			if rm.witnessState != "" || state == "down" {
				msg := "witness reachable: " + v.witnessNames
				if state == "down" {
					msg = "every witness unreachable for " + cfg.Deadtime.String() + ": " + rm.witnessErrorsLocked()
				}
				rm.events.Warn(EventWitness, msg)
			}
			rm.witnessState = state
		}
		for _, w := range rm.witnesses {
			rm.metrics.witnessUp.WithLabelValues(w.URL).Set(b2f(w.seen(now, cfg.Deadtime)))
		}
	}
	return v
}

func (rm *RoleManager) witnessErrorsLocked() string {
	var parts []string
	for _, w := range rm.witnesses {
		st := w.status(time.Now(), rm.cfg.Deadtime)
		e := st.LastError
		if e == "" {
			e = "no successful probe"
		}
		parts = append(parts, w.URL+": "+e)
	}
	return strings.Join(parts, "; ")
}

func (rm *RoleManager) peerNames() []string {
	names := make([]string, 0, len(rm.peers))
	for n := range rm.peers {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func (rm *RoleManager) startWitnesses(ctx context.Context, wg *sync.WaitGroup) {
	rm.mu.Lock()
	defer rm.mu.Unlock()
	rm.startWitnessesLocked(ctx, wg)
}

// startWitnessesLocked (re)creates the probers from cfg.Witness; the
// previous set is stopped. Probes run every keepalive, each bounded by
// half the deadtime, so an unreachable witness is known before deadtime.
func (rm *RoleManager) startWitnessesLocked(ctx context.Context, wg *sync.WaitGroup) {
	if rm.stopWitnesses != nil {
		rm.stopWitnesses()
	}
	rm.witnesses = nil
	wctx, cancel := context.WithCancel(ctx)
	rm.stopWitnesses = cancel
	interval, timeout := rm.cfg.Keepalive, max(rm.cfg.Deadtime/2, 50*time.Millisecond)
	for _, raw := range rm.cfg.Witness {
		w, err := NewWitness(raw)
		if err != nil {
			rm.events.Warn(EventWitness, err.Error())
			continue
		}
		rm.witnesses = append(rm.witnesses, w)
		wg.Go(func() { w.run(wctx, interval, timeout) })
	}
}

// receive reads datagrams until the socket is closed.
func (rm *RoleManager) receive(conn *net.UDPConn) {
	buf := make([]byte, maxHeartbeatLen)
	for {
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			rm.logger.Warn("heartbeat receive", "err", err)
			continue
		}
		rm.handle(buf[:n], from, time.Now())
	}
}

func (rm *RoleManager) handle(pkt []byte, from *net.UDPAddr, now time.Time) {
	rm.mu.Lock()
	key, skew := rm.key, rm.cfg.MaxClockSkew
	rm.mu.Unlock()
	hb, err := decodeHeartbeat(key, pkt)
	if err != nil {
		rm.reject(from, nil, err)
		return
	}
	rm.mu.Lock()
	p := rm.peers[hb.Node]
	switch {
	case hb.Node == rm.self.Name:
		rm.mu.Unlock()
		rm.reject(from, nil, rejectf(rejectUnknown, "heartbeat claims to come from this node %q: reflected datagram or duplicate node name", hb.Node))
		return
	case p == nil:
		rm.mu.Unlock()
		rm.reject(from, nil, rejectf(rejectUnknown, "heartbeat from node %q, which is not in cluster.nodes", hb.Node))
		return
	}
	if err := p.guard.check(hb, now, skew); err != nil {
		rm.mu.Unlock()
		rm.reject(from, p, err)
		return
	}
	restarted := p.guard.accept(hb)
	p.heard = true
	p.lastValid = now
	rm.wasIsolated = false
	p.from = from.String()
	old := p.hb
	p.hb = hb
	becameAlive := !p.alive
	if becameAlive {
		p.alive, p.aliveSince = true, now
		rm.metrics.peerAlive.WithLabelValues(hb.Node).Set(1)
	}
	if restarted || hb.Leaving {
		// A restart within deadtime never looked dead; it is "back" (for
		// failback_hold and the fenced-exit hysteresis) only from now.
		p.aliveSince = now
	}
	rm.mu.Unlock()
	rm.metrics.heartbeatsRecv.WithLabelValues(hb.Node).Inc()
	switch {
	case becameAlive:
		rm.events.Add(EventPeer, fmt.Sprintf("peer %s alive (role %s, database fenced %t) from %s", hb.Node, hb.Role, hb.DBFenced, from), "peer", hb.Node)
	case restarted:
		rm.events.Add(EventPeer, fmt.Sprintf("peer %s restarted its daemon (new boot id)", hb.Node), "peer", hb.Node)
	}
	if old == nil || old.Role != hb.Role || old.Leaving != hb.Leaving || old.DBFenced != hb.DBFenced || old.Eligible != hb.Eligible || old.Draining != hb.Draining {
		select {
		case rm.wake <- struct{}{}:
		default:
		}
	}
}

// reject counts a dropped datagram and reports it, at most every 10s per
// source and reason so a flood cannot flood the log.
func (rm *RoleManager) reject(from *net.UDPAddr, p *peerState, err error) {
	reason := rejectReason(err)
	rm.metrics.heartbeatRejected.WithLabelValues(reason).Inc()
	now := time.Now()
	rm.mu.Lock()
	if p != nil {
		p.rejected[reason]++
	}
	if reason == rejectAuth {
		// Remember which peer's address sends unauthenticated datagrams:
		// that peer is probably alive with a different key.
		for _, q := range rm.peers {
			if q.addr != nil && q.addr.IP.Equal(from.IP) && q.addr.Port == from.Port {
				q.authFailAt = now
				q.rejected[reason]++
			}
		}
	}
	k := from.String() + "|" + reason
	last, seen := rm.rejectLog[k]
	if seen && now.Sub(last) < 10*time.Second {
		rm.mu.Unlock()
		return
	}
	if len(rm.rejectLog) > 1024 {
		clear(rm.rejectLog)
	}
	rm.rejectLog[k] = now
	rm.mu.Unlock()
	rm.events.Warn(EventHeartbeat, fmt.Sprintf("heartbeat from %s %s", from, err), "reason", reason)
}

func (rm *RoleManager) sendLoop(ctx context.Context, conn *net.UDPConn) {
	rm.mu.Lock()
	keepalive := rm.cfg.Keepalive
	rm.mu.Unlock()
	t := time.NewTicker(keepalive)
	defer t.Stop()
	for {
		rm.send(conn)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-rm.sendNow:
		}
		rm.mu.Lock()
		if k := rm.cfg.Keepalive; k != keepalive {
			keepalive = k
			t.Reset(k)
		}
		rm.mu.Unlock()
	}
}

// send builds one heartbeat and sends it to every peer.
func (rm *RoleManager) send(conn *net.UDPConn) {
	dbFenced, dbReason, applied, lag := rm.dbState()
	now := time.Now()
	rm.mu.Lock()
	rm.seq++
	hb := &Heartbeat{
		Node: rm.self.Name, Boot: rm.boot, Seq: rm.seq, Time: now.UnixNano(),
		Role: rm.role, Decided: rm.decided, Draining: rm.draining, Leaving: rm.leaving,
		DB: rm.self.DB, DBFenced: dbFenced, DBReason: dbReason, AppliedTrx: applied, LagSeconds: lag,
		Resources: rm.group.Held(),
	}
	hb.Eligible = rm.role == RoleStandby && !rm.draining && !rm.leaving && !dbFenced && !now.Before(rm.failHoldUntil)
	if !rm.writerSince.IsZero() {
		hb.WriterSince = rm.writerSince.UnixNano()
	}
	for _, w := range rm.witnesses {
		if w.seen(now, rm.cfg.Deadtime) {
			hb.WitnessSeen = true
		}
	}
	key := rm.key
	type dest struct {
		p    *peerState
		name string
	}
	var dests []dest
	for _, name := range rm.peerNames() {
		dests = append(dests, dest{rm.peers[name], name})
	}
	rm.mu.Unlock()
	pkt, err := encodeHeartbeat(key, hb)
	if err != nil {
		rm.logger.Error("encode heartbeat", "err", err)
		return
	}
	for _, d := range dests {
		rm.mu.Lock()
		addr := d.p.addr
		rm.mu.Unlock()
		if addr == nil {
			a, err := net.ResolveUDPAddr("udp", d.p.cfg.Address)
			if err != nil {
				rm.logger.Warn("cannot resolve peer address", "peer", d.name, "address", d.p.cfg.Address, "err", err)
				continue
			}
			rm.mu.Lock()
			d.p.addr, addr = a, a
			rm.mu.Unlock()
		}
		if _, err := conn.WriteToUDP(pkt, addr); err != nil {
			if !errors.Is(err, net.ErrClosed) {
				rm.logger.Debug("heartbeat send", "peer", d.name, "err", err)
			}
			continue
		}
		rm.metrics.heartbeatsSent.Inc()
	}
}

// Reload applies a new cluster section. Timing, witnesses, failback and
// the key apply at once; a changed resource list applies when the current
// one is not held; node membership and addresses need a restart.
func (rm *RoleManager) Reload(ctx context.Context, wg *sync.WaitGroup, c *ClusterConfig, key *Key, resources []Resource) []string {
	var notes []string
	rm.mu.Lock()
	defer rm.mu.Unlock()
	if !reflect.DeepEqual(c.Nodes, rm.cfg.Nodes) {
		notes = append(notes, "cluster.nodes changed: restart required (heartbeat sockets and peers are fixed at start); keeping the running list")
	}
	nodes := rm.cfg.Nodes
	witnessChanged := !slices.Equal(c.Witness, rm.cfg.Witness) || c.Keepalive != rm.cfg.Keepalive || c.Deadtime != rm.cfg.Deadtime
	resourcesChanged := !reflect.DeepEqual(c.Resources, rm.cfg.Resources)
	if c.AgentCheck != rm.cfg.AgentCheck {
		notes = append(notes, "cluster.agent_check changed: restart required")
	}
	for _, ch := range []struct {
		key      string
		old, new any
	}{
		{"keepalive", rm.cfg.Keepalive, c.Keepalive}, {"deadtime", rm.cfg.Deadtime, c.Deadtime},
		{"takeover_margin", rm.cfg.TakeoverMargin, c.TakeoverMargin}, {"takeover_wait", rm.cfg.TakeoverWait, c.TakeoverWait},
		{"max_clock_skew", rm.cfg.MaxClockSkew, c.MaxClockSkew}, {"auto_failback", rm.cfg.AutoFailback, c.AutoFailback},
		{"failback_hold", rm.cfg.FailbackHold, c.FailbackHold},
	} {
		if ch.old != ch.new {
			notes = append(notes, fmt.Sprintf("cluster.%s %v -> %v applied", ch.key, ch.old, ch.new))
		}
	}
	rm.cfg = *c
	rm.cfg.Nodes = nodes
	if key != nil && key.Fingerprint() != rm.key.Fingerprint() {
		rm.key = key
		notes = append(notes, "cluster.key_file: new key "+key.Fingerprint()+" in use (the peer must be reloaded with the same key)")
	}
	if witnessChanged && ctx != nil {
		rm.startWitnessesLocked(ctx, wg)
		notes = append(notes, fmt.Sprintf("witnesses restarted: %v", c.Witness))
	}
	if resourcesChanged {
		g := NewGroup(resources, rm.events, rm.metrics)
		if rm.group.Holding() {
			rm.pendingGroup = g
			notes = append(notes, "cluster.resources changed while this node holds them: the new list applies after the current one is released")
		} else {
			rm.group = g
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
