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
//   - The quorum arbiter (arbiter.go, etcd) is one more source of
//     observations: the arbiter field group in observation, filled by
//     its own goroutines (arbiter.Run owns them) and read by decide
//     (decideArbiter, arbiter_decide.go), not another layer of locks.
//     The role loop tells it whether to campaign after each decision.
//
// # Heartbeats
//
// Every keepalive each node sends every peer one UDP datagram: magic,
// key fingerprint, HMAC-SHA256 and a JSON body (node, boot nonce,
// sequence number, echoed nonces, role, eligibility, database fence
// state, applied-transaction hint, resources held, witness view). The MAC
// key is derived from cluster.key_file.
//
// No clock of another node is trusted. Liveness is measured on the
// receiver's monotonic clock from the arrival of the last accepted
// datagram, and freshness is proved without timestamps: each daemon start
// draws a random boot nonce, each datagram echoes the boot nonces it heard
// from each peer (with the newest sequence number of each), and a
// receiver accepts a datagram only when it echoes the receiver's current
// boot (so it was made after the receiver started), its sequence number
// grows within the sender's boot, and a new sender boot echoes a newer
// sequence number of ours than the previous boot did (so the newer process
// is the later one and replays of the older stay rejected). After either
// daemon starts, the first keepalive or two are this handshake. The
// sender's wall-clock time is still carried, for humans only; a clock step
// on one node changes nothing (cluster.max_clock_skew is ignored and
// `lockstep check` warns about it).
//
// Anything that fails authentication, decoding or anti-replay is dropped
// before it touches a peer's state, counted in
// lockstep_heartbeat_rejected_total{reason} (auth, malformed, replay,
// stale, unknown_node) and reported as an event at most every 10s per
// source and reason (per reason alone beyond 256 sources). An
// authenticated but stale datagram can at most add its boot nonce to the
// bounded list we echo. In particular datagrams failing authentication
// from a peer's address do not make it look alive and do not hold a
// takeover back: they cannot be told from a forger's. A peer configured
// with another key therefore looks dead; without an arbiter that is a
// partition as far as either daemon can tell, so deploy the key before
// starting a node, and rotate it with the cluster stopped.
//
// The heartbeat body changed in this version (the echo): stop both
// daemons to upgrade from an earlier one.
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
//   - The margin only waits for a live daemon's fence. When the peer's
//     host answers our heartbeat with ICMP port unreachable (its daemon
//     crashed or was killed; portclosed.go), no daemon is left to fence,
//     and the survivor takes over after deadtime alone. A forged ICMP
//     error can skip only the margin, after a full deadtime of silence.
//
// # Two writers after a cut (heartbeat mode)
//
// A cut of only the node↔node link, with both nodes still reaching a
// witness, looks like a dead peer to both: the standby takes over, the
// writer keeps its role. No timing prevents that without an arbiter. The
// first heartbeat after the heal shows each node a live peer claiming the
// writer role (rule 4); both resolve it in that decision, identically
// (resolveDoubleWriter: writable database, then longer tenure on the
// monotonic clock, then name; in doubt both step down), and the role loop
// raises the alert (doublewriter.go).
//
// # The etcd arbiter
//
// With cluster.arbiter.etcd, decide follows decideArbiter: the writer is
// whoever holds the etcd election under prefix/writer with a lease that
// is valid beyond the demotion deadline; heartbeat silence, witnesses and
// names never make a writer. Timing, with T = lease_ttl:
//
//   - The lease is renewed every T/6 (KeepAliveOnce, each bounded by T/6).
//     A renewal sent at s that succeeds proves the lease lives on etcd
//     until at least s + T (the server restarts the TTL after receiving
//     it; a leader change of etcd only extends it).
//   - The demotion deadline is s + T/2 for the last successful s. The
//     role loop, deciding every keepalive/4, fences then: database
//     read-only and resources released, which must fit in the remaining
//     T/2 (raise lease_ttl for slow resource stops).
//   - Another node's campaign can succeed only once our election key is
//     gone: when the lease expires on etcd (>= s + T) or we resign. So
//     the demoted writer is released before anyone else can win, without
//     comparing clocks (only their rates, ppm, matter).
//   - A standby campaigns only while it may take over (eligible, decided)
//     and its database is reachable, not fenced (the supervisor fences a
//     lagging node until it caught up) and has no errant transactions;
//     having won, it takes over only with a lease valid for at least two
//     more renewal intervals.
//   - A writer that hands over (its database fenced while a peer is
//     eligible) or shuts down releases first and resigns (or revokes the
//     lease) after, so the peer wins at once.
//
// # A self-fence that does not hold
//
// The first attempt (read_only and the release, at once) runs in the role
// loop. When it fails (the server refuses read_only: SET GLOBAL read_only
// waits for transactions holding locks; or it is unreachable) or a
// resource does not stop, the fencer (selffence.go) retries in its own
// goroutine with backoff (keepalive doubling to 5s), releasing the
// resources again each time (the VIP among them). After
// self_fence.escalate_after (default deadtime) of failure it also kills
// the database's client sessions (Database implementations offering
// ClientKiller) and retries read_only, and then stops the database with
// self_fence.stop_database (an LSB script, verified by `status` exiting
// 3). Until the node is verifiably not writable — read_only acknowledged
// by the server or the database stopped, and nothing held — every retry
// is an event, /status carries self_fence with the last error, /health and
// the agent check say "SELF-FENCE NOT HOLDING", and
// lockstep_self_fence_failing is 1. The retries end when the node leaves
// the fenced role (a peer is back, whose writer's supervisor decides about
// the database from then on) or the daemon stops.
//
// A node that fenced itself does not take over again until it has heard a
// peer: when only the witness comes back, the peer has most likely taken
// over meanwhile (restarting the daemon overrides this). For the same
// reason its database self-fence is lifted only once a peer is heard.
//
// A clean shutdown releases the resources, then sends a "leaving"
// heartbeat, and the peer takes over at once.
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
