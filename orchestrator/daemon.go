package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/prometheus/client_golang/prometheus"
)

// SyncTargetStatus is one sync target as /status shows it.
type SyncTargetStatus struct {
	Job          string    `json:"job"`
	Target       string    `json:"target"`
	Connected    bool      `json:"connected"`
	PendingFiles int       `json:"pending_files"`
	LastSync     time.Time `json:"last_sync,omitzero"`
	// LastVerified is when a full comparison last found the target equal.
	LastVerified time.Time `json:"last_verified,omitzero"`
	// Held says why deletions on the target are being held (the
	// mass-deletion guard or a missing source root).
	Held        string `json:"held,omitempty"`
	HeldDeletes int    `json:"held_deletes,omitempty"`
	LastError   string `json:"last_error,omitempty"`
	// Progress is the running full pass (nil when none runs).
	Progress *lsync.ProgressSnapshot `json:"progress,omitempty"`
	// Protocol is how the session reaches the peer ("receiver v5",
	// "sftp", "local"); ProtocolFallback says why receiver: auto fell
	// back to SFTP, which leaves a hostile peer race windows.
	Protocol         string `json:"protocol,omitempty"`
	ProtocolFallback string `json:"protocol_fallback,omitempty"`
	// Refused counts the paths the peer refuses (a symlink where lockstep
	// writes), FirstRefused names the first; the target is not in sync.
	Refused      int    `json:"refused,omitempty"`
	FirstRefused string `json:"first_refused,omitempty"`
}

// SyncJob is a docroot sync job as the daemon runs it (*lsync.Job). Run
// is called again after it returned: the daemon restarts failed jobs.
type SyncJob interface {
	Name() string
	Run(ctx context.Context) error
	Status() []lsync.TargetStatus
}

// Database is this node's MariaDB pair as the daemon consumes it: the
// replication supervisor (dbrepl's, wrapped by the cmd layer). It is the
// one view of the database on this side: the daemon runs it, the role
// manager reads our node's fence state and lag from Status, self-fences
// with Fence, lifts exactly that fence with Unfence, and makes the writer's
// supervisor the single decision-maker with SetActive.
//
// Fence must set a fence the supervisor lifts by itself once the database
// has caught up (not a manual fence), so a self-fenced node is
// reintroduced after the partition heals. Two supervisors on the same pair
// could each fence a different node when both qualify within a few
// milliseconds, so SetActive(true) is called only on the writer, and
// SetActive(false) when it leaves that role; it is not called for a node
// that starts and stays standby, so an implementation must start
// inactive. Fence acts in either mode.
type Database interface {
	Run(ctx context.Context) error
	Status() dbrepl.PairStatus
	Fence(ctx context.Context, node, reason string) error
	Unfence(ctx context.Context, node string) error
	SetActive(active bool)
}

// DaemonConfig gathers what `lockstep run` composes.
type DaemonConfig struct {
	Node    string
	Listen  string
	Cluster *ClusterConfig
	Sync    []SyncJob
	Repl    Database // nil when the file has no repl section
	// Registry receives the orchestrator's metrics and serves /metrics;
	// give the same one to the sync jobs and the supervisor.
	Registry *prometheus.Registry
	Logger   *slog.Logger
}

// Daemon is one node's `lockstep run`.
type Daemon struct {
	cfg     DaemonConfig
	logger  *slog.Logger
	events  *EventLog
	metrics *Metrics
	role    *RoleManager

	ready      chan struct{}
	httpAddr   net.Addr
	agentAddr  net.Addr
	reloadMu   sync.Mutex
	runningCfg ClusterConfig
}

// NewDaemon checks the configuration (key file, resources, membership)
// and prepares the components; nothing runs or listens until Run.
func NewDaemon(c DaemonConfig) (*Daemon, error) {
	if c.Cluster == nil {
		return nil, errors.New("cluster: section required for lockstep run")
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	key, err := LoadKey(c.Cluster.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("cluster.key_file: %w", err)
	}
	d := &Daemon{cfg: c, logger: c.Logger.With("component", "daemon"), ready: make(chan struct{}), runningCfg: *c.Cluster}
	d.events = NewEventLog(c.Logger.With("component", "events"))
	d.metrics = NewMetrics(c.Registry)
	resources, err := NewResources(c.Cluster.Resources, c.Logger.With("component", "resource"))
	if err != nil {
		return nil, fmt.Errorf("cluster.%w", err)
	}
	if err := checkTracks(c.Cluster.Track); err != nil {
		return nil, fmt.Errorf("cluster.%w", err)
	}
	for _, n := range c.Cluster.Nodes {
		if n.Name == c.Node {
			labelResources(resources, n)
		}
	}
	rc := RoleManagerConfig{
		Node: c.Node, Cluster: c.Cluster, Key: key, Resources: resources,
		Events: d.events, Metrics: d.metrics, Logger: c.Logger,
	}
	if c.Repl != nil {
		rc.DB = c.Repl
	}
	if d.role, err = NewRoleManager(rc); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	return d, nil
}

// Events is the daemon's event log (for the cmd layer's reload messages).
func (d *Daemon) Events() *EventLog { return d.events }

// Ready is closed once the HTTP and agent-check ports are bound.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// HTTPAddr is the bound /health /status /metrics address (after Ready).
func (d *Daemon) HTTPAddr() net.Addr { return d.httpAddr }

// AgentAddr is the bound agent-check address, nil when off (after Ready).
func (d *Daemon) AgentAddr() net.Addr { return d.agentAddr }

// Run serves HTTP and the agent check, and runs the role manager, the sync
// jobs and the replication supervisor, each restarted with exponential
// backoff when it fails. When ctx ends, the role manager releases the
// resources right to left; the database is left as it is.
func (d *Daemon) Run(ctx context.Context) error {
	if err := d.role.Bind(); err != nil {
		return err
	}
	hl, err := net.Listen("tcp", d.cfg.Listen)
	if err != nil {
		d.role.unbind()
		return fmt.Errorf("listen: %w", err)
	}
	var al net.Listener
	if d.cfg.Cluster.AgentCheck != "" {
		if al, err = net.Listen("tcp", d.cfg.Cluster.AgentCheck); err != nil {
			hl.Close()
			d.role.unbind()
			return fmt.Errorf("cluster.agent_check: %w", err)
		}
		d.agentAddr = al.Addr()
	}
	d.httpAddr = hl.Addr()
	srv := &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 5 * time.Second}

	var serveWG sync.WaitGroup
	serveWG.Go(func() {
		if err := srv.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.logger.Error("http server", "err", err)
		}
	})
	if al != nil {
		serveWG.Go(func() { d.serveAgent(al) })
	}
	close(d.ready)
	d.events.Add(EventSupervisor, fmt.Sprintf("lockstep run started on node %s: http %s, heartbeats %s", d.cfg.Node, d.httpAddr, d.role.Addr()))

	var wg sync.WaitGroup
	wg.Go(func() { d.supervise(ctx, "role manager", d.role.Run) })
	for _, j := range d.cfg.Sync {
		wg.Go(func() { d.supervise(ctx, "sync job "+j.Name(), j.Run) })
	}
	if d.cfg.Repl != nil {
		wg.Go(func() { d.supervise(ctx, "replication supervisor", d.cfg.Repl.Run) })
	}
	wg.Wait()

	// HTTP stays up until everything is released, so the balancer sees
	// "drain" during the release and a closed port after it.
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	if al != nil {
		al.Close()
	}
	serveWG.Wait()
	d.events.Add(EventSupervisor, "lockstep run stopped")
	return nil
}

// supervise runs fn until ctx ends, restarting it after a failure or
// panic with exponential backoff (1s doubling to 1m, reset after a minute
// of healthy running).
func (d *Daemon) supervise(ctx context.Context, name string, fn func(context.Context) error) {
	backoff := time.Second
	for {
		start := time.Now()
		err := runRecovered(ctx, fn)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		if err == nil {
			err = errors.New("returned unexpectedly")
		}
		d.metrics.restarts.WithLabelValues(name).Inc()
		d.events.Warn(EventSupervisor, fmt.Sprintf("%s failed: %v; restarting in %s", name, err, backoff), "component", name)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Minute)
	}
}

func runRecovered(ctx context.Context, fn func(context.Context) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	return fn(ctx)
}

// Reload applies a re-read configuration. Node, listen and cluster.nodes
// need a restart; the rest of the cluster section applies live. It returns
// one line per change (also recorded as events).
func (d *Daemon) Reload(node, listen string, c *ClusterConfig) error {
	select {
	case <-d.ready:
	default:
		return errors.New("reload: the daemon is not running yet")
	}
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	if c == nil {
		err := errors.New("reload: the new file has no cluster section; keeping the running configuration")
		d.events.Warn(EventReload, err.Error())
		return err
	}
	var notes []string
	if node != d.cfg.Node {
		notes = append(notes, fmt.Sprintf("node changed %s -> %s: restart required; ignored", d.cfg.Node, node))
	}
	if listen != "" && listen != d.cfg.Listen {
		notes = append(notes, fmt.Sprintf("listen changed %s -> %s: restart required; ignored", d.cfg.Listen, listen))
	}
	key, err := LoadKey(c.KeyFile)
	if err != nil {
		err = fmt.Errorf("reload: cluster.key_file: %w; keeping the running configuration", err)
		d.events.Warn(EventReload, err.Error())
		return err
	}
	resources, err := NewResources(c.Resources, d.cfg.Logger.With("component", "resource"))
	if err != nil {
		err = fmt.Errorf("reload: cluster.%w; keeping the running configuration", err)
		d.events.Warn(EventReload, err.Error())
		return err
	}
	if err := checkTracks(c.Track); err != nil {
		err = fmt.Errorf("reload: cluster.%w; keeping the running configuration", err)
		d.events.Warn(EventReload, err.Error())
		return err
	}
	labelResources(resources, d.role.self)
	notes = append(notes, d.role.Reload(c, key, resources)...)
	if len(notes) == 0 {
		notes = append(notes, "cluster timing and failback settings applied (no other change)")
	}
	for _, n := range notes {
		d.events.Add(EventReload, "reload: "+n)
	}
	return nil
}
