package orchestrator

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// actor carries out what the role loop decided: it starts the resource
// group left to right, releases it right to left, and fences or unfences
// our database. It keeps no role state; the role loop calls it and waits,
// so its actions never overlap.
type actor struct {
	db     Database // nil: no database
	dbName string   // our node's database in the pair ("" = none)
	events *EventLog

	// group is read by Status and the heartbeat sender while the role
	// loop acts on it; only the role loop replaces it.
	group atomic.Pointer[Group]
	// next is a resource list from Reload, swapped in by the role loop
	// when the current group is not held.
	mu   sync.Mutex
	next *pendingGroup
	// mon watches the held group; only the role loop starts and stops it.
	mon *monitorSet
}

type pendingGroup struct {
	g *Group
	// deferred: Reload found the old group held and said the new list
	// waits for its release; say when it happens.
	deferred bool
}

func newActor(db Database, dbName string, g *Group, events *EventLog) *actor {
	a := &actor{db: db, dbName: dbName, events: events}
	a.group.Store(g)
	return a
}

func (a *actor) held() []string              { return a.group.Load().Held() }
func (a *actor) holding() bool               { return a.group.Load().Holding() }
func (a *actor) resources() []ResourceStatus { return a.group.Load().Status() }
func (a *actor) unreleased() []string        { return a.group.Load().Unreleased() }

// replace queues g as the resource group; it reports whether the current
// one is held, in which case g applies after its release.
func (a *actor) replace(g *Group) (deferred bool) {
	deferred = a.holding()
	a.mu.Lock()
	a.next = &pendingGroup{g: g, deferred: deferred}
	a.mu.Unlock()
	return deferred
}

// swapPending installs a queued group once the current one is released.
func (a *actor) swapPending() {
	if a.holding() {
		return
	}
	a.mu.Lock()
	next := a.next
	a.next = nil
	a.mu.Unlock()
	if next == nil {
		return
	}
	a.group.Store(next.g)
	if next.deferred {
		a.events.Add(EventReload, "new resource list applied now that the old one is released")
	}
}

func (a *actor) releaseLeftovers(ctx context.Context) {
	if err := a.group.Load().ReleaseLeftovers(ctx); err != nil {
		a.events.Warn(EventResource, fmt.Sprintf("startup cleanup: %v", err))
	}
}

func (a *actor) acquire(ctx context.Context, reason string) error {
	return a.group.Load().Acquire(ctx, reason)
}

// startMonitors watches the held group until it is released or ctx ends.
func (a *actor) startMonitors(ctx context.Context) { a.mon.start(ctx, a.group.Load(), 0) }

func (a *actor) stopMonitors() { a.mon.stop(0) }

// release stops the group right to left even when ctx has ended: a
// shutdown must not leave an address or a service behind. why names the
// occasion in the event of an incomplete release.
func (a *actor) release(ctx context.Context, reason, why string) {
	a.stopMonitors()
	if err := a.group.Load().Release(context.WithoutCancel(ctx), reason); err != nil {
		a.events.Warn(EventResource, fmt.Sprintf("%s: release incomplete: %v; the resources that did not stop stay announced to peers until a retried stop succeeds", why, err))
	}
}

// isolate makes our database read-only while it releases the resources,
// both at once so that the fence is in place as early as possible. It
// returns why the database fence was not set (nil: set, or no database);
// the fencer retries and escalates from there.
func (a *actor) isolate(ctx context.Context, reason string, timeout time.Duration) (fenceErr error) {
	var wg sync.WaitGroup
	wg.Go(func() { fenceErr = a.fenceDB(ctx, reason, timeout) })
	if a.holding() {
		a.release(ctx, "self-fence", "self-fence")
	}
	wg.Wait()
	return fenceErr
}

// fenceDB sets our own self-fence of the database, bounded by timeout
// even when ctx has ended (a shutdown must not skip it).
func (a *actor) fenceDB(ctx context.Context, reason string, timeout time.Duration) error {
	if a.db == nil || a.dbName == "" {
		return nil
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	if err := a.db.Fence(fctx, a.dbName, selfFencePrefix+reason); err != nil {
		a.events.Warn(EventFence, fmt.Sprintf("could not fence database %s: %v", a.dbName, err), "db", a.dbName)
		return fmt.Errorf("database %s not fenced: %w", a.dbName, err)
	}
	a.events.Warn(EventFence, fmt.Sprintf("database %s fenced (read-only): %s", a.dbName, reason), "db", a.dbName)
	return nil
}

// unfence lifts our own self-fence of the database; the replication
// supervisor fences it again while it is behind.
func (a *actor) unfence(ctx context.Context, timeout time.Duration) {
	if a.db == nil || a.dbName == "" {
		return
	}
	uctx, cancel := context.WithTimeout(ctx, max(timeout, time.Second))
	defer cancel()
	if err := a.db.Unfence(uctx, a.dbName); err != nil {
		a.events.Warn(EventFence, fmt.Sprintf("could not lift our self-fence of database %s: %v", a.dbName, err), "db", a.dbName)
		return
	}
	a.events.Add(EventFence, fmt.Sprintf("lifted our self-fence of database %s; the replication supervisor fences it again while it is behind", a.dbName), "db", a.dbName)
}
