package orchestrator

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"time"
)

// Defaults: a 200ms keepalive and 1s deadtime put failover well inside
// keepalived's ≈3.5s master-down interval and heartbeat's 30s deadtime.
const (
	DefaultListen          = "127.0.0.1:9430"
	DefaultKeepalive       = 200 * time.Millisecond
	DefaultDeadtime        = time.Second
	DefaultResourceTimeout = 20 * time.Second
	DefaultFailbackHold    = 60 * time.Second
)

// ClusterConfig is the `cluster:` section.
type ClusterConfig struct {
	KeyFile      string        `yaml:"key_file"`
	Keepalive    time.Duration `yaml:"keepalive"`
	Deadtime     time.Duration `yaml:"deadtime"`
	Nodes        []NodeConfig  `yaml:"nodes"`
	Witness      []string      `yaml:"witness"`
	AutoFailback bool          `yaml:"auto_failback"`
	FailbackHold time.Duration `yaml:"failback_hold"`
	// TakeoverWait is how long a survivor whose database is fenced waits
	// for it to catch up before taking the writer role anyway (0 = never).
	TakeoverWait time.Duration `yaml:"takeover_wait"`
	// TakeoverMargin is how long a survivor waits beyond deadtime before it
	// takes the writer role from a silent peer. An isolated writer fences
	// itself at deadtime, so the margin must cover one keepalive (the
	// survivor may have heard its last heartbeat one keepalive before the
	// cut) plus the time the writer needs to fence. Default 2 x keepalive.
	TakeoverMargin time.Duration `yaml:"takeover_margin"`
	// MaxClockSkew is deprecated and ignored: heartbeat freshness comes
	// from sequence numbers and echoed boot nonces, not from comparing
	// clocks. It is still accepted so that existing files load; see
	// Deprecations.
	MaxClockSkew time.Duration `yaml:"max_clock_skew"`
	// AgentCheck is the HAProxy agent-check listen address ("" = off).
	AgentCheck string           `yaml:"agent_check"`
	Resources  []ResourceConfig `yaml:"resources"`
	// Track lists health checks that are not resources (keepalived's
	// track_script): while one fails this node may not hold the writer
	// role. See monitor.go.
	Track []TrackConfig `yaml:"track"`
	// SelfFence is what an isolated node does when its database does not
	// become read-only.
	SelfFence SelfFenceConfig `yaml:"self_fence"`
	// Arbiter, when set, decides who is the writer; witnesses become
	// optional.
	Arbiter ArbiterConfig `yaml:"arbiter"`
	// StateDir keeps what must survive a daemon restart: the resource
	// failures that make this node ineligible (failstore.go). The config
	// file defaults it to DefaultStateDir; "" keeps them in memory only.
	StateDir string `yaml:"state_dir"`
}

// ArbiterConfig is `cluster.arbiter`: one kind at most.
type ArbiterConfig struct {
	Etcd *EtcdConfig `yaml:"etcd"`
}

// DefaultLeaseTTL is the etcd lease TTL: a writer cut off from etcd
// fences within TTL/2 (+ renewal interval), and a survivor wins the
// election about TTL after the last renewal.
const DefaultLeaseTTL = 4 * time.Second

// EtcdConfig is `cluster.arbiter.etcd`. Credentials, when etcd needs
// them, come from LOCKSTEP_ETCD_USERNAME and LOCKSTEP_ETCD_PASSWORD.
type EtcdConfig struct {
	Endpoints []string      `yaml:"endpoints"`
	Prefix    string        `yaml:"prefix"`
	LeaseTTL  time.Duration `yaml:"lease_ttl"`
	CAFile    string        `yaml:"ca_file"`
	CertFile  string        `yaml:"cert_file"`
	KeyFile   string        `yaml:"key_file"`
}

// SelfFenceConfig: a failed self-fence is retried with backoff; after
// EscalateAfter it also kills the database's client sessions and, when
// StopDatabase is set, stops the database with that LSB script (`stop`,
// verified by `status` exiting 3). The node reports the failure until
// the database is verifiably not writable.
type SelfFenceConfig struct {
	EscalateAfter time.Duration `yaml:"escalate_after"`
	StopDatabase  string        `yaml:"stop_database"`
	Timeout       time.Duration `yaml:"timeout"`
}

// NodeConfig is one cluster member.
type NodeConfig struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"`
	DB      string `yaml:"db"`
}

// ResourceConfig is one entry of the ordered resource group: exactly one of
// IPAddr or Exec is set.
type ResourceConfig struct {
	IPAddr  string        `yaml:"ipaddr"`
	Dev     string        `yaml:"dev"`
	Exec    string        `yaml:"exec"`
	Timeout time.Duration `yaml:"timeout"`

	// Monitoring while held (monitor.go): every MonitorInterval the
	// resource is checked with MonitorTimeout; a failed check restarts it
	// in place up to MaxRestarts times within RestartWindow, then the node
	// gives up the writer role and stays ineligible for FailureTimeout or
	// until `lockstep clear`.
	MonitorInterval time.Duration `yaml:"monitor_interval"`
	MonitorTimeout  time.Duration `yaml:"monitor_timeout"`
	// MaxRestarts is a pointer so that an explicit 0 (fail over at once,
	// never restart in place) differs from unset.
	MaxRestarts    *int          `yaml:"max_restarts"`
	RestartWindow  time.Duration `yaml:"restart_window"`
	FailureTimeout time.Duration `yaml:"failure_timeout"`
}

// SetDefaults fills in every unset field.
func (c *ClusterConfig) SetDefaults() {
	if c.Keepalive == 0 {
		c.Keepalive = DefaultKeepalive
	}
	if c.Deadtime == 0 {
		c.Deadtime = DefaultDeadtime
	}
	if c.FailbackHold == 0 {
		c.FailbackHold = DefaultFailbackHold
	}
	if c.TakeoverMargin == 0 {
		c.TakeoverMargin = 2 * c.Keepalive
	}
	if e := c.Arbiter.Etcd; e != nil {
		if e.Prefix == "" {
			e.Prefix = "/lockstep"
		}
		if e.LeaseTTL == 0 {
			e.LeaseTTL = DefaultLeaseTTL
		}
	}
	if c.SelfFence.EscalateAfter == 0 {
		c.SelfFence.EscalateAfter = c.Deadtime
	}
	if c.SelfFence.Timeout == 0 {
		c.SelfFence.Timeout = DefaultResourceTimeout
	}
	for i := range c.Resources {
		if c.Resources[i].Timeout == 0 {
			c.Resources[i].Timeout = DefaultResourceTimeout
		}
		c.Resources[i].setMonitorDefaults()
	}
	for i := range c.Track {
		c.Track[i].setDefaults()
	}
}

// Deprecations lists settings that are accepted but have no effect, as
// warnings naming the key relative to `cluster.`.
func (c *ClusterConfig) Deprecations() []string {
	var out []string
	if c.MaxClockSkew != 0 {
		out = append(out, "max_clock_skew: deprecated and ignored: heartbeats are accepted by sequence number and echoed boot nonce, never by comparing clocks; remove the key")
	}
	return out
}

// Validate returns errors naming the key relative to `cluster.`.
func (c *ClusterConfig) Validate() error {
	var errs []error
	if c.KeyFile == "" {
		errs = append(errs, errors.New("key_file: required (heartbeats are always authenticated)"))
	} else if _, err := LoadKey(c.KeyFile); err != nil {
		errs = append(errs, fmt.Errorf("key_file: %w", err))
	}
	if c.Keepalive <= 0 {
		errs = append(errs, errors.New("keepalive: must be positive"))
	}
	if c.Deadtime <= 2*c.Keepalive {
		errs = append(errs, fmt.Errorf("deadtime: %s must be > 2 x keepalive (%s)", c.Deadtime, 2*c.Keepalive))
	}
	if c.TakeoverMargin < c.Keepalive {
		errs = append(errs, fmt.Errorf("takeover_margin: %s must be at least one keepalive (%s) so that an isolated writer fences before the survivor takes over", c.TakeoverMargin, c.Keepalive))
	}
	if c.FailbackHold < 0 || c.TakeoverWait < 0 {
		errs = append(errs, errors.New("failback_hold, takeover_wait: must not be negative"))
	}
	if len(c.Nodes) < 2 {
		errs = append(errs, fmt.Errorf("nodes: at least 2 nodes are required, got %d", len(c.Nodes)))
	}
	seen := map[string]bool{}
	for i, n := range c.Nodes {
		if n.Name == "" {
			errs = append(errs, fmt.Errorf("nodes[%d].name: required", i))
		} else if seen[n.Name] {
			errs = append(errs, fmt.Errorf("nodes[%d].name: duplicate node %q", i, n.Name))
		}
		seen[n.Name] = true
		if _, _, err := net.SplitHostPort(n.Address); err != nil {
			errs = append(errs, fmt.Errorf("nodes[%d].address: %q is not host:port", i, n.Address))
		}
	}
	for i, w := range c.Witness {
		u, err := url.Parse(w)
		if err != nil || u.Host == "" {
			errs = append(errs, fmt.Errorf("witness[%d]: %q is not a URL like tcp://host:port, icmp://host or http(s)://host/path", i, w))
			continue
		}
		switch u.Scheme {
		case "tcp", "icmp", "http", "https":
		default:
			errs = append(errs, fmt.Errorf("witness[%d]: unsupported scheme %q (tcp, icmp, http, https)", i, u.Scheme))
		}
	}
	if c.SelfFence.EscalateAfter < 0 || c.SelfFence.Timeout < 0 {
		errs = append(errs, errors.New("self_fence.escalate_after, self_fence.timeout: must not be negative"))
	}
	if c.SelfFence.StopDatabase != "" && !filepath.IsAbs(c.SelfFence.StopDatabase) {
		errs = append(errs, fmt.Errorf("self_fence.stop_database: %q must be an absolute path", c.SelfFence.StopDatabase))
	}
	if e := c.Arbiter.Etcd; e != nil {
		if len(e.Endpoints) == 0 {
			errs = append(errs, errors.New("arbiter.etcd.endpoints: at least one etcd URL is required"))
		}
		for i, ep := range e.Endpoints {
			u, err := url.Parse(ep)
			if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
				errs = append(errs, fmt.Errorf("arbiter.etcd.endpoints[%d]: %q is not a URL like https://10.0.0.5:2379", i, ep))
			}
		}
		if !strings.HasPrefix(e.Prefix, "/") {
			errs = append(errs, fmt.Errorf("arbiter.etcd.prefix: %q must start with /", e.Prefix))
		}
		if e.LeaseTTL < 2*time.Second || e.LeaseTTL%time.Second != 0 {
			errs = append(errs, fmt.Errorf("arbiter.etcd.lease_ttl: %s must be whole seconds, at least 2s (etcd's lease granularity and minimum)", e.LeaseTTL))
		}
		if c.AutoFailback {
			errs = append(errs, errors.New("auto_failback: not supported with an arbiter (the etcd election decides who writes)"))
		}
		if (e.CertFile == "") != (e.KeyFile == "") {
			errs = append(errs, errors.New("arbiter.etcd.cert_file, key_file: set both or neither"))
		}
		for _, f := range []struct{ key, path string }{{"ca_file", e.CAFile}, {"cert_file", e.CertFile}, {"key_file", e.KeyFile}} {
			if f.path != "" && !filepath.IsAbs(f.path) {
				errs = append(errs, fmt.Errorf("arbiter.etcd.%s: %q must be an absolute path", f.key, f.path))
			}
		}
	}
	if c.AgentCheck != "" {
		if _, _, err := net.SplitHostPort(c.AgentCheck); err != nil {
			errs = append(errs, fmt.Errorf("agent_check: %q is not host:port", c.AgentCheck))
		}
	}
	for i, r := range c.Resources {
		switch {
		case r.IPAddr != "" && r.Exec != "":
			errs = append(errs, fmt.Errorf("resources[%d]: set either ipaddr or exec, not both", i))
		case r.IPAddr != "":
			if _, err := netip.ParsePrefix(r.IPAddr); err != nil {
				errs = append(errs, fmt.Errorf("resources[%d].ipaddr: %q is not an address/prefix like 10.0.0.10/24", i, r.IPAddr))
			}
			if r.Dev == "" {
				errs = append(errs, fmt.Errorf("resources[%d].dev: required with ipaddr", i))
			}
		case r.Exec != "":
			if r.Dev != "" {
				errs = append(errs, fmt.Errorf("resources[%d].dev: only valid with ipaddr", i))
			}
			if !filepath.IsAbs(r.Exec) {
				errs = append(errs, fmt.Errorf("resources[%d].exec: %q must be an absolute path", i, r.Exec))
			}
		default:
			errs = append(errs, fmt.Errorf("resources[%d]: one of ipaddr or exec is required", i))
		}
		if r.Timeout < 0 {
			errs = append(errs, fmt.Errorf("resources[%d].timeout: must not be negative", i))
		}
		errs = append(errs, r.validateMonitor(fmt.Sprintf("resources[%d].", i))...)
	}
	errs = append(errs, validateTracks(c.Track)...)
	if err := validateStateDir(c.StateDir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
