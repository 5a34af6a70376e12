package orchestrator

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// An incomplete release: a resource's stop failed (the LSB stop exited
// non-zero or timed out) when this node left the writer role, or when a
// failed start released the group. The resource may still be up — the
// VIP still configured, the service still running — so the first rule,
// never two writers, says: hold, say so, keep trying.
//
//   - The group keeps the resource as unreleased (Group.Unreleased); the
//     heartbeat lists it (Heartbeat.Unreleased) and says not eligible, and
//     peers do not take over while it does (decide.go, peerUnreleased).
//   - The role loop retries the stop with backoff (releaseRetryMin
//     doubling to selfFenceBackoffMax), on the role loop so that it never
//     overlaps another action on the group, and cut short when the node
//     is isolated so that the self-fence is not delayed.
//   - After self_fence.escalate_after it also fences its own database
//     (read-only), as the self-fence does: a service that would not stop
//     must not write meanwhile. The fence stays until the release
//     completes and a peer is back (ownFenceLiftable).
//   - It is loud: an event per attempt, /status (release_incomplete) and
//     `lockstep status`, /health and the agent check (maint), and the
//     lockstep_release_incomplete gauge.
//
// While fenced, the fencer (selffence.go) releases and verifies instead.

// ReleaseStatus is an incomplete release as /status shows it, present
// while some resource's stop has failed and not been retried
// successfully.
type ReleaseStatus struct {
	Resources   []string  `json:"resources"`
	Since       time.Time `json:"since"`
	Attempts    int       `json:"attempts"`
	LastError   string    `json:"last_error,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	Escalated   []string  `json:"escalated,omitempty"`
}

// releaseRetryMin is the first retry interval: long enough not to fork a
// failing stop script several times a second, short enough that a stop
// that fails once by chance costs little.
const releaseRetryMin = 250 * time.Millisecond

// releaseState is the role loop's memory of an incomplete release.
type releaseState struct {
	ReleaseStatus
	backoff   time.Duration
	escalated bool
}

// shutdownReleaseBudget bounds how long a shutdown retries an incomplete
// release before giving up: well inside the unit's TimeoutStopSec (90s),
// which also covers the resources' own stop timeouts.
const shutdownReleaseBudget = 10 * time.Second

// unreleasedReason lists what the group could not stop, with the errors.
func (rm *RoleManager) unreleasedReason() (names []string, why string) {
	var parts []string
	for _, r := range rm.act.resources() {
		if r.Unreleased {
			names = append(names, r.Name)
			parts = append(parts, fmt.Sprintf("%s: %s", r.Name, r.LastError))
		}
	}
	return names, strings.Join(parts, "; ")
}

// trackRelease keeps the incomplete-release state in step with the group,
// on the role loop, and retries the stop when due. A writer's unreleased
// resource is its own business (a failed in-place restart; the release
// of its step-down retries it); a fenced node's is the fencer's.
func (rm *RoleManager) trackRelease(ctx context.Context, now time.Time) {
	st := &rm.state
	names, why := rm.unreleasedReason()
	if len(names) == 0 {
		if st.release != nil {
			rm.events.Add(EventResource, fmt.Sprintf("release complete after %d attempts in %s: peers may take the writer role again", st.release.Attempts, now.Sub(st.release.Since).Round(time.Millisecond)))
			rm.endRelease()
		}
		return
	}
	if st.role == RoleWriter {
		return
	}
	if st.release == nil {
		backoff := max(releaseRetryMin, rm.cfg.Load().Keepalive)
		st.release = &releaseState{ReleaseStatus: ReleaseStatus{Resources: names, Since: now, Attempts: 1, LastError: why, NextAttempt: now.Add(backoff)}, backoff: backoff}
		rm.publishRelease()
		rm.metrics.releaseIncomplete.Set(1)
		rm.signalSend()
		rm.events.Warn(EventResource, fmt.Sprintf("RELEASE INCOMPLETE: %s may still be up on this node (%s); peers are told and will not take the writer role; retrying the stop every %s or more", strings.Join(names, ", "), why, backoff))
	}
	if st.role != RoleStandby || now.Before(st.release.NextAttempt) {
		return
	}
	rm.retryRelease(ctx, now)
}

// retryRelease makes one attempt, escalating when it is due.
func (rm *RoleManager) retryRelease(ctx context.Context, now time.Time) {
	st := &rm.state
	r := st.release
	cfg := rm.cfg.Load()
	rm.health.setRecovering("retrying the stop of " + strings.Join(r.Resources, ", "))
	defer rm.health.setRecovering("")
	isolated, err := rm.unlessIsolated(ctx, func(ctx context.Context) error {
		return rm.act.group.Load().RetryRelease(ctx, "release retry")
	})
	if ctx.Err() != nil || isolated {
		return // shutdown retries on its own; isolation fences next
	}
	r.Attempts++
	rm.metrics.releaseRetries.WithLabelValues(result(err)).Inc()
	if err == nil {
		rm.events.Add(EventResource, fmt.Sprintf("release complete after %d attempts in %s: %s stopped; peers may take the writer role again", r.Attempts, since(r.Since), strings.Join(r.Resources, ", ")))
		rm.endRelease()
		return
	}
	names, why := rm.unreleasedReason()
	r.Resources, r.LastError = names, why
	if !r.escalated && time.Since(r.Since) >= cfg.SelfFence.EscalateAfter {
		r.escalated = true
		r.Escalated = append(r.Escalated, rm.escalateRelease(ctx, names, cfg))
	}
	r.backoff = min(2*r.backoff, selfFenceBackoffMax)
	r.NextAttempt = time.Now().Add(r.backoff)
	rm.publishRelease()
	rm.events.Warn(EventResource, fmt.Sprintf("RELEASE INCOMPLETE after %d attempts in %s: %s; peers still held off; retrying in %s", r.Attempts, since(r.Since), why, r.backoff))
}

// escalateRelease fences our own database, as the self-fence does: a
// service that would not stop must not write while the peer waits (and,
// should this node die, after the peer takes over). It returns the step
// taken, for /status.
func (rm *RoleManager) escalateRelease(ctx context.Context, names []string, cfg *ClusterConfig) string {
	if rm.db == nil || rm.self.DB == "" {
		return "no database to fence"
	}
	err := rm.act.fenceDB(ctx, "release incomplete: "+strings.Join(names, ", ")+" may still be up", cfg.Deadtime)
	if err != nil {
		return fmt.Sprintf("fence database %s: %v", rm.self.DB, err)
	}
	rm.state.selfFenced = true
	return "fenced database " + rm.self.DB + " (read-only) until the release completes"
}

func (rm *RoleManager) endRelease() {
	rm.state.release = nil
	rm.publishRelease()
	rm.metrics.releaseIncomplete.Set(0)
	rm.signalSend()
}

// publishRelease copies the release state into the published snapshot:
// a new value each time, so readers never share one being changed.
func (rm *RoleManager) publishRelease() {
	st := &rm.state
	if st.release == nil {
		st.roleSnapshot.release = nil
	} else {
		c := st.release.ReleaseStatus
		c.Resources = append([]string(nil), c.Resources...)
		c.Escalated = append([]string(nil), c.Escalated...)
		st.roleSnapshot.release = &c
	}
	rm.publish()
}

// shutdownRelease retries an incomplete release during a shutdown, for at
// most shutdownReleaseBudget; it reports whether the release completed.
// A daemon that never exits would be killed by systemd anyway, and a
// peer waits for a dead node only until it is gone (peerUnreleased).
func (rm *RoleManager) shutdownRelease(now time.Time) bool {
	backoff := max(releaseRetryMin, rm.cfg.Load().Keepalive)
	deadline := now.Add(shutdownReleaseBudget)
	for {
		if len(rm.act.unreleased()) == 0 {
			return true
		}
		if time.Now().Add(backoff).After(deadline) {
			return false
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, selfFenceBackoffMax)
		err := rm.act.group.Load().RetryRelease(context.Background(), "shutdown release retry")
		rm.metrics.releaseRetries.WithLabelValues(result(err)).Inc()
	}
}
