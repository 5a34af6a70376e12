package dbrepl

import (
	"context"
	"os"
	"strconv"
	"time"
)

// act carries out a decision (see decide.go), in order. What decide cannot
// know is checked here, right before acting: whether the peer is still
// writable, and whether this supervisor is still the active one.
func (s *Supervisor) act(ctx context.Context, v pairView, d decision) {
	for _, a := range d.actions {
		i := a.node
		name := v.obs[i].Node
		switch a.kind {
		case actEvent:
			s.emit(Event{Node: name, Type: a.event, Reason: a.reason})
		case actAccept:
			s.dropFence(i, a.reason)
		case actRefence:
			manual := v.fences[i].Manual
			if err := s.setFenced(ctx, i, true); err != nil {
				s.emit(Event{Node: name, Type: EventFenceFailed, Reason: "re-fence: " + err.Error(), Manual: manual})
			} else {
				s.emit(Event{Node: name, Type: EventRefence, Reason: a.reason, Manual: manual})
			}
		case actFence:
			s.fenceIfPeerWritable(ctx, i, a.reason, v.obs, d.eval)
		case actSkip:
			s.skip(i, v.obs, a.reason)
		case actEpisodeOver:
			s.mu.Lock()
			s.skipLogged[i] = false
			s.mu.Unlock()
		case actFollow:
			s.follow(i, a.reason, v.obs, d.eval)
		case actNote:
			s.logger.Debug(a.reason, "node", name)
		case actHoldReset:
			s.mu.Lock()
			s.goodSince[i] = time.Time{}
			s.mu.Unlock()
		case actHoldStart:
			s.mu.Lock()
			if s.goodSince[i].IsZero() {
				s.goodSince[i] = v.now
			}
			s.mu.Unlock()
		case actUnfence:
			_ = s.unfence(ctx, i, a.reason, false) // failures are events
		case actForeign:
			s.reportForeign(i, a.reason)
		}
	}
}

// fenceIfPeerWritable fences node i unless its peer turned read-only
// since the poll: another supervisor (each daemon of the pair runs one)
// may have fenced it, and looking again right before acting narrows the
// window where both could fence "the other".
func (s *Supervisor) fenceIfPeerWritable(ctx context.Context, i int, reason string, obs [2]*Observation, ev [2]*nodeEval) {
	if ro, err := s.nodes[1-i].readOnlyNow(ctx); err != nil || ro {
		why := "peer is read-only: never fence the last writable node"
		if err != nil {
			why = "peer's read_only unknown: " + err.Error()
		}
		s.skip(i, obs, why)
		return
	}
	if !s.Active() {
		return // deactivated since this poll began: the writer decides
	}
	_ = s.fence(ctx, i, reason, false, obs, ev) // failures are events
}

// follow records, as an inactive supervisor, the fence the active one put
// on node i (now read-only), so that its status and its daemon see the
// node fenced. The record is automatic: should this supervisor become
// active, it reintroduces the node once it has caught up.
func (s *Supervisor) follow(i int, reason string, obs [2]*Observation, ev [2]*nodeEval) {
	o := obs[i]
	s.actMu.Lock()
	defer s.actMu.Unlock()
	s.mu.Lock()
	known := s.fences[i] != nil && s.foreign[i] == ""
	s.mu.Unlock()
	if known {
		return // fenced by hand meanwhile
	}
	rec := s.newFenceRecord(i, o.Node, reason, false, obs, ev)
	s.keepFence(i, rec, "fence record not saved")
	s.emit(Event{Node: o.Node, Type: EventFence, Reason: rec.Reason})
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

// reportForeign logs, once per record version, that node i's fence record
// belongs to another server and is ignored. The record is left in place
// for the post-mortem; `repl fence` or a new fence overwrites it.
func (s *Supervisor) reportForeign(i int, why string) {
	name := s.cfg.Nodes[i].Name
	stamp := s.stamp(name)
	s.mu.Lock()
	seen := s.foreignLogged[i] == stamp
	s.foreignLogged[i] = stamp
	s.mu.Unlock()
	if !seen {
		s.logger.Warn("fence record ignored: it belongs to another server", "node", name, "record", s.store.path(name), "why", why)
	}
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
	rec := &FenceRecord{Node: name, Reason: reason, Manual: manual, Since: time.Now().UTC(), By: s.host, Address: s.nodes[i].addr}
	if o := obs[i]; o != nil {
		rec.GTIDCurrentPos, rec.GTIDExecuted = o.GTIDCurrentPos, o.GTIDExecuted
		rec.ServerID, rec.ServerUUID, rec.DomainID = o.ServerID, o.ServerUUID, o.DomainID
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
	// The node is read-only, which is the safe side; without the record a
	// restart would not know why, so an unsaved record is said loudly.
	rec := s.newFenceRecord(i, name, reason, manual, obs, ev)
	if !rec.Bound() {
		// `repl fence` has no observation: ask the server who it is.
		if id, err := s.nodes[i].identity(ctx); err != nil {
			s.logger.Warn("fence record not bound to the server: cannot read its identity", "node", name, "err", err)
		} else {
			rec.ServerID, rec.ServerUUID, rec.DomainID = id.ServerID, id.ServerUUID, id.DomainID
			if rec.GTIDCurrentPos == "" {
				rec.GTIDCurrentPos = id.GTIDCurrentPos
			}
		}
	}
	s.keepFence(i, rec, "fence record not saved: a supervisor restart will not know this node is fenced")
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
	s.forgetFence(i)
	s.emit(Event{Node: name, Type: EventUnfence, Reason: reason, Manual: manual})
	s.hook(s.cfg.Hooks.OnUnfence, HookUnfence, name, reason, manual)
	return nil
}

// dropFence forgets an automatic fence someone else already lifted.
func (s *Supervisor) dropFence(i int, reason string) {
	s.actMu.Lock()
	defer s.actMu.Unlock()
	s.forgetFence(i)
	s.emit(Event{Node: s.cfg.Nodes[i].Name, Type: EventUnfence, Reason: reason})
}

// keepFence saves rec as node i's fence record and puts it in force;
// unsaved is the message logged when it cannot be saved. The caller holds
// actMu.
func (s *Supervisor) keepFence(i int, rec *FenceRecord, unsaved string) {
	if err := s.store.Save(rec); err != nil {
		s.logger.Error(unsaved, "node", rec.Node, "err", err)
	}
	stamp := s.stamp(rec.Node)
	s.mu.Lock()
	s.fences[i] = rec
	s.fenceStamp[i] = stamp
	s.goodSince[i] = time.Time{}
	s.mu.Unlock()
}

// forgetFence removes node i's fence record. The caller holds actMu.
func (s *Supervisor) forgetFence(i int) {
	name := s.cfg.Nodes[i].Name
	if err := s.store.Remove(name); err != nil {
		s.logger.Error("fence record not removed", "node", name, "err", err)
	}
	s.mu.Lock()
	s.fences[i] = nil
	s.fenceStamp[i] = ""
	s.goodSince[i] = time.Time{}
	s.mu.Unlock()
}

// stamp identifies the version of a node's fence record (mtime and size),
// so that reloadFences notices `lockstep repl fence|unfence` edits.
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
