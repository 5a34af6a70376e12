package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
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

// Lsyncd runs lsyncd 2.2 the way an admin who wants the fastest honest
// mirror over ssh would: tuned (see LsyncdConfig) or with its defaults
// (15 s delay, a new ssh connection per rsync), and with either of the two
// layers that push over ssh:
//
//   - default.rsyncssh (Rsync false): rsync for creates and changes, and a
//     remote `mv` (one ssh session each) for every move, `xargs rm` for
//     deletes. It moves a renamed tree instead of sending it again: the
//     layer to pick for docroots with big renames (scenario 5), and the
//     one issue 18 compared with.
//   - default.rsync (Rsync true), rsync's rsh being the same ssh: a move is
//     a delete and a create, so a renamed tree is sent again, but every
//     action is one rsync of the current state of the paths concerned.
//     lsyncd's author points to it when rsyncssh's moves go wrong
//     (lsyncd/lsyncd#371: "If you use default.rsync instead of
//     default.rsyncssh moved files will always be recreated."). Under
//     churn rsyncssh can replay a move onto content the rsync before it
//     had already made current and leave a stale file behind for good (see
//     REPORT-churn.md), so scenario 10 runs both.
type Lsyncd struct {
	Dir   string
	Peer  SSHPeer
	Tuned bool
	Rsync bool // default.rsync instead of default.rsyncssh

	proc        *Proc
	controlPath string
}

func (l *Lsyncd) Name() string {
	switch {
	case l.Rsync && l.Tuned:
		return "lsyncd default.rsync (delay=0, ControlMaster)"
	case l.Rsync:
		return "lsyncd default.rsync (defaults)"
	case l.Tuned:
		return "lsyncd (delay=0, ControlMaster)"
	}
	return "lsyncd (defaults)"
}

// LsyncdVariant selects what LsyncdConfig renders.
type LsyncdVariant struct {
	Tuned bool // delay = 0 and an ssh ControlMaster
	Rsync bool // default.rsync with rsync's rsh instead of default.rsyncssh
}

// LsyncdConfig renders the Lua config. Every variant carries what is
// needed to connect at all and to mirror faithfully; only the tuned ones
// change the delay and add the ControlMaster. Setting by setting:
//
//   - nodaemon: the harness supervises lsyncd (and kills its process group
//     on Stop), as systemd would; logfile and statusFile are where lsyncd
//     says what it did and what is queued (`-log all` on the command line
//     for a diagnosis: every event, every delay, every spawned command).
//   - insist: keep running and retry when the peer is unreachable at
//     start-up, as a daemon must (scenario 6 stops the peer).
//   - maxProcesses stays 1, the default: default.rsyncssh refuses anything
//     else (its moves must run in order), and for default.rsync a second
//     rsync of the same burst would only contend for the same 2 cores.
//   - delay = 0 (tuned): act on each event at once. The 15 s default exists
//     to batch changes into fewer rsync runs; events that arrive while an
//     rsync runs are still batched into the next one.
//   - rsync archive (permissions, times, symlinks, devices; the bench
//     compares modes and symlink targets), compress off: on loopback
//     compression only costs CPU. Delta transfer stays rsync's default.
//     delete stays lsyncd's default (true): the peer is a mirror.
//   - ssh: the port, key and known_hosts of the peer, StrictHostKeyChecking
//     (no trust on first use) and BatchMode (never prompt, fail instead).
//   - ControlMaster=auto, ControlPath, ControlPersist=600 (tuned): the
//     first ssh becomes a master connection kept for 10 minutes, every
//     later rsync, `mv` and `rm` is a session on it instead of a TCP and
//     SSH handshake each. The master outlives lsyncd; Stop ends it.
func LsyncdConfig(source, target string, peer SSHPeer, v LsyncdVariant, logFile, statusFile, controlPath string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "settings {\n  nodaemon = true,\n  logfile = %s,\n  statusFile = %s,\n  insist = true,\n}\n\n",
		luaString(logFile), luaString(statusFile))
	opts := [][2]string{
		{"UserKnownHostsFile", peer.KnownHosts},
		{"StrictHostKeyChecking", "yes"},
		{"BatchMode", "yes"},
	}
	if v.Tuned {
		opts = append(opts,
			[2]string{"ControlMaster", "auto"},
			[2]string{"ControlPath", controlPath},
			[2]string{"ControlPersist", "600"},
		)
	}
	if v.Rsync {
		fmt.Fprintf(&b, "sync {\n  default.rsync,\n  source = %s,\n  target = %s,\n",
			luaString(source), luaString(peer.User+"@"+peer.Host+":"+target))
	} else {
		fmt.Fprintf(&b, "sync {\n  default.rsyncssh,\n  source = %s,\n  host = %s,\n  targetdir = %s,\n",
			luaString(source), luaString(peer.User+"@"+peer.Host), luaString(target))
	}
	if v.Tuned {
		b.WriteString("  delay = 0,\n")
	}
	b.WriteString("  rsync = {\n    archive = true,\n    compress = false,\n")
	if v.Rsync {
		// default.rsync has no ssh table: the same ssh command line goes
		// to rsync as its remote shell (rsync splits it on spaces; the
		// harness's paths have none).
		rsh := []string{"/usr/bin/ssh", "-p", strconv.Itoa(peer.Port), "-i", peer.Identity}
		for _, o := range opts {
			rsh = append(rsh, "-o", o[0]+"="+o[1])
		}
		fmt.Fprintf(&b, "    rsh = %s,\n", luaString(strings.Join(rsh, " ")))
		b.WriteString("  },\n}\n")
		return b.String()
	}
	b.WriteString("  },\n")
	fmt.Fprintf(&b, "  ssh = {\n    port = %d,\n    identityFile = %s,\n    options = {\n", peer.Port, luaString(peer.Identity))
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
	cfg := LsyncdConfig(source, target, l.Peer, LsyncdVariant{Tuned: l.Tuned, Rsync: l.Rsync},
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

// LogMentions returns the last max lines of lsyncd's output that name
// rel: its own log lines (moves, deletes, errors) and what its children
// said on stderr (`mv: cannot stat ...`), not the path lists it hands
// rsync. That is what lsyncd did about a path that ended up wrong.
func (l *Lsyncd) LogMentions(rel string, max int) []string {
	b, err := os.ReadFile(filepath.Join(l.Dir, "lsyncd.out"))
	if err != nil || rel == "" {
		return nil
	}
	// lsyncd's own lines start with the time; a child's complaint (mv's
	// "cannot stat" of the move's origin) follows the line of its action.
	own := regexp.MustCompile(`^\d\d:\d\d:\d\d `)
	var out []string
	lines := strings.Split(string(b), "\n")
	for i, line := range lines {
		if !strings.Contains(line, rel) || strings.HasPrefix(line, "/") {
			continue
		}
		out = append(out, strings.TrimSpace(line))
		if own.MatchString(line) && i+1 < len(lines) {
			if next := lines[i+1]; next != "" && !own.MatchString(next) && !strings.HasPrefix(next, "/") {
				out = append(out, strings.TrimSpace(next))
			}
		}
	}
	if len(out) > max {
		out = out[len(out)-max:]
	}
	return out
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
