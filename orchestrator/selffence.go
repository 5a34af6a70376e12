package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// ClientKiller is implemented by a Database that can end its client
// sessions at once. A self-fence that cannot set read_only escalates to
// it: SET GLOBAL read_only waits for transactions holding locks, and
// until it succeeds those sessions can go on writing.
type ClientKiller interface {
	KillClientSessions(ctx context.Context, node string) (int, error)
}

// SelfFenceStatus is this node's self-fence as /status shows it, present
// while the node is fenced.
type SelfFenceStatus struct {
	// Holding: the node is verifiably not writable: the database
	// acknowledged read_only (or was stopped, or there is none) and no
	// resource is held.
	Holding    bool      `json:"holding"`
	Since      time.Time `json:"since"`
	Attempts   int       `json:"attempts"`
	VerifiedBy string    `json:"verified_by,omitempty"`
	LastError  string    `json:"last_error,omitempty"`
	Escalated  []string  `json:"escalated,omitempty"`
}

// selfFenceBackoffMax caps the retry interval, which is also how often a
// failing self-fence is reported again.
const selfFenceBackoffMax = 5 * time.Second

// fencer makes a self-fence hold. The role loop's first attempt (the
// actor's isolate) is the fast path; when it fails, the fencer retries in
// a goroutine of its own, with backoff, escalating after
// self_fence.escalate_after, until the node is verifiably not writable or
// the node leaves the fenced role. Its lock guards only the status.
type fencer struct {
	node    NodeConfig
	act     *actor
	cfg     func() *ClusterConfig
	events  *EventLog
	metrics *Metrics

	mu     sync.Mutex
	st     *SelfFenceStatus
	cancel context.CancelFunc
	done   chan struct{}
}

// begin records the outcome of the role loop's attempt and, unless the
// fence holds, starts retrying until ctx ends or stop is called.
func (f *fencer) begin(ctx context.Context, reason string, fenceErr error) {
	f.stop()
	now := time.Now()
	st := &SelfFenceStatus{Since: now, Attempts: 1}
	holding, how, err := f.verify(fenceErr)
	f.metrics.selfFenceAttempts.WithLabelValues(result(err)).Inc()
	if holding {
		st.Holding, st.VerifiedBy = true, how
		f.set(st)
		return
	}
	st.LastError = err.Error()
	f.set(st)
	f.events.Warn(EventFence, fmt.Sprintf("SELF-FENCE NOT HOLDING: %v; retrying with backoff, escalating after %s", err, f.cfg().SelfFence.EscalateAfter))
	// Shutdown or a crash (ctx ending) stops the retries too; Run waits
	// for them through stop.
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	f.mu.Lock()
	f.cancel, f.done = cancel, done
	f.mu.Unlock()
	go func() {
		defer close(done)
		f.retry(rctx, reason, st.Since)
	}()
}

// stop ends the retries and forgets the status: the node left the fenced
// role, after which the database is the writer's supervisor's business.
func (f *fencer) stop() {
	f.mu.Lock()
	cancel, done, st := f.cancel, f.done, f.st
	f.cancel, f.done, f.st = nil, nil, nil
	f.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
		if st != nil && !st.Holding {
			f.events.Warn(EventFence, fmt.Sprintf("self-fence retries ended after %d attempts without verifying the database read-only: the node left the fenced role", st.Attempts))
		}
	}
	f.metrics.selfFenceFailing.Set(0)
}

func (f *fencer) status() *SelfFenceStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.st == nil {
		return nil
	}
	c := *f.st
	c.Escalated = append([]string(nil), f.st.Escalated...)
	return &c
}

func (f *fencer) set(st *SelfFenceStatus) {
	f.mu.Lock()
	f.st = st
	f.mu.Unlock()
	f.metrics.selfFenceFailing.Set(b2f(!st.Holding))
}

func (f *fencer) update(fn func(st *SelfFenceStatus)) {
	f.mu.Lock()
	if f.st != nil {
		fn(f.st)
	}
	holding := f.st != nil && f.st.Holding
	f.mu.Unlock()
	f.metrics.selfFenceFailing.Set(b2f(!holding))
}

func (f *fencer) retry(ctx context.Context, reason string, since time.Time) {
	cfg := f.cfg()
	backoff := max(cfg.Keepalive, 50*time.Millisecond)
	for attempt := 2; ; attempt++ {
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		cfg = f.cfg()
		escalate := time.Since(since) >= cfg.SelfFence.EscalateAfter
		var steps []string
		if f.act.holding() {
			// Drop the VIP and the rest of the group again.
			f.act.release(ctx, "self-fence retry", "self-fence retry")
		}
		fenceErr := f.act.fenceDB(ctx, reason, cfg.Deadtime)
		if fenceErr != nil && escalate {
			steps, fenceErr = f.escalate(ctx, reason, cfg, fenceErr)
		}
		holding, how, err := f.verify(fenceErr)
		f.metrics.selfFenceAttempts.WithLabelValues(result(err)).Inc()
		f.update(func(st *SelfFenceStatus) {
			st.Attempts = attempt
			for _, s := range steps {
				if !containsPrefix(st.Escalated, s) {
					st.Escalated = append(st.Escalated, s)
				}
			}
			if holding {
				st.Holding, st.VerifiedBy, st.LastError = true, how, ""
			} else {
				st.LastError = err.Error()
			}
		})
		if holding {
			f.events.Warn(EventFence, fmt.Sprintf("self-fence holds after %d attempts in %s: %s", attempt, since2(since), how))
			return
		}
		if ctx.Err() != nil {
			return
		}
		backoff = min(2*backoff, selfFenceBackoffMax)
		f.events.Warn(EventFence, fmt.Sprintf("SELF-FENCE NOT HOLDING after %d attempts in %s: %v; retrying in %s", attempt, since2(since), err, backoff))
	}
}

// escalate kills the database's client sessions and retries read_only;
// failing that, it stops the database with self_fence.stop_database. It
// returns the steps taken and the remaining failure (nil: not writable).
func (f *fencer) escalate(ctx context.Context, reason string, cfg *ClusterConfig, fenceErr error) ([]string, error) {
	var steps []string
	if k, ok := f.act.db.(ClientKiller); ok && f.act.dbName != "" {
		kctx, cancel := context.WithTimeout(ctx, cfg.Deadtime)
		n, err := k.KillClientSessions(kctx, f.act.dbName)
		cancel()
		if err != nil {
			steps = append(steps, fmt.Sprintf("kill client sessions: %v", err))
		} else {
			steps = append(steps, fmt.Sprintf("killed %d client sessions", n))
			if fenceErr = f.act.fenceDB(ctx, reason, cfg.Deadtime); fenceErr == nil {
				return steps, nil
			}
		}
	}
	script := cfg.SelfFence.StopDatabase
	if script == "" {
		return steps, fenceErr
	}
	vars := nodeVars(f.node)
	vars["LOCKSTEP_REASON"] = "self-fence: " + reason
	e := NewExec(script, cfg.SelfFence.Timeout).withVars(vars)
	if err := e.Stop(ctx); err != nil {
		steps = append(steps, fmt.Sprintf("stop database: %v", err))
		return steps, errors.Join(fenceErr, err)
	}
	running, err := e.Running(ctx)
	switch {
	case err != nil:
		steps = append(steps, fmt.Sprintf("stop database: status unknown after stop: %v", err))
		return steps, errors.Join(fenceErr, err)
	case running:
		steps = append(steps, "stop database: still running after stop")
		return steps, errors.Join(fenceErr, fmt.Errorf("%s status says running after stop", script))
	}
	steps = append(steps, "stopped the database with "+script)
	return steps, nil
}

// verify: not writable once the database fence holds (or there is no
// database) and nothing is held.
func (f *fencer) verify(fenceErr error) (bool, string, error) {
	var errs []error
	if fenceErr != nil {
		errs = append(errs, fenceErr)
	}
	if held := f.act.held(); len(held) > 0 {
		errs = append(errs, fmt.Errorf("resources still held: %s", strings.Join(held, ", ")))
	}
	if err := errors.Join(errs...); err != nil {
		return false, "", err
	}
	switch {
	case f.act.db == nil || f.act.dbName == "":
		return true, "no database; resources released", nil
	default:
		return true, fmt.Sprintf("database %s acknowledged read_only or was stopped; resources released", f.act.dbName), nil
	}
}

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

func containsPrefix(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func since2(t time.Time) string { return time.Since(t).Round(time.Millisecond).String() }
