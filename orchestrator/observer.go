package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// observer owns what this node learns from outside: its heartbeat peers
// (authenticated, replay-checked, alive or dead) and its witness probers.
// It hands the role loop a copy of it as an observation; the role loop
// tells it nothing back, so its lock never nests with anything.
type observer struct {
	self    string
	boot    uint64                         // our boot nonce, which peers must echo
	cfg     *atomic.Pointer[ClusterConfig] // the role manager's; swapped by Reload
	logger  *slog.Logger
	events  *EventLog
	metrics *Metrics
	// wake: a peer announced a change that matters to a decision.
	wake chan struct{}
	// witnessesChanged: Reload installed a new witness list; the prober
	// goroutine restarts on it.
	witnessesChanged chan struct{}

	mu           sync.Mutex
	key          *Key
	peers        map[string]*peerState
	witnesses    []*Witness
	startedAt    time.Time
	lastHeard    time.Time
	witnessState string
	rejectLog    map[string]*rejectNote
}

// rejectNote rate-limits the event of one kind of rejection.
type rejectNote struct {
	last       time.Time
	suppressed int
}

// maxRejectSources bounds the per-source rate limit: beyond it, sources
// (which a forger can vary freely) share one limit per reason.
const maxRejectSources = 256

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
	echo       echoSet // its boot nonces we echo back
	// rejected counts its authenticated datagrams that were dropped
	// (replayed or stale). Unauthenticated ones are counted only in the
	// metric: their claimed sender proves nothing.
	rejected map[string]int
	// closedAt: when its host last refused our heartbeat (ICMP port
	// unreachable, portclosed.go); after lastValid, its daemon is down.
	closedAt time.Time
}

func newObserver(self string, boot uint64, cfg *atomic.Pointer[ClusterConfig], key *Key, logger *slog.Logger, events *EventLog, metrics *Metrics) *observer {
	o := &observer{
		self: self, boot: boot, cfg: cfg, logger: logger, events: events, metrics: metrics,
		wake:             make(chan struct{}, 1),
		witnessesChanged: make(chan struct{}, 1),
		key:              key,
		peers:            map[string]*peerState{},
		rejectLog:        map[string]*rejectNote{},
	}
	for _, n := range cfg.Load().Nodes {
		if n.Name != self {
			o.peers[n.Name] = &peerState{cfg: n, rejected: map[string]int{}}
		}
	}
	return o
}

// start marks the instant we listen: the startup wait and the silence of
// peers not heard yet count from here.
func (o *observer) start(now time.Time) {
	o.mu.Lock()
	o.startedAt = now
	o.mu.Unlock()
}

// swapKey uses k from now on; it reports whether k differs from the key
// in use.
func (o *observer) swapKey(k *Key) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if k.Fingerprint() == o.key.Fingerprint() {
		return false
	}
	o.key = k
	return true
}

// observe copies the heartbeat and witness state for one decision, and
// declares dead the peers silent for deadtime.
func (o *observer) observe(now time.Time) observation {
	cfg := o.cfg.Load()
	o.mu.Lock()
	defer o.mu.Unlock()
	obs := observation{now: now, startedAt: o.startedAt, lastHeard: o.lastHeard, witnessConfigured: len(o.witnesses) > 0}
	for _, name := range o.peerNames() {
		p := o.peers[name]
		silent := now.Sub(p.lastValid)
		if !p.heard {
			silent = now.Sub(o.startedAt)
		}
		if p.alive && silent >= cfg.Deadtime {
			p.alive = false
			o.metrics.peerAlive.WithLabelValues(name).Set(0)
			o.metrics.heartbeatLosses.WithLabelValues(name).Inc()
			o.events.Warn(EventPeer, fmt.Sprintf("peer %s dead: no valid heartbeat for %s (deadtime %s)", name, silent.Round(time.Millisecond), cfg.Deadtime), "peer", name)
		}
		pv := peerView{name: name, heard: p.heard, silent: silent, alive: p.alive, hb: p.hb,
			portClosed: p.heard && p.closedAt.After(p.lastValid)}
		if p.alive {
			pv.aliveFor = now.Sub(p.aliveSince)
		}
		obs.peers = append(obs.peers, pv)
	}
	var seen, all []string
	for _, w := range o.witnesses {
		all = append(all, w.URL)
		if w.seen(now, cfg.Deadtime) {
			seen = append(seen, w.URL)
		}
	}
	obs.witnessSeen = len(seen) > 0
	if obs.witnessSeen {
		obs.witnessNames = strings.Join(seen, ", ")
	} else {
		obs.witnessNames = strings.Join(all, ", ") + " unreachable"
	}
	// Witness transitions are events: they explain later decisions.
	if len(all) > 0 && now.Sub(o.startedAt) >= cfg.Deadtime {
		state := "up"
		if !obs.witnessSeen {
			state = "down"
		}
		if state != o.witnessState {
			if o.witnessState != "" || state == "down" {
				msg := "witness reachable: " + obs.witnessNames
				if state == "down" {
					msg = "every witness unreachable for " + cfg.Deadtime.String() + ": " + o.witnessErrorsLocked(now, cfg.Deadtime)
				}
				o.events.Warn(EventWitness, msg)
			}
			o.witnessState = state
		}
		for _, w := range o.witnesses {
			o.metrics.witnessUp.WithLabelValues(w.URL).Set(b2f(w.seen(now, cfg.Deadtime)))
		}
	}
	return obs
}

func (o *observer) witnessErrorsLocked(now time.Time, window time.Duration) string {
	var parts []string
	for _, w := range o.witnesses {
		st := w.status(now, window)
		e := st.LastError
		if e == "" {
			e = "no successful probe"
		}
		parts = append(parts, w.URL+": "+e)
	}
	return strings.Join(parts, "; ")
}

// witnessSeen: any witness answered a probe that started within deadtime.
func (o *observer) witnessSeen(now time.Time) bool {
	window := o.cfg.Load().Deadtime
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, w := range o.witnesses {
		if w.seen(now, window) {
			return true
		}
	}
	return false
}

func (o *observer) peerNames() []string {
	names := make([]string, 0, len(o.peers))
	for n := range o.peers {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// peerStatus is the peers as /status shows them.
func (o *observer) peerStatus() []PeerStatus {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []PeerStatus
	for _, name := range o.peerNames() {
		p := o.peers[name]
		ps := PeerStatus{Name: name, Address: p.cfg.Address, Alive: p.alive, LastHeartbeat: p.lastValid, From: p.from}
		if p.hb != nil {
			ps.Role, ps.Eligible, ps.DBFenced, ps.Resources = p.hb.Role, p.hb.Eligible, p.hb.DBFenced, p.hb.Resources
		}
		if len(p.rejected) > 0 {
			ps.Rejected = map[string]int{}
			for k, v := range p.rejected {
				ps.Rejected[k] = v
			}
		}
		out = append(out, ps)
	}
	return out
}

func (o *observer) witnessStatus(now time.Time) []WitnessStatus {
	window := o.cfg.Load().Deadtime
	o.mu.Lock()
	defer o.mu.Unlock()
	out := []WitnessStatus{}
	for _, w := range o.witnesses {
		out = append(out, w.status(now, window))
	}
	return out
}

// installWitnesses replaces the witness set from the configuration; the
// new witnesses count as unprobed until runWitnesses probes them.
func (o *observer) installWitnesses() {
	urls := o.cfg.Load().Witness
	var ws []*Witness
	for _, raw := range urls {
		w, err := NewWitness(raw)
		if err != nil {
			o.events.Warn(EventWitness, err.Error())
			continue
		}
		ws = append(ws, w)
	}
	o.mu.Lock()
	o.witnesses = ws
	o.mu.Unlock()
}

// reloadWitnesses installs the configured witnesses and has the probers
// restart with them.
func (o *observer) reloadWitnesses() {
	o.installWitnesses()
	select {
	case o.witnessesChanged <- struct{}{}:
	default:
	}
}

// runWitnesses probes the installed witnesses until ctx ends, restarting
// the probers when the set changes. Probes run every keepalive, each
// bounded by half the deadtime, so an unreachable witness is known before
// deadtime.
func (o *observer) runWitnesses(ctx context.Context) {
	for {
		cfg := o.cfg.Load()
		interval, timeout := cfg.Keepalive, max(cfg.Deadtime/2, 50*time.Millisecond)
		o.mu.Lock()
		ws := o.witnesses
		o.mu.Unlock()
		pctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for _, w := range ws {
			wg.Go(func() { w.run(pctx, interval, timeout) })
		}
		select {
		case <-ctx.Done():
		case <-o.witnessesChanged:
		}
		stop()
		wg.Wait()
		if ctx.Err() != nil {
			return
		}
	}
}

// receive reads datagrams until the socket is closed.
func (o *observer) receive(conn *net.UDPConn) {
	buf := make([]byte, maxHeartbeatLen)
	for {
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if refusedError(err) {
				o.portsClosed(conn, time.Now())
				continue
			}
			o.logger.Warn("heartbeat receive", "err", err)
			continue
		}
		o.handle(buf[:n], from, time.Now())
	}
}

// handle takes one datagram. Whatever fails authentication, decoding or
// anti-replay is dropped before it touches a peer's state: a forged or
// replayed datagram can neither make a peer look alive nor hold back a
// takeover. Liveness counts on our monotonic clock from the arrival of
// the last accepted datagram.
func (o *observer) handle(pkt []byte, from *net.UDPAddr, now time.Time) {
	cfg := o.cfg.Load()
	o.mu.Lock()
	key := o.key
	o.mu.Unlock()
	hb, err := decodeHeartbeat(key, pkt)
	if err != nil {
		o.reject(from, nil, err, now)
		return
	}
	o.mu.Lock()
	p := o.peers[hb.Node]
	switch {
	case hb.Node == o.self:
		o.mu.Unlock()
		o.reject(from, nil, rejectf(rejectUnknown, "heartbeat claims to come from this node %q: reflected datagram or duplicate node name", hb.Node), now)
		return
	case p == nil:
		o.mu.Unlock()
		o.reject(from, nil, rejectf(rejectUnknown, "heartbeat from node %q, which is not in cluster.nodes", hb.Node), now)
		return
	}
	if err := p.guard.check(hb, o.self, o.boot); err != nil {
		if rejectReason(err) == rejectStale {
			// The handshake: a peer that just started echoes us only once
			// it has heard us, and we can echo it only once we have heard
			// it. Its boot is authenticated; remembering it changes only
			// what we echo.
			p.echo.learn(hb.Boot, hb.Seq, p.guard.boot, now, cfg.Deadtime)
		}
		o.mu.Unlock()
		o.reject(from, p, err, now)
		return
	}
	restarted := p.guard.accept(hb, o.self, o.boot)
	p.echo.learn(hb.Boot, hb.Seq, hb.Boot, now, cfg.Deadtime)
	p.heard = true
	p.lastValid = now
	o.lastHeard = now
	p.from = from.String()
	old := p.hb
	p.hb = hb
	becameAlive := !p.alive
	if becameAlive {
		p.alive, p.aliveSince = true, now
		o.metrics.peerAlive.WithLabelValues(hb.Node).Set(1)
	}
	if restarted || hb.Leaving {
		// A restart within deadtime never looked dead; it is "back" (for
		// failback_hold and the fenced-exit hysteresis) only from now.
		p.aliveSince = now
	}
	o.mu.Unlock()
	o.metrics.heartbeatsRecv.WithLabelValues(hb.Node).Inc()
	switch {
	case becameAlive:
		o.events.Add(EventPeer, fmt.Sprintf("peer %s alive (role %s, database fenced %t) from %s", hb.Node, hb.Role, hb.DBFenced, from), "peer", hb.Node)
	case restarted:
		o.events.Add(EventPeer, fmt.Sprintf("peer %s restarted its daemon (new boot id)", hb.Node), "peer", hb.Node)
	}
	if old == nil || old.Role != hb.Role || old.Leaving != hb.Leaving || old.DBFenced != hb.DBFenced || old.Eligible != hb.Eligible || old.Draining != hb.Draining {
		select {
		case o.wake <- struct{}{}:
		default:
		}
	}
}

// reject counts a dropped datagram and reports it, at most every 10s per
// source and reason (per reason alone once many sources were seen), so a
// flood cannot flood the log. p is the sender when the datagram was
// authenticated. Stale datagrams from a peer not accepted since we
// started are the handshake, not news, and are only counted.
func (o *observer) reject(from *net.UDPAddr, p *peerState, err error, now time.Time) {
	reason := rejectReason(err)
	o.metrics.heartbeatRejected.WithLabelValues(reason).Inc()
	o.mu.Lock()
	if p != nil {
		p.rejected[reason]++
	}
	if reason == rejectStale && p != nil && p.guard.boot == 0 {
		o.mu.Unlock()
		return
	}
	k := from.String() + "|" + reason
	n := o.rejectLog[k]
	if n == nil && len(o.rejectLog) >= maxRejectSources {
		k = "*|" + reason
		n = o.rejectLog[k]
	}
	if n == nil {
		n = &rejectNote{}
		o.rejectLog[k] = n
	}
	if !n.last.IsZero() && now.Sub(n.last) < 10*time.Second {
		n.suppressed++
		o.mu.Unlock()
		return
	}
	suppressed := n.suppressed
	n.last, n.suppressed = now, 0
	o.mu.Unlock()
	msg := fmt.Sprintf("heartbeat from %s %s", from, err)
	if suppressed > 0 {
		msg += fmt.Sprintf(" (%d more %s rejections not logged in the last 10s)", suppressed, reason)
	}
	o.events.Warn(EventHeartbeat, msg, "reason", reason)
}

// broadcast signs hb and sends it to every peer. The observer does it
// because it holds the key and the peers' addresses (which reject also
// matches unauthenticated senders against).
func (o *observer) broadcast(conn *net.UDPConn, hb *Heartbeat) {
	o.mu.Lock()
	key := o.key
	type dest struct {
		p    *peerState
		name string
	}
	var dests []dest
	for _, name := range o.peerNames() {
		dests = append(dests, dest{o.peers[name], name})
	}
	hb.Echo = map[string][]EchoRef{}
	for _, d := range dests {
		if refs := d.p.echo.list(); len(refs) > 0 {
			hb.Echo[d.name] = refs
		}
	}
	o.mu.Unlock()
	pkt, err := encodeHeartbeat(key, hb)
	if err != nil {
		o.logger.Error("encode heartbeat", "err", err)
		return
	}
	for _, d := range dests {
		o.mu.Lock()
		addr := d.p.addr
		o.mu.Unlock()
		if addr == nil {
			a, err := net.ResolveUDPAddr("udp", d.p.cfg.Address)
			if err != nil {
				o.logger.Warn("cannot resolve peer address", "peer", d.name, "address", d.p.cfg.Address, "err", err)
				continue
			}
			o.mu.Lock()
			d.p.addr, addr = a, a
			o.mu.Unlock()
		}
		_, err := conn.WriteToUDP(pkt, addr)
		if refusedError(err) {
			// A pending ICMP error of an earlier datagram (maybe to another
			// peer) fails this send without sending it: read the queue and
			// send again, or a dead peer would silence us towards a live one.
			o.portsClosed(conn, time.Now())
			_, err = conn.WriteToUDP(pkt, addr)
		}
		if err != nil {
			if refusedError(err) {
				o.portsClosed(conn, time.Now())
			} else if !errors.Is(err, net.ErrClosed) {
				o.logger.Debug("heartbeat send", "peer", d.name, "err", err)
			}
			continue
		}
		o.metrics.heartbeatsSent.Inc()
	}
}

// dbObservation is our own database as the replication supervisor last
// saw it.
type dbObservation struct {
	fenced  bool
	reason  string
	applied int64
	lag     *float64
	// unreachable is why the supervisor could not reach it ("" when it
	// could, or has not tried yet).
	unreachable string
	observed    bool     // the supervisor has polled it
	errant      []string // transactions its peer lacks
}

// observeDB reads node's state from the supervisor (nil db: no database).
func observeDB(db Database, node string) dbObservation {
	if db == nil || node == "" {
		return dbObservation{}
	}
	for _, n := range db.Status().Nodes {
		if n.Name != node {
			continue
		}
		o := dbObservation{fenced: n.Fenced, reason: n.FenceReason, applied: appliedTrx(n.GTIDCurrentPos), lag: n.LagSeconds,
			observed: !n.ObservedAt.IsZero(), errant: n.ErrantGTIDs}
		if !n.Reachable && !n.ObservedAt.IsZero() {
			o.unreachable = n.Error
			if o.unreachable == "" {
				o.unreachable = "unreachable"
			}
		}
		return o
	}
	return dbObservation{}
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
