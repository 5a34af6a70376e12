package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/lockstep-ha/lockstep/internal/testbed/sshd"
)

// Sizes are the scenario parameters; smoke mode shrinks every one.
type Sizes struct {
	SingleFiles        int // scenario 1 samples per tool
	SingleFilesDefault int // scenario 1 samples for lsyncd's defaults (15 s each)
	BurstFromGoroot    bool
	BurstFiles         int // generated burst when not copying GOROOT/src
	BigDirs, BigFiles  int
	StormFiles         int
	StormWrites        int
	StormWindow        time.Duration
	StormFileSize      int
	RenameFiles        int
	OutageChanges      int
	FenceRuns          int
	ChecksumTables     int
	ChecksumRows       int
	FailoverRuns       int
	ChurnRounds        int // scenario 10
	ChurnOps           int
	ChurnTimeout       time.Duration // per round; past it the round is "never"
	ConvergeTimeout    time.Duration
	BigTreeTimeout     time.Duration // initial sync of the big tree
	ScaleFiles         int           // scenario 16 (directories: a tenth)
	// ProbeWait bounds the same-second rewrite probe (scenario 6): a tool
	// that loses the update costs this much.
	ProbeWait time.Duration
}

func fullSizes() Sizes {
	return Sizes{
		SingleFiles: 200, SingleFilesDefault: 3,
		BurstFromGoroot: true,
		BigDirs:         10_000, BigFiles: 100_000,
		StormFiles: 100, StormWrites: 10_000, StormWindow: 2 * time.Second, StormFileSize: 8 << 10,
		RenameFiles:    5_000,
		OutageChanges:  1_000,
		FenceRuns:      20,
		ChecksumTables: 4, ChecksumRows: 250_000,
		FailoverRuns: 20,
		ChurnRounds:  5, ChurnOps: 3000, ChurnTimeout: 30 * time.Second,
		ConvergeTimeout: 3 * time.Minute,
		BigTreeTimeout:  5 * time.Minute,
		ScaleFiles:      100_000,
		ProbeWait:       10 * time.Second,
	}
}

func smokeSizes() Sizes {
	return Sizes{
		SingleFiles: 5, SingleFilesDefault: 0,
		BurstFiles: 50,
		BigDirs:    20, BigFiles: 200,
		StormFiles: 10, StormWrites: 300, StormWindow: 300 * time.Millisecond, StormFileSize: 2 << 10,
		RenameFiles:    100,
		OutageChanges:  50,
		FenceRuns:      2,
		ChecksumTables: 1, ChecksumRows: 1_000,
		FailoverRuns: 1,
		ChurnRounds:  1, ChurnOps: 300, ChurnTimeout: 20 * time.Second,
		ConvergeTimeout: 30 * time.Second,
		BigTreeTimeout:  30 * time.Second,
		ScaleFiles:      300,
		ProbeWait:       3 * time.Second,
	}
}

// sshEnv is the one loopback sshd both tools talk to, behind the counting
// proxy.
type sshEnv struct {
	server *sshd.Server
	proxy  *CountingProxy
	peer   SSHPeer
}

// SSH starts (once) the sshd and proxy shared by the docroot scenarios.
func (e *Env) SSH() (*sshEnv, error) {
	if e.ssh != nil {
		return e.ssh, nil
	}
	if _, err := os.Stat(sshd.Path); err != nil {
		return nil, skipf("OpenSSH server not installed (%s): install openssh-server", sshd.Path)
	}
	dir := filepath.Join(e.Dir, "sshd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	srv, err := sshd.New(dir)
	if err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	proxy := NewCountingProxy(srv.Addr())
	if err := proxy.Start(); err != nil {
		_ = srv.Close()
		return nil, err
	}
	// Both tools verify the host key of the address they dial: the proxy's.
	kh := filepath.Join(dir, "known_hosts.proxy")
	line := knownhosts.Line([]string{knownhosts.Normalize(proxy.Addr())}, srv.HostKey())
	if err := os.WriteFile(kh, []byte(line+"\n"), 0o644); err != nil {
		proxy.Stop()
		_ = srv.Close()
		return nil, err
	}
	e.ssh = &sshEnv{
		server: srv,
		proxy:  proxy,
		peer: SSHPeer{
			Host:       "127.0.0.1",
			Port:       proxy.Port(),
			User:       srv.User,
			Identity:   srv.IdentityFile,
			KnownHosts: kh,
		},
	}
	return e.ssh, nil
}

func (s *sshEnv) close() {
	s.proxy.Stop()
	_ = s.server.Close()
}

// syncTools returns the contenders of a docroot scenario, each with its
// own directory for config and logs. withDefaults adds lsyncd with its
// default settings (15 s delay), which only fits scenarios where one
// extra 15 s wait is affordable.
func (e *Env) syncTools(dir string, withDefaults bool) ([]SyncTool, error) {
	s, err := e.SSH()
	if err != nil {
		return nil, err
	}
	mk := func(name string) (string, error) {
		d := filepath.Join(dir, name)
		return d, os.MkdirAll(d, 0o700)
	}
	ld, err := mk("tool-lockstep")
	if err != nil {
		return nil, err
	}
	tools := []SyncTool{&LockstepSync{Bin: e.Lockstep, Dir: ld, Peer: s.peer}}
	if _, err := lookTool("lsyncd"); err != nil {
		e.Log.Warn("lsyncd not installed: anchor figures missing", "err", err)
		return tools, nil
	}
	td, err := mk("tool-lsyncd")
	if err != nil {
		return nil, err
	}
	tools = append(tools, &Lsyncd{Dir: td, Peer: s.peer, Tuned: true})
	if withDefaults {
		dd, err := mk("tool-lsyncd-defaults")
		if err != nil {
			return nil, err
		}
		tools = append(tools, &Lsyncd{Dir: dd, Peer: s.peer, Tuned: false})
	}
	return tools, nil
}

// withLsyncdRsync adds lsyncd's other ssh layer, default.rsync, tuned
// like the default.rsyncssh anchor, where the choice of layer decides
// whether lsyncd keeps up at all (see Lsyncd). Nothing is added when
// lsyncd is not installed.
func (e *Env) withLsyncdRsync(dir string, tools []SyncTool) ([]SyncTool, error) {
	if len(tools) < 2 {
		return tools, nil
	}
	s, err := e.SSH()
	if err != nil {
		return nil, err
	}
	d := filepath.Join(dir, "tool-lsyncd-rsync")
	if err := os.MkdirAll(d, 0o700); err != nil {
		return nil, err
	}
	return append(tools, &Lsyncd{Dir: d, Peer: s.peer, Tuned: true, Rsync: true}), nil
}
