package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Resource monitoring, in the manner of Pacemaker's monitor operation
// with migration-threshold and failure-timeout:
//
//   - While the group is held, one goroutine per resource checks it every
//     monitor_interval (exec: the LSB status action; ipaddr: the address
//     on its device and the link up). A failed check is handed to the role
//     loop, which alone acts on resources, so a recovery never overlaps a
//     role change.
//   - A vanished address is added again at once with a gratuitous ARP.
//   - Any other failure restarts the resource in place, together with the
//     resources after it (they may depend on it): stopped right to left,
//     started left to right, at most max_restarts times within
//     restart_window.
//   - Past that, or when the restart fails or the failure cannot be fixed
//     here (interface down or gone), the node records the failure; decide
//     sees the record as ineligibility and hands the writer role to an
//     eligible peer, which takes over under the usual data-aware rules
//     (with none, the node keeps the role, draining). It does not take
//     the role back until `lockstep clear`, failure_timeout, or — for a
//     link that was down — the link coming back.
//   - A restart runs on the role loop, so it is cut short when the node
//     becomes isolated: the self-fence must not wait for a start script.

// Monitoring defaults.
const (
	DefaultMonitorInterval = 2 * time.Second
	DefaultMonitorTimeout  = 5 * time.Second
	DefaultMaxRestarts     = 3
	DefaultRestartWindow   = 5 * time.Minute
	DefaultFailureTimeout  = 10 * time.Minute
)

func (r *ResourceConfig) setMonitorDefaults() {
	if r.MonitorInterval == 0 {
		r.MonitorInterval = DefaultMonitorInterval
	}
	if r.MonitorTimeout == 0 {
		r.MonitorTimeout = DefaultMonitorTimeout
	}
	if r.MaxRestarts == nil {
		n := DefaultMaxRestarts
		r.MaxRestarts = &n
	}
	if r.RestartWindow == 0 {
		r.RestartWindow = DefaultRestartWindow
	}
	if r.FailureTimeout == 0 {
		r.FailureTimeout = DefaultFailureTimeout
	}
}

func (r *ResourceConfig) validateMonitor(prefix string) []error {
	var errs []error
	// Checks more often than this cost a fork per resource several times
	// a second and cannot fail over faster than the role loop decides.
	if r.MonitorInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("%smonitor_interval: %s must be at least 100ms", prefix, r.MonitorInterval))
	}
	if r.MonitorTimeout < 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("%smonitor_timeout: %s must be at least 10ms", prefix, r.MonitorTimeout))
	}
	if r.MaxRestarts != nil && *r.MaxRestarts < 0 {
		errs = append(errs, fmt.Errorf("%smax_restarts: %d must not be negative (0 = fail over without restarting)", prefix, *r.MaxRestarts))
	}
	if r.RestartWindow < 0 {
		errs = append(errs, fmt.Errorf("%srestart_window: must not be negative", prefix))
	}
	if r.FailureTimeout < 0 {
		errs = append(errs, fmt.Errorf("%sfailure_timeout: must not be negative", prefix))
	}
	return errs
}

// monitorSpec is a held resource's check and recovery policy.
type monitorSpec struct {
	interval, timeout time.Duration
	maxRestarts       int
	restartWindow     time.Duration
	failureTimeout    time.Duration
}

func specFrom(c ResourceConfig) monitorSpec {
	c.setMonitorDefaults()
	return monitorSpec{interval: c.MonitorInterval, timeout: c.MonitorTimeout, maxRestarts: *c.MaxRestarts,
		restartWindow: c.RestartWindow, failureTimeout: c.FailureTimeout}
}

// monitored is a configured resource with its health check. Resources
// built without one (tests' fakes) are held but not watched.
type monitored struct {
	Resource
	spec  monitorSpec
	check func(ctx context.Context) *checkFailure
}

func withMonitor(r Resource, c ResourceConfig) Resource {
	m := &monitored{Resource: r, spec: specFrom(c)}
	switch x := r.(type) {
	case *Exec:
		m.check = x.monitor
	case *IPAddr:
		m.check = x.monitor
	default:
		return r
	}
	return m
}

// recovery is what a failed check calls for.
type recovery int

const (
	recoverRestart recovery = iota // stop and start in place, with what follows it
	recoverReadd                   // start it again alone: the address vanished
	recoverNone                    // nothing to do here: give up the writer role
)

type checkFailure struct {
	how recovery
	err error
	// gone, when set, reports that the cause went away by itself (a link
	// back up): the failure is then lifted without `lockstep clear`, as
	// keepalived's track_interface does.
	gone func() bool
}

// monitor maps LSB status: 0 running, 3 not running; any other code, a
// timeout or a failure to run it is a failed resource. Both call for a
// restart (stop first, so leftovers of a half-dead service go).
func (e *Exec) monitor(ctx context.Context) *checkFailure {
	ok, err := e.Running(ctx)
	switch {
	case err != nil:
		return &checkFailure{how: recoverRestart, err: err}
	case !ok:
		return &checkFailure{how: recoverRestart, err: fmt.Errorf("%s status exited 3 (not running)", e.script)}
	}
	return nil
}

// monitor: an address on a link that is down serves nobody and adding it
// again does not help, so that is a failure to hand over; an address
// removed by hand (ip addr flush, a network manager) is added back.
func (a *IPAddr) monitor(ctx context.Context) *checkFailure {
	if err := a.linkDown(); err != nil {
		return &checkFailure{how: recoverNone, err: err, gone: func() bool { return a.linkDown() == nil }}
	}
	present, err := a.Running(ctx)
	if err != nil {
		return &checkFailure{how: recoverReadd, err: err}
	}
	if !present {
		return &checkFailure{how: recoverReadd, err: fmt.Errorf("address %s vanished from %s", a.prefix, a.dev)}
	}
	return nil
}

// linkDown says why the address's interface cannot carry it, nil when it
// is up with a carrier.
func (a *IPAddr) linkDown() error {
	l, err := a.link()
	if err != nil {
		return err
	}
	attrs := l.Attrs()
	switch {
	case attrs.Flags&net.FlagUp == 0:
		return fmt.Errorf("interface %s is administratively down", a.dev)
	case attrs.OperState == netlink.OperDown || attrs.OperState == netlink.OperLowerLayerDown || attrs.OperState == netlink.OperNotPresent:
		return fmt.Errorf("interface %s link is %s", a.dev, attrs.OperState)
	}
	return nil
}

// monitorFailure is a failed check reported to the role loop. gen tells a
// report of the current monitor run from a stale one (the resource was
// restarted or released since).
type monitorFailure struct {
	idx int
	gen uint64
	*checkFailure
}

// monitorSet runs the monitors of the held group. Only the role loop
// starts and stops them (through the actor); they report on failures.
type monitorSet struct {
	failures chan monitorFailure
	runs     map[int]*monitorRun
	gen      uint64
	pending  map[int]monitorFailure
	// retired: runs that reported and are winding down; the recovery
	// does not wait for them, stop does.
	retired []chan struct{}
	// gaveUp: resources whose failure this node recorded while keeping
	// the writer role (no eligible peer); restarted once it is lifted, or
	// by a retry when retryAt comes (retryKept).
	gaveUp       map[int]bool
	retryAt      map[int]time.Time
	retryBackoff map[int]time.Duration
}

type monitorRun struct {
	gen    uint64
	cancel context.CancelFunc
	done   chan struct{}
}

func newMonitorSet() *monitorSet {
	return &monitorSet{failures: make(chan monitorFailure, 16), runs: map[int]*monitorRun{}, pending: map[int]monitorFailure{}, gaveUp: map[int]bool{},
		retryAt: map[int]time.Time{}, retryBackoff: map[int]time.Duration{}}
}

// start runs the monitors of g's resources from index from on, under ctx.
func (s *monitorSet) start(ctx context.Context, g *Group, from int) {
	for i := from; i < len(g.resources); i++ {
		m, ok := g.resources[i].(*monitored)
		if !ok || s.runs[i] != nil {
			continue
		}
		s.gen++
		mctx, cancel := context.WithCancel(ctx)
		run := &monitorRun{gen: s.gen, cancel: cancel, done: make(chan struct{})}
		s.runs[i] = run
		go func() {
			defer close(run.done)
			s.watch(mctx, i, run.gen, m)
		}()
	}
}

// stop ends the monitors from index from on and waits for them (and,
// when stopping all, for the retired ones).
func (s *monitorSet) stop(from int) {
	for i, run := range s.runs {
		if i < from {
			continue
		}
		run.cancel()
		<-run.done
		delete(s.runs, i)
		delete(s.pending, i)
	}
	if from == 0 {
		for _, done := range s.retired {
			<-done
		}
		s.retired = nil
		clear(s.gaveUp)
		clear(s.retryAt)
		clear(s.retryBackoff)
	}
}

// watch checks m every interval until a check fails, which it reports
// and returns: the role loop starts a new run after the recovery. An
// address is also checked at once whenever the kernel reports an address
// or link change, so a flushed VIP is back within milliseconds rather
// than an interval.
func (s *monitorSet) watch(ctx context.Context, idx int, gen uint64, m *monitored) {
	t := time.NewTimer(m.spec.interval)
	defer t.Stop()
	var changed chan struct{}
	if _, ok := m.Resource.(*IPAddr); ok {
		changed = make(chan struct{}, 1)
		wctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			// Without events the interval still catches everything.
			_ = watchAddrEvents(wctx, changed)
		}()
		defer func() { stop(); <-done }()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changed:
		}
		cctx, cancel := context.WithTimeout(ctx, m.spec.timeout)
		f := m.check(cctx)
		cancel()
		if ctx.Err() != nil {
			return // released meanwhile: the check's verdict is moot
		}
		if f != nil {
			select {
			case s.failures <- monitorFailure{idx: idx, gen: gen, checkFailure: f}:
			case <-ctx.Done():
			}
			return
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(m.spec.interval)
	}
}

// watchAddrEvents signals changed (without blocking) on every address or
// link notification of the kernel, until ctx ends. The socket goes
// through Go's poller, so ctx ends the read at once: a release waits for
// this goroutine, and the self-fence's timing budget has no room for a
// polling interval.
func watchAddrEvents(ctx context.Context, changed chan<- struct{}) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	sa := &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK | unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return err
	}
	f := os.NewFile(uintptr(fd), "netlink-route")
	defer f.Close()
	defer context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Now()) })()
	buf := make([]byte, 32<<10)
	for {
		_, err := f.Read(buf)
		if ctx.Err() != nil {
			return nil
		}
		// ENOBUFS: notifications were lost; checking is the answer.
		if err != nil && !errors.Is(err, unix.ENOBUFS) {
			return err
		}
		select {
		case changed <- struct{}{}:
		default:
		}
	}
}

// next returns the failure to handle now: the current runs' reports, the
// first resource in start order first (restarting it restarts the ones
// after it anyway).
func (s *monitorSet) next() (monitorFailure, bool) {
	for {
		select {
		case f := <-s.failures:
			if run := s.runs[f.idx]; run != nil && run.gen == f.gen {
				s.pending[f.idx] = f
			}
			continue
		default:
		}
		break
	}
	if len(s.pending) == 0 {
		return monitorFailure{}, false
	}
	idx := slices.Min(mapKeys(s.pending))
	f := s.pending[idx]
	delete(s.pending, idx)
	// The run that reported is done checking; forget it so that start
	// runs a new one.
	run := s.runs[idx]
	run.cancel()
	s.retired = slices.DeleteFunc(s.retired, func(done chan struct{}) bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	})
	s.retired = append(s.retired, run.done)
	delete(s.runs, idx)
	return f, true
}

func mapKeys[V any](m map[int]V) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// resourceHealth is what the monitors and the operator have said about
// this node's resources: restarts within their window and the failures
// that make it ineligible. The role loop writes it; `lockstep clear` (via
// HTTP) and Status read or clear it, hence the lock.
type resourceHealth struct {
	mu         sync.Mutex
	restarts   map[string][]time.Time
	failed     map[string]ResourceFailure
	recovering string
	// store, when set, keeps failed and restarts across daemon restarts
	// (failstore.go); warn reports a failure to write it.
	store *failureStore
	warn  func(string)
}

// ResourceFailure is a resource this node gave up the writer role for, in
// /status. Until Expires (or `lockstep clear`) the node is not eligible.
type ResourceFailure struct {
	Resource string    `json:"resource"`
	Reason   string    `json:"reason"`
	Since    time.Time `json:"since"`
	Expires  time.Time `json:"expires,omitzero"` // zero: only `lockstep clear` lifts it
	// UntilRecovered: lifted as soon as the cause is gone (a link back
	// up), not only by clear or expiry.
	UntilRecovered bool `json:"until_recovered,omitempty"`
	gone           func() bool
}

func newResourceHealth() *resourceHealth {
	return &resourceHealth{restarts: map[string][]time.Time{}, failed: map[string]ResourceFailure{}}
}

// allowRestart counts a restart of name unless max restarts happened
// within window; it returns the restarts within the window, this one
// included.
func (h *resourceHealth) allowRestart(name string, now time.Time, spec monitorSpec) (int, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	kept := h.restarts[name][:0]
	for _, t := range h.restarts[name] {
		if now.Sub(t) < spec.restartWindow {
			kept = append(kept, t)
		}
	}
	h.restarts[name] = kept
	if len(kept) >= spec.maxRestarts {
		return len(kept), false
	}
	h.restarts[name] = append(kept, now)
	h.persistLocked()
	return len(kept) + 1, true
}

func (h *resourceHealth) restartCount(name string, window time.Duration, now time.Time) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, t := range h.restarts[name] {
		if now.Sub(t) < window {
			n++
		}
	}
	return n
}

func (h *resourceHealth) fail(name, reason string, now time.Time, timeout time.Duration, gone func() bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := ResourceFailure{Resource: name, Reason: reason, Since: now, UntilRecovered: gone != nil, gone: gone}
	if timeout > 0 {
		f.Expires = now.Add(timeout)
	}
	h.failed[name] = f
	h.persistLocked()
}

// clear forgets the failure and the restarts of name ("" = all); it
// returns the resources whose failure it lifted.
func (h *resourceHealth) clear(name string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for n := range h.failed {
		if name == "" || n == name {
			out = append(out, n)
			delete(h.failed, n)
		}
	}
	for n := range h.restarts {
		if name == "" || n == name {
			delete(h.restarts, n)
		}
	}
	if len(out) > 0 {
		h.persistLocked()
	}
	sort.Strings(out)
	return out
}

// expire drops failures past their failure_timeout, and those whose
// cause went away, and returns them.
func (h *resourceHealth) expire(now time.Time) (expired, recovered []ResourceFailure) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for n, f := range h.failed {
		switch {
		case !f.Expires.IsZero() && !now.Before(f.Expires):
			expired = append(expired, f)
		case f.gone != nil && f.gone():
			recovered = append(recovered, f)
		default:
			continue
		}
		delete(h.failed, n)
		delete(h.restarts, n)
	}
	if len(expired)+len(recovered) > 0 {
		h.persistLocked()
	}
	return expired, recovered
}

func (h *resourceHealth) isFailed(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.failed[name]
	return ok
}

// untilRecovered: name's failure lifts by itself when its cause goes.
func (h *resourceHealth) untilRecovered(name string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.failed[name].UntilRecovered
}

func (h *resourceHealth) failures() []ResourceFailure {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]ResourceFailure, 0, len(h.failed))
	for _, f := range h.failed {
		out = append(out, f)
	}
	sortFailures(out)
	return out
}

func sortFailures(fs []ResourceFailure) {
	sort.Slice(fs, func(i, j int) bool { return fs[i].Resource < fs[j].Resource })
}

func (h *resourceHealth) setRecovering(what string) {
	h.mu.Lock()
	h.recovering = what
	h.mu.Unlock()
}

func (h *resourceHealth) recoveringNow() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.recovering
}

// failureReasons is the resource part of this node's ineligibility.
func failureReasons(fs []ResourceFailure) string {
	var parts []string
	for _, f := range fs {
		parts = append(parts, fmt.Sprintf("resource %s failed (%s); `lockstep clear %s` to lift", f.Resource, f.Reason, f.Resource))
	}
	return strings.Join(parts, "; ")
}

// monitorMetrics count what the monitors and tracks saw and did.
type monitorMetrics struct {
	failures  *prometheus.CounterVec
	restarts  *prometheus.CounterVec
	failovers *prometheus.CounterVec
	retries   *prometheus.CounterVec
	trackUp   *prometheus.GaugeVec
	eligible  prometheus.Gauge
}

func newMonitorMetrics(reg prometheus.Registerer) *monitorMetrics {
	m := &monitorMetrics{
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockstep_resource_monitor_failures_total", Help: "Failed monitor checks of a held resource.",
		}, []string{"resource"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockstep_resource_restarts_total", Help: "In-place recoveries of a resource: restarts, and addresses added again after they vanished.",
		}, []string{"resource"}),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockstep_resource_failovers_total", Help: "Times this node gave up the writer role because a resource could not be recovered in place.",
		}, []string{"resource"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockstep_resource_kept_retries_total", Help: "Restarts of a failed resource by a writer that kept the role for want of an eligible peer, by result.",
		}, []string{"resource", "result"}),
		trackUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockstep_track_up", Help: "1 while the tracked check passes (cluster.track).",
		}, []string{"track"}),
		eligible: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lockstep_eligible", Help: "0 while a resource failure or a failing track keeps this node from the writer role.",
		}),
	}
	reg.MustRegister(m.failures, m.restarts, m.failovers, m.retries, m.trackUp, m.eligible)
	m.eligible.Set(1)
	return m
}

// recoverResources handles one failed check of the held group, on the role
// loop: add a vanished address again, restart in place, or record the
// failure that makes decide give the writer role up.
func (rm *RoleManager) recoverResources(ctx context.Context) {
	if rm.state.role != RoleWriter || !rm.act.holding() {
		return
	}
	g := rm.act.group.Load()
	if rm.resumeCleared(ctx, g) {
		return
	}
	f, ok := rm.act.mon.next()
	if !ok {
		return
	}
	m := g.resources[f.idx].(*monitored)
	name := m.Name()
	rm.metrics.monitor.failures.WithLabelValues(name).Inc()
	now := time.Now()
	defer rm.health.setRecovering("")

	switch f.how {
	case recoverReadd:
		rm.health.setRecovering(fmt.Sprintf("adding %s again", name))
		err := g.startOne(ctx, f.idx, "monitor: address vanished")
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			rm.giveUp(m, f.idx, fmt.Sprintf("%v; adding it again failed: %v", f.err, err), now, nil)
			return
		}
		rm.metrics.monitor.restarts.WithLabelValues(name).Inc()
		rm.events.Warn(EventResource, fmt.Sprintf("monitor: %v; added again with gratuitous ARP in %s, role unchanged", f.err, since(now)), "resource", name)
		rm.act.mon.start(ctx, g, f.idx)
	case recoverRestart:
		n, ok := rm.health.allowRestart(name, now, m.spec)
		if !ok {
			rm.giveUp(m, f.idx, fmt.Sprintf("%v; restart limit reached (max_restarts %d within restart_window %s)", f.err, m.spec.maxRestarts, m.spec.restartWindow), now, nil)
			return
		}
		deps := ""
		if rest := g.names(f.idx + 1); len(rest) > 0 {
			deps = " and " + strings.Join(rest, ", ") + " after it"
		}
		rm.health.setRecovering(fmt.Sprintf("restarting %s%s", name, deps))
		rm.events.Warn(EventResource, fmt.Sprintf("monitor: %v; restarting it%s in place (restart %d of %d within %s)", f.err, deps, n, m.spec.maxRestarts, m.spec.restartWindow), "resource", name)
		rm.act.mon.stop(f.idx)
		isolated, err := rm.unlessIsolated(ctx, func(ctx context.Context) error {
			return g.restartFrom(ctx, f.idx, "monitor: restart of "+name)
		})
		if isolated {
			why := "this node is isolated and fences itself"
			if rm.arb != nil {
				why = "this node no longer holds the etcd election and leaves the writer role"
			}
			rm.events.Warn(EventResource, fmt.Sprintf("monitor: restart of %s interrupted: %s", name, why), "resource", name)
			return
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			rm.giveUp(m, f.idx, fmt.Sprintf("%v; restart failed: %v", f.err, err), now, nil)
			return
		}
		rm.metrics.monitor.restarts.WithLabelValues(name).Inc()
		rm.events.Add(EventResource, fmt.Sprintf("monitor: %s restarted in place in %s", name, since(now)), "resource", name)
		rm.act.mon.start(ctx, g, f.idx)
	default:
		rm.giveUp(m, f.idx, f.err.Error()+"; cannot be recovered in place", now, f.gone)
	}
}

var errIsolated = errors.New("isolated")

// unlessIsolated runs fn, a recovery on the role loop, with a context that
// ends as soon as this node is isolated (rule 1's condition; with an
// arbiter, A1's: see mustLeave): the loop
// decides nothing while fn runs, and a restart must not hold back the
// self-fence past deadtime. It reports whether isolation cut fn short;
// the decision right after it fences.
func (rm *RoleManager) unlessIsolated(ctx context.Context, fn func(context.Context) error) (isolated bool, err error) {
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		t := time.NewTicker(max(rm.cfg.Load().Keepalive/4, 10*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			if rm.mustLeave(time.Now()) {
				cancel(errIsolated)
				return
			}
		}
	}()
	err = fn(rctx)
	close(done)
	<-watched
	return errors.Is(context.Cause(rctx), errIsolated), err
}

// mustLeave is the condition under which a writer leaves the role at
// once, whatever a recovery is doing: isolation (rule 1) or, with an
// arbiter (which replaces rule 1), no longer holding the election with a
// lease valid beyond the demotion deadline (A1).
func (rm *RoleManager) mustLeave(now time.Time) bool {
	if rm.arb != nil {
		return !rm.arb.view(now).leader
	}
	return rm.obs.observe(now).isolated()
}

// giveUp records the failure; the decision that follows in the same
// evaluation sees this node ineligible and hands the writer role over to
// an eligible peer. Until then (or the failure is lifted) the resource
// and the ones after it are not watched: their state is known bad.
func (rm *RoleManager) giveUp(m *monitored, idx int, reason string, now time.Time, gone func() bool) {
	name := m.Name()
	mon := rm.act.mon
	mon.stop(idx)
	mon.gaveUp[idx] = true
	if mon.retryBackoff[idx] == 0 {
		mon.retryBackoff[idx] = keptRetryBase(m.spec)
	}
	mon.retryAt[idx] = now.Add(mon.retryBackoff[idx])
	rm.health.fail(name, reason, now, m.spec.failureTimeout, gone)
	rm.metrics.monitor.failovers.WithLabelValues(name).Inc()
	until := "until `lockstep clear " + name + "`"
	if gone != nil {
		until = "until it recovers, `lockstep clear " + name + "`"
	}
	if m.spec.failureTimeout > 0 {
		until += fmt.Sprintf(" or failure_timeout %s", m.spec.failureTimeout)
	}
	rm.events.Warn(EventResource, fmt.Sprintf("monitor: %s: %s; giving up the writer role (to an eligible peer, kept while there is none), not eligible %s", name, reason, until), "resource", name)
}

// resumeCleared restarts, from the resource this node gave up on, the
// group it still holds (no peer could take over) once the failure was
// cleared or expired. It reports whether it acted.
func (rm *RoleManager) resumeCleared(ctx context.Context, g *Group) bool {
	mon := rm.act.mon
	if len(mon.gaveUp) == 0 {
		return false
	}
	idx := slices.Min(mapKeys(mon.gaveUp))
	m := g.resources[idx].(*monitored)
	if rm.health.isFailed(m.Name()) {
		return rm.retryKept(ctx, g, idx, m)
	}
	delete(mon.gaveUp, idx)
	now := time.Now()
	defer rm.health.setRecovering("")
	rm.health.setRecovering(fmt.Sprintf("restarting %s after its failure was lifted", m.Name()))
	rm.events.Add(EventResource, fmt.Sprintf("failure of %s lifted while this node kept the writer role: restarting it and what follows it", m.Name()), "resource", m.Name())
	isolated, err := rm.unlessIsolated(ctx, func(ctx context.Context) error { return g.restartFrom(ctx, idx, "failure lifted") })
	if isolated || ctx.Err() != nil {
		return true
	}
	if err != nil {
		rm.giveUp(m, idx, fmt.Sprintf("restart after the failure was lifted failed: %v", err), now, nil)
		return true
	}
	rm.act.mon.start(ctx, g, idx)
	return true
}

// Retrying a resource the writer gave up on but kept (no eligible peer):
// waiting for `lockstep clear` or failure_timeout would leave the service
// down although nobody else can serve it, so, like Pacemaker retrying a
// resource that has nowhere else to go, the writer restarts it from time
// to time: first after keptRetryBase, then doubling to keptRetryMax.
const keptRetryMax = 5 * time.Minute

// keptRetryBase: ten checks, at least 2 s, so that a resource that
// fails at once is not restarted in a tight loop.
func keptRetryBase(spec monitorSpec) time.Duration {
	return min(max(10*spec.interval, 2*time.Second), keptRetryMax)
}

// retryKept restarts resource idx, which this writer gave up on and kept,
// when its retry is due; on success its failure is lifted (it works
// again) and it is watched again, on failure the next retry waits twice
// as long. A failure that lifts by itself (a link coming back) is not
// retried: restarting cannot fix it. It reports whether it acted.
func (rm *RoleManager) retryKept(ctx context.Context, g *Group, idx int, m *monitored) bool {
	mon := rm.act.mon
	name := m.Name()
	now := time.Now()
	if now.Before(mon.retryAt[idx]) || rm.health.untilRecovered(name) {
		return false
	}
	defer rm.health.setRecovering("")
	rm.health.setRecovering(fmt.Sprintf("retrying %s (no eligible peer to take the writer role)", name))
	isolated, err := rm.unlessIsolated(ctx, func(ctx context.Context) error { return g.restartFrom(ctx, idx, "retry: no eligible peer") })
	if isolated || ctx.Err() != nil {
		return true
	}
	if err != nil {
		mon.retryBackoff[idx] = min(2*mon.retryBackoff[idx], keptRetryMax)
		mon.retryAt[idx] = time.Now().Add(mon.retryBackoff[idx])
		rm.metrics.monitor.retries.WithLabelValues(name, "error").Inc()
		rm.events.Warn(EventResource, fmt.Sprintf("retry of %s failed: %v; still not eligible, keeping the writer role (no eligible peer); next retry in %s", name, err, mon.retryBackoff[idx]), "resource", name)
		return true
	}
	delete(mon.gaveUp, idx)
	delete(mon.retryAt, idx)
	delete(mon.retryBackoff, idx)
	rm.health.clear(name)
	rm.metrics.monitor.retries.WithLabelValues(name, "ok").Inc()
	rm.events.Add(EventResource, fmt.Sprintf("%s recovered by a retry in %s while no peer could take the writer role: failure lifted, watched again", name, since(now)), "resource", name)
	rm.act.mon.start(ctx, g, idx)
	return true
}

// ClearFailure lifts the recorded failure of resource name ("" = every
// resource) and resets its restart count, as Pacemaker's cleanup does.
func (rm *RoleManager) ClearFailure(name string) ([]string, error) {
	cleared := rm.health.clear(name)
	if len(cleared) == 0 {
		var known []string
		for _, f := range rm.health.failures() {
			known = append(known, f.Resource)
		}
		if name == "" {
			return nil, errors.New("no resource failure recorded")
		}
		if len(known) == 0 {
			return nil, fmt.Errorf("no failure recorded for %q (no resource failure recorded)", name)
		}
		return nil, fmt.Errorf("no failure recorded for %q (recorded: %s)", name, strings.Join(known, ", "))
	}
	for _, n := range cleared {
		rm.events.Add(EventResource, fmt.Sprintf("failure of %s cleared by the operator; eligible again unless something else prevents it", n), "resource", n)
	}
	return cleared, nil
}

// eligibility is the decider's input from the monitors and tracks:
// reasons this node must not hold the writer role, and tracks not checked
// yet (which only hold back a takeover). It also expires failures whose
// failure_timeout passed.
func (rm *RoleManager) eligibility(now time.Time) (ineligible, pending string) {
	expired, recovered := rm.health.expire(now)
	for _, f := range expired {
		rm.events.Add(EventResource, fmt.Sprintf("failure of %s expired (failure_timeout, recorded %s ago): %s", f.Resource, now.Sub(f.Since).Round(time.Second), f.Reason), "resource", f.Resource)
	}
	for _, f := range recovered {
		rm.events.Add(EventResource, fmt.Sprintf("failure of %s lifted: its cause is gone (recorded %s ago: %s)", f.Resource, now.Sub(f.Since).Round(time.Millisecond), f.Reason), "resource", f.Resource)
	}
	var parts []string
	if s := failureReasons(rm.health.failures()); s != "" {
		parts = append(parts, s)
	}
	failing, unchecked := rm.tracks.verdict()
	if failing != "" {
		parts = append(parts, failing)
	}
	return strings.Join(parts, "; "), unchecked
}

// names lists the resources from index from on.
func (g *Group) names(from int) []string {
	var out []string
	for _, r := range g.resources[from:] {
		out = append(out, r.Name())
	}
	return out
}

// startOne starts resource i; on failure it is left failed (the role is
// given up next, and the release stops it).
func (g *Group) startOne(ctx context.Context, i int, reason string) error {
	r := g.resources[i]
	g.set(i, ResourceStarting, nil)
	start := time.Now()
	if err := r.Start(ctx); err != nil {
		g.set(i, ResourceFailed, err)
		g.metrics.resourceActions.WithLabelValues(r.Name(), "start", "error").Inc()
		g.events.Warn(EventResource, fmt.Sprintf("start %s failed after %s: %v", r.Name(), since(start), err), "resource", r.Name())
		return fmt.Errorf("start %s: %w", r.Name(), err)
	}
	g.set(i, ResourceStarted, nil)
	g.metrics.resourceActions.WithLabelValues(r.Name(), "start", "ok").Inc()
	g.events.Add(EventResource, fmt.Sprintf("started %s in %s (%s)", r.Name(), since(start), reason), "resource", r.Name())
	return nil
}

// restartFrom stops the resources from index from on right to left and
// starts them again left to right. It stops at the first error: the
// caller then gives the role up, and the release stops what is left.
func (g *Group) restartFrom(ctx context.Context, from int, reason string) error {
	for i := len(g.resources) - 1; i >= from; i-- {
		r := g.resources[i]
		g.set(i, ResourceStopping, nil)
		start := time.Now()
		if err := r.Stop(ctx); err != nil {
			g.stopFailed(i, err, start)
			return fmt.Errorf("stop %s: %w", r.Name(), err)
		}
		g.set(i, ResourceStopped, nil)
		g.metrics.resourceActions.WithLabelValues(r.Name(), "stop", "ok").Inc()
		g.events.Add(EventResource, fmt.Sprintf("stopped %s in %s (%s)", r.Name(), since(start), reason), "resource", r.Name())
	}
	for i := from; i < len(g.resources); i++ {
		if err := g.startOne(ctx, i, reason); err != nil {
			return err
		}
	}
	return nil
}

// monitoredStatus is the group's status with each resource's monitoring.
func (rm *RoleManager) monitoredStatus(now time.Time) []ResourceStatus {
	g := rm.act.group.Load()
	st := g.Status()
	failed := map[string]ResourceFailure{}
	for _, f := range rm.health.failures() {
		failed[f.Resource] = f
	}
	for i := range st {
		if i >= len(g.resources) {
			break
		}
		if m, ok := g.resources[i].(*monitored); ok {
			st[i].Monitor = fmt.Sprintf("every %s, timeout %s, max_restarts %d within %s", m.spec.interval, m.spec.timeout, m.spec.maxRestarts, m.spec.restartWindow)
			st[i].Restarts = rm.health.restartCount(st[i].Name, m.spec.restartWindow, now)
		}
		if f, ok := failed[st[i].Name]; ok {
			st[i].Failure = &f
		}
	}
	return st
}
