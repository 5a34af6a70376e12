package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Resource states as shown in /status.
const (
	ResourceStopped  = "stopped"
	ResourceStarting = "starting"
	ResourceStarted  = "started"
	ResourceStopping = "stopping"
	ResourceFailed   = "failed"
)

// Resource is one thing the writer holds (an address, a service).
// Stop must be idempotent: stopping a stopped resource succeeds.
type Resource interface {
	Name() string
	Kind() string
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
	// Running reports whether the resource is currently held/running.
	Running(ctx context.Context) (bool, error)
}

// NewResources builds the configured resources in order.
func NewResources(cfgs []ResourceConfig, logger *slog.Logger) ([]Resource, error) {
	out := make([]Resource, 0, len(cfgs))
	for i, c := range cfgs {
		switch {
		case c.IPAddr != "":
			r, err := NewIPAddr(c.IPAddr, c.Dev, c.Timeout, logger)
			if err != nil {
				return nil, fmt.Errorf("resources[%d]: %w", i, err)
			}
			out = append(out, withMonitor(r, c))
		case c.Exec != "":
			if err := checkScript(c.Exec); err != nil {
				return nil, fmt.Errorf("resources[%d].exec: %w", i, err)
			}
			out = append(out, withMonitor(NewExec(c.Exec, c.Timeout), c))
		default:
			return nil, fmt.Errorf("resources[%d]: one of ipaddr or exec is required", i)
		}
	}
	return out, nil
}

// ResourceStatus is one resource in /status.
type ResourceStatus struct {
	Name      string    `json:"name"`
	Kind      string    `json:"kind"`
	State     string    `json:"state"`
	LastError string    `json:"last_error,omitempty"`
	Changed   time.Time `json:"changed,omitempty"`
	// Monitoring (monitor.go): the check interval ("" = not monitored),
	// restarts within restart_window, and the failure that keeps this
	// node from the writer role.
	Monitor  string           `json:"monitor,omitempty"`
	Restarts int              `json:"restarts"`
	Failure  *ResourceFailure `json:"failure,omitempty"`
	// Unreleased: its stop failed (non-zero exit, timeout), so it may
	// still be running or configured here. The node keeps announcing it
	// to its peers, which do not take over until a retried stop succeeds
	// (releaseRetry in release.go).
	Unreleased bool `json:"unreleased,omitempty"`
}

// Group is the ordered resource group: started left to right, stopped
// right to left, all or nothing.
type Group struct {
	resources []Resource
	events    *EventLog
	metrics   *Metrics

	mu     sync.Mutex
	status []ResourceStatus
}

// NewGroup wraps resources; events and metrics receive every action.
func NewGroup(resources []Resource, events *EventLog, metrics *Metrics) *Group {
	g := &Group{resources: resources, events: events, metrics: metrics}
	for _, r := range resources {
		g.status = append(g.status, ResourceStatus{Name: r.Name(), Kind: r.Kind(), State: ResourceStopped})
	}
	return g
}

// Status returns a snapshot of each resource's state, in start order.
func (g *Group) Status() []ResourceStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]ResourceStatus(nil), g.status...)
}

// Held lists the names of resources that are, or may still be, held:
// started, being stopped, or whose stop failed.
func (g *Group) Held() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, s := range g.status {
		if s.State == ResourceStarted || s.State == ResourceStopping || s.Unreleased {
			out = append(out, s.Name)
		}
	}
	return out
}

// Unreleased lists, in start order, the resources whose last stop
// failed: they may still be up, so the release is incomplete.
func (g *Group) Unreleased() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, s := range g.status {
		if s.Unreleased {
			out = append(out, s.Name)
		}
	}
	return out
}

// Holding reports whether any resource is (possibly) held.
func (g *Group) Holding() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, s := range g.status {
		if s.State != ResourceStopped {
			return true
		}
	}
	return false
}

func (g *Group) set(i int, state string, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.status[i].State = state
	g.status[i].Changed = time.Now()
	// Only a successful stop or start settles what a failed stop left
	// behind; stopFrom marks a failed stop after calling set.
	if state == ResourceStarted || state == ResourceStopped {
		g.status[i].Unreleased = false
	}
	if err != nil {
		g.status[i].LastError = err.Error()
	} else if state == ResourceStarted || state == ResourceStopped {
		g.status[i].LastError = ""
	}
}

// Acquire starts every resource left to right. When one fails, the ones
// already started (and the failed one, whose stop is idempotent) are
// stopped right to left and the start error is returned.
func (g *Group) Acquire(ctx context.Context, reason string) error {
	for i, r := range g.resources {
		g.set(i, ResourceStarting, nil)
		start := time.Now()
		err := r.Start(ctx)
		if err != nil {
			g.set(i, ResourceFailed, err)
			g.metrics.resourceActions.WithLabelValues(r.Name(), "start", "error").Inc()
			g.events.Warn(EventResource, fmt.Sprintf("start %s failed after %s: %v; releasing the group", r.Name(), since(start), err),
				"resource", r.Name())
			g.stopFrom(context.WithoutCancel(ctx), i, fmt.Sprintf("start of %s failed", r.Name()), true)
			return fmt.Errorf("start %s: %w", r.Name(), err)
		}
		g.set(i, ResourceStarted, nil)
		g.metrics.resourceActions.WithLabelValues(r.Name(), "start", "ok").Inc()
		g.events.Add(EventResource, fmt.Sprintf("started %s in %s (%s)", r.Name(), since(start), reason), "resource", r.Name())
	}
	return nil
}

// Release stops every resource right to left. All are attempted even when
// one fails; the errors are joined.
func (g *Group) Release(ctx context.Context, reason string) error {
	return g.stopFrom(ctx, len(g.resources)-1, reason, false)
}

func (g *Group) stopFrom(ctx context.Context, last int, reason string, keepFailed bool) error {
	var errs []error
	for i := last; i >= 0; i-- {
		r := g.resources[i]
		prev := g.Status()[i].State
		g.set(i, ResourceStopping, nil)
		start := time.Now()
		if err := r.Stop(ctx); err != nil {
			g.stopFailed(i, err, start)
			errs = append(errs, fmt.Errorf("stop %s: %w", r.Name(), err))
			continue
		}
		if keepFailed && prev == ResourceFailed {
			// Keep the start failure visible in /status.
			g.mu.Lock()
			g.status[i].State = ResourceFailed
			g.status[i].Unreleased = false
			g.mu.Unlock()
		} else {
			g.set(i, ResourceStopped, nil)
		}
		g.metrics.resourceActions.WithLabelValues(r.Name(), "stop", "ok").Inc()
		g.events.Add(EventResource, fmt.Sprintf("stopped %s in %s (%s)", r.Name(), since(start), reason), "resource", r.Name())
	}
	return errors.Join(errs...)
}

// stopFailed records that resource i's stop failed: it may still be up.
func (g *Group) stopFailed(i int, err error, start time.Time) {
	r := g.resources[i]
	g.set(i, ResourceFailed, err)
	g.mu.Lock()
	g.status[i].Unreleased = true
	g.mu.Unlock()
	g.metrics.resourceActions.WithLabelValues(r.Name(), "stop", "error").Inc()
	g.events.Warn(EventResource, fmt.Sprintf("stop %s failed after %s: %v; it may still be up: not released", r.Name(), since(start), err), "resource", r.Name())
}

// RetryRelease stops again, right to left, the resources whose stop
// failed, and only those: the others are stopped already (or were never
// started) and stopping them again would only add noise.
func (g *Group) RetryRelease(ctx context.Context, reason string) error {
	var errs []error
	st := g.Status()
	for i := len(g.resources) - 1; i >= 0; i-- {
		if !st[i].Unreleased {
			continue
		}
		r := g.resources[i]
		// set keeps Unreleased: it is still possibly up until Stop returns.
		g.set(i, ResourceStopping, nil)
		start := time.Now()
		if err := r.Stop(ctx); err != nil {
			g.stopFailed(i, err, start)
			errs = append(errs, fmt.Errorf("stop %s: %w", r.Name(), err))
			continue
		}
		g.set(i, ResourceStopped, nil)
		g.metrics.resourceActions.WithLabelValues(r.Name(), "stop", "ok").Inc()
		g.events.Add(EventResource, fmt.Sprintf("stopped %s in %s (%s)", r.Name(), since(start), reason), "resource", r.Name())
	}
	return errors.Join(errs...)
}

// ReleaseLeftovers stops, right to left, resources found running although
// this daemon did not start them (left by a crashed previous run).
func (g *Group) ReleaseLeftovers(ctx context.Context) error {
	running := -1
	for i, r := range g.resources {
		ok, err := r.Running(ctx)
		if err != nil {
			g.events.Warn(EventResource, fmt.Sprintf("status of %s unknown at startup: %v; stopping it to be safe", r.Name(), err), "resource", r.Name())
			running = i
			continue
		}
		if ok {
			g.events.Warn(EventResource, fmt.Sprintf("%s is running although this node does not hold the writer role (left by a previous run)", r.Name()), "resource", r.Name())
			running = i
		}
	}
	if running < 0 {
		return nil
	}
	return g.stopFrom(ctx, running, "startup cleanup", false)
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }

// checkScript catches a typo'd or non-executable LSB script when the
// daemon starts rather than at the first failover. (`lockstep check` only
// checks the path's form, so a config can be checked on another machine.)
func checkScript(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}
