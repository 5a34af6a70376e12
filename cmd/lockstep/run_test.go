package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/internal/testbed"
	"github.com/lockstep-ha/lockstep/orchestrator"
)

func freePort(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type runNode struct {
	cfg, state, listen string
}

// writeRunConfigs writes two node configs sharing a key, each with one
// LSB script resource whose running state is a file.
func writeRunConfigs(t *testing.T, witness string) map[string]runNode {
	t.Helper()
	dir := t.TempDir()
	key := filepath.Join(dir, "cluster.key")
	if err := os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hb := map[string]string{"web1": freePort(t, "udp"), "web2": freePort(t, "udp")}
	out := map[string]runNode{}
	for _, n := range []string{"web1", "web2"} {
		state := filepath.Join(dir, n+".running")
		script := filepath.Join(dir, n+"-svc")
		os.WriteFile(script, []byte(fmt.Sprintf("#!/bin/sh\ncase \"$1\" in start) touch %q;; stop) rm -f %q;; status) [ -e %q ] && exit 0; exit 3;; esac\n", state, state, state)), 0o755)
		listen := freePort(t, "tcp")
		cfg := testbed.RunConfig{
			Node:       n,
			Listen:     listen,
			KeyFile:    key,
			Keepalive:  50 * time.Millisecond,
			Deadtime:   300 * time.Millisecond,
			AgentCheck: freePort(t, "tcp"),
			Members:    []testbed.Member{{Name: "web1", Address: hb["web1"]}, {Name: "web2", Address: hb["web2"]}},
			Witness:    []string{witness},
			Resources:  []testbed.Resource{{Exec: script, Timeout: 5 * time.Second}},
		}
		p := filepath.Join(dir, n+".yaml")
		if err := cfg.Write(p); err != nil {
			t.Fatal(err)
		}
		out[n] = runNode{cfg: p, state: state, listen: listen}
	}
	return out
}

// startRun runs `lockstep run` in-process until the test ends.
func startRun(t *testing.T, cfg string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs([]string{"run", "-c", cfg})
		if err := root.ExecuteContext(ctx); err != nil {
			t.Errorf("run %s: %v\n%s", cfg, err, out.String())
		}
	})
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

func waitCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// startWitness runs a tcp:// witness (a listener that accepts and closes)
// until the test ends and returns its address.
func startWitness(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(testbed.Serve(l, func(context.Context, net.Conn) {}))
	return l.Addr().String()
}

func TestRunAndStatus(t *testing.T) {
	nodes := writeRunConfigs(t, "tcp://"+startWitness(t))
	stop1 := startRun(t, nodes["web1"].cfg)
	startRun(t, nodes["web2"].cfg)
	waitCond(t, "web1 holding its resource", func() bool { return exists(nodes["web1"].state) })

	code, out := runCLI(t, "status", "-c", nodes["web1"].cfg)
	if code != 0 || !strings.Contains(out, "role WRITER") || !strings.Contains(out, "web2") || !strings.Contains(out, "started") {
		t.Fatalf("status: code %d\n%s", code, out)
	}
	code, out = runCLI(t, "status", "-c", nodes["web2"].cfg, "--json")
	var st orchestrator.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Role != orchestrator.RoleStandby || st.Node != "web2" {
		t.Fatalf("status --json: code %d\n%s", code, out)
	}

	// SIGHUP: both in-process daemons reload; web2's file has a new deadtime.
	b, _ := os.ReadFile(nodes["web2"].cfg)
	os.WriteFile(nodes["web2"].cfg, bytes.Replace(b, []byte("deadtime: 300ms"), []byte("deadtime: 400ms"), 1), 0o600)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var last string
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(last, "reload: cluster.deadtime 300ms -> 400ms applied") {
		if time.Now().After(deadline) {
			t.Fatalf("web2 did not reload:\n%s", last)
		}
		time.Sleep(20 * time.Millisecond)
		_, last = runCLI(t, "status", "-c", nodes["web2"].cfg)
	}

	// SIGTERM-equivalent on web1: resources released, web2 takes over.
	stop1()
	if exists(nodes["web1"].state) {
		t.Fatal("web1 kept its resource after shutdown")
	}
	waitCond(t, "web2 holding its resource", func() bool { return exists(nodes["web2"].state) })
	if code, out := runCLI(t, "status", "-c", nodes["web1"].cfg); code != exitUsage || !strings.Contains(out, "cannot reach lockstep run") {
		t.Fatalf("status of a stopped daemon: code %d %q", code, out)
	}
}

func TestStatusUnhealthyWhenIsolated(t *testing.T) {
	// The witness port is closed and the peer never starts: web1 fences itself.
	nodes := writeRunConfigs(t, "tcp://"+freePort(t, "tcp"))
	startRun(t, nodes["web1"].cfg)
	var out string
	waitCond(t, "web1 fenced", func() bool {
		var code int
		code, out = runCLI(t, "status", "-c", nodes["web1"].cfg)
		return code == exitFailure && strings.Contains(out, "role FENCED")
	})
	if !strings.Contains(out, "agent check: maint") || !strings.Contains(out, "isolated") {
		t.Fatalf("status output:\n%s", out)
	}
}

func TestRunConfigErrors(t *testing.T) {
	dir := t.TempDir()
	noCluster := filepath.Join(dir, "nocluster.yaml")
	os.WriteFile(noCluster, []byte("node: web1\nsync:\n  - name: d\n    source: "+dir+"\n    targets:\n      - {name: local, path: "+filepath.Join(dir, "dst")+"}\n"), 0o600)
	if code, out := runCLI(t, "run", "-c", noCluster); code != exitUsage || !strings.Contains(out, "no cluster: section") {
		t.Fatalf("no cluster: code %d %q", code, out)
	}
	nodes := writeRunConfigs(t, "tcp://127.0.0.1:1")
	key := filepath.Join(filepath.Dir(nodes["web1"].cfg), "cluster.key")
	os.Chmod(key, 0o644)
	code, out := runCLI(t, "run", "-c", nodes["web1"].cfg)
	if code != exitUsage || !strings.Contains(out, "key_file") || !strings.Contains(out, "chmod 600") {
		t.Fatalf("group-readable key: code %d %q", code, out)
	}
	if strings.Contains(out, "0123456789abcdef") {
		t.Fatal("the key leaked into the output")
	}
}
