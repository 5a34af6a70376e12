// Package orchestrator is `lockstep run`: the per-node HA daemon that
// composes the sync jobs and the replication supervisor and decides, with
// its peers, which node is the writer holding the ordered resource group.
//
// # Structure
//
// The role manager (rolemanager.go) is one loop around three parts, and
// the role state has one owner: the goroutine running that loop.
//
//   - The observer (observer.go) owns the heartbeat peers and the witness
//     probers; once per decision it copies them into an observation.
//   - decide (decide.go) is a pure function from an observation and the
//     role state to a decision (role, reason, lifting our own fence);
//     every rule is covered by its table test.
//   - The actor (actor.go) carries a decision out: the resource group
//     started left to right and released right to left, the VIP among
//     the resources, the database fence and unfence.
//   - Resource monitors and track checks (monitor.go, track.go): while
//     the group is held, one goroutine per resource checks it and reports
//     failures to the loop, which alone recovers (restart in place, add a
//     vanished address again) or records the failure; recorded failures
//     and failing tracks reach decide as the observation's ineligibility,
//     so giving up the writer role is an ordinary decision.
//   - The loop publishes a copy of the role state after each change; the
//     heartbeat sender and Status read it, and the HTTP layer (http.go)
//     sees only the RoleStatus value, never the live state.
//   - The database is one interface, Database (daemon.go): run, status,
//     fence, unfence, and the one-decision-maker switch.
//   - A quorum arbiter (e.g. etcd) is meant to be one more source of
//     observations: a field group in observation filled by its own
//     goroutine and read by decide, not another layer of locks.
//
// # Heartbeats
//
// Every keepalive each node sends every peer one UDP datagram: magic,
// key fingerprint, HMAC-SHA256 and a JSON body (node, role, eligibility,
// database fence state, applied-transaction hint, resources held, witness
// view). The MAC key is derived from cluster.key_file. A datagram is
// accepted once: per sender the (boot id, sequence) pair must grow, a new
// boot must be newer than anything seen from the old one, and the
// timestamp must be within max_clock_skew of our clock. Forged, replayed,
// stale and unknown-node datagrams are dropped, counted
// (lockstep_heartbeat_rejected_total{reason}) and reported as events, at
// most every 10s per source. A peer is dead after deadtime without a
// valid heartbeat.
//
// # Roles and the timing argument
//
// decide (decide.go) is a pure function of one snapshot; its rules are
// listed there. The safety property is that a partitioned writer releases
// everything before the survivor takes over:
//
//   - The writer fences itself when no peer was heard for deadtime and no
//     witness probe that started within the last deadtime succeeded.
//     Witnesses are probed every keepalive; a probe counts from its start
//     time. So the isolated writer fences at most deadtime (+ one decision
//     tick, keepalive/4) after the cut, first making its database
//     read-only, then releasing the resources right to left.
//   - The survivor heard the writer's last heartbeat at most one keepalive
//     before the cut, and takes over only after deadtime + takeover_margin
//     of silence (default margin 2 x keepalive). Its takeover therefore
//     happens no earlier than cut + deadtime + margin - keepalive.
//   - With margin > keepalive + tick + the time to fence and release, the
//     fence comes first. At the defaults (200ms, 1s, 400ms) that leaves
//     150ms for the release; configure a larger takeover_margin when a
//     resource's stop takes longer.
//
// A node that fenced itself does not take over again until it has heard a
// peer: when only the witness comes back, the peer has most likely taken
// over meanwhile (restarting the daemon overrides this). For the same
// reason its database self-fence is lifted only once a peer is heard.
//
// A clean shutdown releases the resources, then sends a "leaving"
// heartbeat, and the peer takes over at once. A peer whose datagrams fail
// authentication is probably alive with another key: the survivor then
// refuses to take over and says why.
//
// # Replication supervisor
//
// Both nodes run the replication supervisor for the same pair. The daemon
// tells it whether this node is the writer: SetActive(true) when it takes
// the writer role, false when it leaves it (it is not called for a node
// that starts and stays standby, so the supervisor must start inactive).
// The writer's supervisor is then the single automatic decision-maker,
// and the standby's only observes; with no writer, nobody fences
// automatically. The self-fence uses the supervisor's Fence (which acts
// in either mode) with a reason starting with "lockstep self-fence: ";
// the daemon lifts exactly that fence (Unfence) when the node is no
// longer isolated, also after a restart, and leaves the writer's
// supervisor to fence it again while it is behind.
package orchestrator
