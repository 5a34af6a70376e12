package lsync

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"time"
)

// Defaults chosen so that a change reaches peers in milliseconds while a
// burst (tar x, git checkout) still travels as a few large batches.
const (
	DefaultDelay          = 10 * time.Millisecond
	DefaultMaxDelay       = time.Second
	DefaultVerifyInterval = 10 * time.Minute
	DefaultConcurrency    = 32
	DefaultSSHPort        = 22
	DefaultConnectTimeout = 10 * time.Second
	// DefaultReceiverCommand is how the peer's login shell finds the
	// lockstep binary for `lockstep receive`.
	DefaultReceiverCommand = "lockstep"
)

// Receiver modes of an SSH target (`receiver:`).
const (
	// ReceiverAuto uses `lockstep receive` on the peer when it answers
	// with this build's protocol version, SFTP otherwise (logged, and
	// shown in status and lockstep_sync_target_protocol).
	ReceiverAuto = "auto"
	// ReceiverOn requires the receiver: without it the target is down
	// (retried), never served over SFTP. The setting for user: root.
	ReceiverOn = "on"
	// ReceiverOff always uses SFTP.
	ReceiverOff = "off"
)

// receiverCommandRE keeps receiver_command a plain path or command name:
// it is run by the peer's login shell, so spaces and shell metacharacters
// would change its meaning.
var receiverCommandRE = regexp.MustCompile(`^[A-Za-z0-9_./+-]+$`)

// JobConfig is one `sync:` entry: a source tree pushed to a set of targets.
type JobConfig struct {
	Name     string        `yaml:"name"`
	Source   string        `yaml:"source"`
	Delay    time.Duration `yaml:"delay"`
	MaxDelay time.Duration `yaml:"max_delay"`
	// Delete is a pointer so that an omitted key means the default (true)
	// while an explicit `delete: false` is honoured.
	Delete   *bool `yaml:"delete"`
	Checksum bool  `yaml:"checksum"`
	// Owner is how the owner and group reach the peer: names (the
	// default; "true" too), numeric or false (see ParseOwner). Keeping
	// them needs root there, or it is reported once and skipped.
	Owner   string   `yaml:"owner"`
	Exclude []string `yaml:"exclude"`
	// VerifyInterval 0 disables the periodic verification pass; nil means default.
	VerifyInterval *time.Duration `yaml:"verify_interval"`
	Concurrency    int            `yaml:"concurrency"`
	// VerifyRate bounds how fast the periodic verification lists the
	// target, in entries per second; 0 means DefaultVerifyRate, -1
	// unbounded.
	VerifyRate int `yaml:"verify_rate"`
	// TwoWay marks a job whose targets push back to this node (each node
	// runs the mirror job). Conflicts then resolve by newest mtime, a tie
	// going to the node name that sorts first, and full passes never
	// delete on the target: a file only there is the peer's to push.
	TwoWay bool `yaml:"two_way"`
	// MaxDelete guards against mass deletion: "N", "N%" of the target's
	// entries, or "off"; empty means DefaultMaxDelete.
	MaxDelete string `yaml:"max_delete"`
	// StateDir holds the job's sync state (the two-way merge base), one
	// file per target under StateDir/sync/JOB/; empty keeps none.
	StateDir string         `yaml:"state_dir"`
	Targets  []TargetConfig `yaml:"targets"`
}

// EffectiveMaxDelete returns the parsed guard (Validate has checked it).
func (c JobConfig) EffectiveMaxDelete() MaxDelete {
	m, err := ParseMaxDelete(c.MaxDelete)
	if err != nil {
		return MaxDelete{Percent: 50}
	}
	return m
}

// TargetConfig is one peer (or local directory when Host is empty).
type TargetConfig struct {
	Name           string        `yaml:"name"`
	Host           string        `yaml:"host"`
	Port           int           `yaml:"port"`
	User           string        `yaml:"user"`
	Identity       string        `yaml:"identity"`
	KnownHosts     string        `yaml:"known_hosts"`
	Path           string        `yaml:"path"`
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// Receiver selects the protocol: ReceiverAuto (default), ReceiverOn
	// or ReceiverOff.
	Receiver string `yaml:"receiver"`
	// ReceiverCommand is the lockstep binary on the peer (a name looked
	// up in the peer's PATH, or an absolute path).
	ReceiverCommand string `yaml:"receiver_command"`
}

// IsLocal reports whether the target is a local directory (NFS mount, tests).
func (t TargetConfig) IsLocal() bool { return t.Host == "" }

// EffectiveOwner returns the parsed `owner` setting (Validate has
// checked it).
func (c JobConfig) EffectiveOwner() OwnerMode {
	m, err := ParseOwner(c.Owner)
	if err != nil {
		return OwnerNames
	}
	return m
}

// DeleteEnabled returns the effective `delete` setting.
func (c JobConfig) DeleteEnabled() bool { return c.Delete == nil || *c.Delete }

// EffectiveVerifyRate returns the verification's listing rate in entries
// per second, 0 meaning unbounded.
func (c JobConfig) EffectiveVerifyRate() int {
	switch {
	case c.VerifyRate == 0:
		return DefaultVerifyRate
	case c.VerifyRate < 0:
		return 0
	}
	return c.VerifyRate
}

// EffectiveVerifyInterval returns the verification period, 0 meaning off.
func (c JobConfig) EffectiveVerifyInterval() time.Duration {
	if c.VerifyInterval == nil {
		return DefaultVerifyInterval
	}
	return *c.VerifyInterval
}

// SetDefaults fills in every unset field.
func (c *JobConfig) SetDefaults() {
	if c.Delay == 0 {
		c.Delay = DefaultDelay
	}
	if c.MaxDelay == 0 {
		c.MaxDelay = DefaultMaxDelay
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	for i := range c.Targets {
		t := &c.Targets[i]
		if t.Host != "" && t.Port == 0 {
			t.Port = DefaultSSHPort
		}
		if t.ConnectTimeout == 0 {
			t.ConnectTimeout = DefaultConnectTimeout
		}
		t.SetReceiverDefaults()
	}
}

// SetReceiverDefaults fills in the receiver settings of an SSH target.
func (t *TargetConfig) SetReceiverDefaults() {
	if t.IsLocal() {
		return
	}
	if t.Receiver == "" {
		t.Receiver = ReceiverAuto
	}
	if t.ReceiverCommand == "" {
		t.ReceiverCommand = DefaultReceiverCommand
	}
}

// Validate returns an error naming the offending key, relative to the job
// (the config loader prefixes `sync[N].`).
func (c *JobConfig) Validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("name: required"))
	}
	if c.Source == "" {
		errs = append(errs, errors.New("source: required"))
	} else if !filepath.IsAbs(c.Source) {
		errs = append(errs, fmt.Errorf("source: %q must be an absolute path", c.Source))
	}
	if c.Delay < 0 {
		errs = append(errs, errors.New("delay: must not be negative"))
	}
	if c.MaxDelay < c.Delay {
		errs = append(errs, fmt.Errorf("max_delay: %s must be >= delay %s", c.MaxDelay, c.Delay))
	}
	if c.VerifyInterval != nil && *c.VerifyInterval < 0 {
		errs = append(errs, errors.New("verify_interval: must not be negative (0 disables)"))
	}
	if c.VerifyRate < -1 {
		errs = append(errs, fmt.Errorf("verify_rate: %d must be positive (entries per second), 0 for the default or -1 for unbounded", c.VerifyRate))
	}
	if c.Concurrency < 1 || c.Concurrency > 256 {
		errs = append(errs, fmt.Errorf("concurrency: %d out of range 1..256", c.Concurrency))
	}
	if c.StateDir != "" && !filepath.IsAbs(c.StateDir) {
		errs = append(errs, fmt.Errorf("state_dir: %q must be an absolute path", c.StateDir))
	}
	if _, err := ParseMaxDelete(c.MaxDelete); err != nil {
		errs = append(errs, fmt.Errorf("max_delete: %w", err))
	}
	if _, err := ParseOwner(c.Owner); err != nil {
		errs = append(errs, fmt.Errorf("owner: %w", err))
	}
	if _, err := NewExcluder(c.Exclude); err != nil {
		errs = append(errs, err)
	}
	if len(c.Targets) == 0 {
		errs = append(errs, errors.New("targets: at least one target is required"))
	}
	seen := map[string]bool{}
	for i, t := range c.Targets {
		for _, err := range t.validate() {
			errs = append(errs, fmt.Errorf("targets[%d].%w", i, err))
		}
		if seen[t.Name] {
			errs = append(errs, fmt.Errorf("targets[%d].name: duplicate target %q", i, t.Name))
		}
		seen[t.Name] = true
	}
	return errors.Join(errs...)
}

func (t TargetConfig) validate() []error {
	var errs []error
	if t.Name == "" {
		errs = append(errs, errors.New("name: required"))
	}
	if t.Path == "" {
		errs = append(errs, errors.New("path: required"))
	} else if !filepath.IsAbs(t.Path) {
		errs = append(errs, fmt.Errorf("path: %q must be an absolute path", t.Path))
	}
	if t.IsLocal() {
		if t.User != "" || t.Identity != "" || t.KnownHosts != "" || t.Receiver != "" || t.ReceiverCommand != "" {
			errs = append(errs, errors.New("host: required when user, identity, known_hosts, receiver or receiver_command is set"))
		}
		return errs
	}
	if t.Port < 1 || t.Port > 65535 {
		errs = append(errs, fmt.Errorf("port: %d out of range 1..65535", t.Port))
	}
	if t.User == "" {
		errs = append(errs, errors.New("user: required for an SSH target"))
	}
	if t.Identity == "" {
		errs = append(errs, errors.New("identity: required for an SSH target"))
	}
	if t.KnownHosts == "" {
		errs = append(errs, errors.New("known_hosts: required for an SSH target (host keys are always verified)"))
	}
	return append(errs, t.receiverErrors()...)
}

// ValidateReceiver checks the receiver settings of an SSH target (the
// connector re-checks them: receiver_command reaches a shell).
func (t TargetConfig) ValidateReceiver() error { return errors.Join(t.receiverErrors()...) }

func (t TargetConfig) receiverErrors() []error {
	var errs []error
	switch t.Receiver {
	case "", ReceiverAuto, ReceiverOn, ReceiverOff:
	default:
		errs = append(errs, fmt.Errorf("receiver: %q must be auto, on or off", t.Receiver))
	}
	if t.ReceiverCommand != "" && !receiverCommandRE.MatchString(t.ReceiverCommand) {
		errs = append(errs, fmt.Errorf("receiver_command: %q must be a command name or a path without spaces or shell metacharacters", t.ReceiverCommand))
	}
	return errs
}
