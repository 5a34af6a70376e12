package dbrepl

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Defaults: a 1s poll writes one heartbeat per second per node, like
// pt-heartbeat, and costs each server 3 statements a second; the lag
// between polls is followed every 100ms on the conflict detector's binlog
// streams (streamlag.go), so it stays finer than a 250ms poll gave.
const (
	DefaultInterval    = time.Second
	DefaultMaxLag      = 5 * time.Second
	DefaultUnfenceLag  = time.Second
	DefaultUnfenceHold = 10 * time.Second
	DefaultHookTimeout = 30 * time.Second
	DefaultStateDir    = "/var/lib/lockstep"
)

// Conflict detector defaults: ten seconds covers the replication delay of
// a healthy pair many times over; 10,000 keys per table bound memory to a
// few MB.
const (
	DefaultConflictWindow          = 10 * time.Second
	DefaultConflictMaxKeysPerTable = 10000
	DefaultConflictMaxTables       = 256
)

// Config is the `repl:` section.
type Config struct {
	Interval time.Duration `yaml:"interval"`
	Nodes    []NodeConfig  `yaml:"nodes"`
	Fence    FenceConfig   `yaml:"fence"`
	Hooks    HooksConfig   `yaml:"hooks"`
	// StateDir holds the durable fence records so that a supervisor
	// restart never unfences blindly.
	StateDir string `yaml:"state_dir"`
	// Conflicts configures the live write-conflict detector
	// (package dbrepl/conflict), which tails both nodes' binlogs.
	Conflicts ConflictConfig `yaml:"conflicts"`
}

// ConflictConfig is the `repl.conflicts:` section.
type ConflictConfig struct {
	// Enabled defaults to true; a pointer so that an explicit false
	// survives SetDefaults. The detector needs REPLICATION SLAVE on the
	// monitoring user; disable it where that grant cannot be given.
	Enabled *bool `yaml:"enabled"`
	// Window is how far apart two concurrent writes of one key may be
	// and still count as a conflict; keys expire after it.
	Window time.Duration `yaml:"window"`
	// MaxKeysPerTable and MaxTables bound the memory held.
	MaxKeysPerTable int `yaml:"max_keys_per_table"`
	MaxTables       int `yaml:"max_tables"`
	// ServerID is the replica id the binlog readers register with; it
	// must differ from every server and replica of the pair, and from the
	// detector of the other node's daemon (a server drops the older of two
	// replicas with one id). 0, the default, picks a random id when the
	// detector is created, not here, so that reloading an unchanged file
	// compares equal.
	ServerID uint32 `yaml:"server_id"`
	// IgnoreSchemas are not watched; lockstep's heartbeat schema is
	// always ignored.
	IgnoreSchemas []string `yaml:"ignore_schemas"`
}

// IsEnabled reports whether the detector should run (default true).
func (c *ConflictConfig) IsEnabled() bool { return c.Enabled == nil || *c.Enabled }

// SetDefaults fills in unset fields.
func (c *ConflictConfig) SetDefaults() {
	if c.Enabled == nil {
		on := true
		c.Enabled = &on
	}
	if c.Window == 0 {
		c.Window = DefaultConflictWindow
	}
	if c.MaxKeysPerTable == 0 {
		c.MaxKeysPerTable = DefaultConflictMaxKeysPerTable
	}
	if c.MaxTables == 0 {
		c.MaxTables = DefaultConflictMaxTables
	}
	if !slices.Contains(c.IgnoreSchemas, "lockstep") {
		c.IgnoreSchemas = append(c.IgnoreSchemas, "lockstep")
	}
}

// Validate returns errors naming the key relative to `repl.`.
func (c *ConflictConfig) Validate() error {
	var errs []error
	if c.Window <= 0 {
		errs = append(errs, fmt.Errorf("conflicts.window: %s must be positive", c.Window))
	}
	if c.MaxKeysPerTable < 1 {
		errs = append(errs, fmt.Errorf("conflicts.max_keys_per_table: %d, need at least 1", c.MaxKeysPerTable))
	}
	if c.MaxTables < 1 {
		errs = append(errs, fmt.Errorf("conflicts.max_tables: %d, need at least 1", c.MaxTables))
	}
	for i, s := range c.IgnoreSchemas {
		if s == "" {
			errs = append(errs, fmt.Errorf("conflicts.ignore_schemas[%d]: empty schema name", i))
		}
	}
	return errors.Join(errs...)
}

// NodeConfig names one database server.
type NodeConfig struct {
	Name string `yaml:"name"`
	DSN  string `yaml:"dsn"`
}

// FenceConfig holds the fencing thresholds and their hysteresis.
type FenceConfig struct {
	MaxLag          time.Duration `yaml:"max_lag"`
	UnfenceLag      time.Duration `yaml:"unfence_lag"`
	UnfenceHold     time.Duration `yaml:"unfence_hold"`
	KillConnections bool          `yaml:"kill_connections"`
}

// HooksConfig lists executables run on fence transitions.
type HooksConfig struct {
	OnFence   string        `yaml:"on_fence"`
	OnUnfence string        `yaml:"on_unfence"`
	Timeout   time.Duration `yaml:"timeout"`
}

// SetDefaults fills in every unset field.
func (c *Config) SetDefaults() {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Fence.MaxLag == 0 {
		c.Fence.MaxLag = DefaultMaxLag
	}
	if c.Fence.UnfenceLag == 0 {
		c.Fence.UnfenceLag = DefaultUnfenceLag
	}
	if c.Fence.UnfenceHold == 0 {
		c.Fence.UnfenceHold = DefaultUnfenceHold
	}
	if c.Hooks.Timeout == 0 {
		c.Hooks.Timeout = DefaultHookTimeout
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	c.Conflicts.SetDefaults()
}

// Validate returns errors naming the key relative to `repl.`.
func (c *Config) Validate() error {
	var errs []error
	if c.Interval < 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("interval: %s is below the 10ms minimum", c.Interval))
	}
	if len(c.Nodes) != 2 {
		errs = append(errs, fmt.Errorf("nodes: exactly 2 nodes are required for a master-master pair, got %d", len(c.Nodes)))
	}
	seen := map[string]bool{}
	for i, n := range c.Nodes {
		if n.Name == "" {
			errs = append(errs, fmt.Errorf("nodes[%d].name: required", i))
		} else if seen[n.Name] {
			errs = append(errs, fmt.Errorf("nodes[%d].name: duplicate node %q", i, n.Name))
		}
		seen[n.Name] = true
		if n.DSN == "" {
			errs = append(errs, fmt.Errorf("nodes[%d].dsn: required", i))
		} else if _, err := mysql.ParseDSN(n.DSN); err != nil {
			// The parser's message may echo the DSN; never the password.
			errs = append(errs, fmt.Errorf("nodes[%d].dsn: not a valid DSN (user:password@tcp(host:port)/)", i))
		}
	}
	if c.Fence.MaxLag <= c.Interval {
		errs = append(errs, fmt.Errorf("fence.max_lag: %s must exceed interval %s", c.Fence.MaxLag, c.Interval))
	}
	if c.Fence.UnfenceLag >= c.Fence.MaxLag {
		errs = append(errs, fmt.Errorf("fence.unfence_lag: %s must be below max_lag %s (hysteresis)", c.Fence.UnfenceLag, c.Fence.MaxLag))
	}
	if c.Fence.UnfenceHold < 0 {
		errs = append(errs, errors.New("fence.unfence_hold: must not be negative"))
	}
	if c.Hooks.Timeout < 0 {
		errs = append(errs, errors.New("hooks.timeout: must not be negative"))
	}
	if err := c.Conflicts.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
