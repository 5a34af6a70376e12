package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// SSHPeer is how both tools reach the target: through the counting proxy
// in front of the harness's sshd, with the same key and known_hosts.
type SSHPeer struct {
	Host       string
	Port       int
	User       string
	Identity   string
	KnownHosts string
	// ReceiverCommand is lockstep's peer side (`lockstep receive`), as a
	// lockstep cluster has it on every node; rsync's is rsync.
	ReceiverCommand string
}

// SyncTool is one contender of the docroot scenarios.
type SyncTool interface {
	// Name as printed in the report.
	Name() string
	// Start syncs source to target (target is a path on the peer) until Stop.
	Start(ctx context.Context, source, target string) error
	// Pid of the daemon, for RSS, CPU and inotify counts.
	Pid() int
	// ExtraRSS is memory of helper processes that belong to the setup but
	// are not the daemon's children any more (lsyncd's ssh ControlMaster).
	ExtraRSS() int64
	// Alive returns an error when the daemon died.
	Alive() error
	Stop() error
	// LogTail is for failure messages.
	LogTail() string
}

// LockstepSync runs the built `lockstep sync -c F` with a generated config,
// the way an admin would.
type LockstepSync struct {
	Bin  string
	Dir  string // where config and log go
	Peer SSHPeer
	// Overrides are extra job keys (e.g. "delay": "0s"); empty = defaults.
	Overrides map[string]any
	Label     string

	proc *Proc
}

func (l *LockstepSync) Name() string {
	if l.Label != "" {
		return l.Label
	}
	return "lockstep"
}

// LockstepSyncConfig renders the YAML config file for one job.
func LockstepSyncConfig(source, target string, peer SSHPeer, overrides map[string]any) ([]byte, error) {
	tgt := map[string]any{
		"name":        "peer",
		"host":        peer.Host,
		"port":        peer.Port,
		"user":        peer.User,
		"identity":    peer.Identity,
		"known_hosts": peer.KnownHosts,
		"path":        target,
	}
	if peer.ReceiverCommand != "" {
		tgt["receiver_command"] = peer.ReceiverCommand
	}
	job := map[string]any{
		"name":   "bench",
		"source": source,
		// Beside the config, not in /var/lib: a benchmark leaves nothing.
		"state_dir": filepath.Join(filepath.Dir(source), "lockstep-state"),
		"targets":   []map[string]any{tgt},
	}
	for k, v := range overrides {
		job[k] = v
	}
	doc := map[string]any{
		"node": "bench",
		"sync": []map[string]any{job},
	}
	// The metrics listener stays on (it is part of what ships) but on a
	// free port, so that a parallel test's daemon cannot collide with it.
	if addr, err := freeLoopbackAddr(); err == nil {
		doc["listen"] = addr
	}
	return yaml.Marshal(doc)
}

func (l *LockstepSync) Start(ctx context.Context, source, target string) error {
	peer := l.Peer
	peer.ReceiverCommand = l.Bin
	cfg, err := LockstepSyncConfig(source, target, peer, l.Overrides)
	if err != nil {
		return err
	}
	path := filepath.Join(l.Dir, "lockstep-sync.yaml")
	if err := os.WriteFile(path, cfg, 0o600); err != nil {
		return err
	}
	p, err := StartProc("lockstep sync", filepath.Join(l.Dir, "lockstep-sync.log"), nil, l.Bin, "sync", "-c", path)
	if err != nil {
		return err
	}
	l.proc = p
	return nil
}

func (l *LockstepSync) Pid() int        { return l.proc.Pid() }
func (l *LockstepSync) ExtraRSS() int64 { return 0 }
func (l *LockstepSync) Alive() error    { return l.proc.ErrIfExited() }
func (l *LockstepSync) LogTail() string { return l.proc.LogTail(1500) }
func (l *LockstepSync) Stop() error {
	if l.proc == nil {
		return nil
	}
	return l.proc.Stop(10 * time.Second)
}

// Lsyncd runs lsyncd's default.rsyncssh, either tuned (delay = 0 and an
// ssh ControlMaster: its fastest honest setting) or with its defaults
// (15 s delay, a new ssh connection per rsync).
type Lsyncd struct {
	Dir   string
	Peer  SSHPeer
	Tuned bool

	proc        *Proc
	controlPath string
}

func (l *Lsyncd) Name() string {
	if l.Tuned {
		return "lsyncd (delay=0, ControlMaster)"
	}
	return "lsyncd (defaults)"
}

// LsyncdConfig renders the Lua config. Both variants carry what is needed
// to connect at all (port, key, known_hosts, archive mode so modes and
// symlinks match); only the tuned one changes the delay and adds the
// ControlMaster.
func LsyncdConfig(source, target string, peer SSHPeer, tuned bool, logFile, statusFile, controlPath string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "settings {\n  nodaemon = true,\n  logfile = %s,\n  statusFile = %s,\n  insist = true,\n}\n\n",
		luaString(logFile), luaString(statusFile))
	fmt.Fprintf(&b, "sync {\n  default.rsyncssh,\n  source = %s,\n  host = %s,\n  targetdir = %s,\n",
		luaString(source), luaString(peer.User+"@"+peer.Host), luaString(target))
	if tuned {
		b.WriteString("  delay = 0,\n")
	}
	b.WriteString("  rsync = {\n    archive = true,\n    compress = false,\n  },\n")
	fmt.Fprintf(&b, "  ssh = {\n    port = %d,\n    identityFile = %s,\n    options = {\n", peer.Port, luaString(peer.Identity))
	opts := [][2]string{
		{"UserKnownHostsFile", peer.KnownHosts},
		{"StrictHostKeyChecking", "yes"},
		{"BatchMode", "yes"},
	}
	if tuned {
		opts = append(opts,
			[2]string{"ControlMaster", "auto"},
			[2]string{"ControlPath", controlPath},
			[2]string{"ControlPersist", "600"},
		)
	}
	for _, o := range opts {
		fmt.Fprintf(&b, "      %s = %s,\n", o[0], luaString(o[1]))
	}
	b.WriteString("    },\n  },\n}\n")
	return b.String()
}

// luaString quotes s as a Lua string literal.
func luaString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func (l *Lsyncd) Start(ctx context.Context, source, target string) error {
	bin, err := lookTool("lsyncd")
	if err != nil {
		return err
	}
	// A unix socket path must stay under 108 bytes: keep it short.
	l.controlPath = filepath.Join(l.Dir, "cm")
	cfgPath := filepath.Join(l.Dir, "lsyncd.lua")
	cfg := LsyncdConfig(source, target, l.Peer, l.Tuned,
		filepath.Join(l.Dir, "lsyncd.log"), filepath.Join(l.Dir, "lsyncd.status"), l.controlPath)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	// lsyncd's source must end with a slash-free absolute path; rsyncssh
	// appends the slashes itself.
	p, err := StartProc(l.Name(), filepath.Join(l.Dir, "lsyncd.out"), nil, bin, cfgPath)
	if err != nil {
		return err
	}
	l.proc = p
	return nil
}

func (l *Lsyncd) Pid() int     { return l.proc.Pid() }
func (l *Lsyncd) Alive() error { return l.proc.ErrIfExited() }
func (l *Lsyncd) LogTail() string {
	b, _ := os.ReadFile(filepath.Join(l.Dir, "lsyncd.log"))
	s := string(b)
	if len(s) > 1500 {
		s = s[len(s)-1500:]
	}
	return strings.TrimSpace(s + "\n" + l.proc.LogTail(500))
}

func (l *Lsyncd) ExtraRSS() int64 {
	if !l.Tuned {
		return 0
	}
	var sum int64
	// The ControlPersist master renames itself "ssh: PATH [mux]".
	for _, pid := range PidsMatching(l.controlPath) {
		if pid == l.proc.Pid() {
			continue
		}
		if n, err := RSSBytes(pid); err == nil {
			sum += n
		}
	}
	return sum
}

func (l *Lsyncd) Stop() error {
	if l.proc == nil {
		return nil
	}
	err := l.proc.Stop(10 * time.Second)
	if l.Tuned {
		// The ControlPersist master detached from lsyncd's process group;
		// ask it to exit through its own socket, then make sure.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = runCmd(ctx, "ssh", "-o", "ControlPath="+l.controlPath, "-O", "exit", "-p", strconv.Itoa(l.Peer.Port), l.Peer.Host)
		cancel()
		for _, pid := range PidsMatching(l.controlPath) {
			if p, e := os.FindProcess(pid); e == nil {
				_ = p.Kill()
			}
		}
		_ = os.Remove(l.controlPath)
	}
	return err
}
