package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

func writeSyncConfig(t *testing.T, src string, targets map[string]string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("node: web1\nsync:\n  - name: docroot\n    source: " + src + "\n    state_dir: " + t.TempDir() + "\n    exclude: [\"*.swp\"]\n    targets:\n")
	for name, dir := range targets {
		b.WriteString("      - {name: " + name + ", path: " + dir + "}\n")
	}
	p := filepath.Join(t.TempDir(), "lockstep.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSyncOnceExitCodes(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	lsynctest.WriteFile(t, src, "index.html", "hello", 0o644, time.Unix(1_600_000_000, 0))
	lsynctest.WriteFile(t, src, "a/b.css", "body{}", 0o600, time.Time{})
	lsynctest.WriteFile(t, dst, "stale.txt", "old", 0o644, time.Time{})
	cfg := writeSyncConfig(t, src, map[string]string{"local": dst})

	code, out := runCLI(t, "sync", "-c", cfg, "--once")
	if code != exitOK || !strings.Contains(out, "docroot -> local: in sync") || !strings.Contains(out, "docroot -> local: sync state /") {
		t.Fatalf("code %d, output:\n%s", code, out)
	}
	lsynctest.AssertTreesEqual(t, src, dst)

	// A target that cannot be reached: exit 1, naming it.
	missing := filepath.Join(t.TempDir(), "not-mounted")
	cfg2 := writeSyncConfig(t, src, map[string]string{"local": dst, "nfs": missing})
	code, out = runCLI(t, "sync", "-c", cfg2, "--once")
	if code != exitFailure || !strings.Contains(out, "docroot -> nfs: DIFFERS") || !strings.Contains(out, "docroot -> local: in sync") {
		t.Fatalf("code %d, output:\n%s", code, out)
	}

	if code, out := runCLI(t, "sync", "-c", cfg, "--once", "--job", "nope"); code != exitUsage || !strings.Contains(out, `no sync job named "nope"`) {
		t.Fatalf("unknown job: code %d, output:\n%s", code, out)
	}
	if code, _ := runCLI(t, "sync", "--once"); code != exitUsage {
		t.Fatalf("missing -c: code %d", code)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("node: web1\nsync:\n  - name: d\n    source: relative\n    targets: [{name: x, path: /tmp/x}]\n"), 0o600)
	if code, out := runCLI(t, "sync", "-c", bad, "--once"); code != exitUsage || !strings.Contains(out, "source") {
		t.Fatalf("bad config: code %d, output:\n%s", code, out)
	}
}

func TestSyncDaemonStopsOnCancel(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	cfg := writeSyncConfig(t, src, map[string]string{"local": dst})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	root.SetArgs([]string{"sync", "-c", cfg, "--metrics-addr", addr})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	lsynctest.WriteFile(t, src, "live/page.html", "live", 0o644, time.Time{})
	lsynctest.WaitTreesEqual(t, src, dst, 30*time.Second)
	// The metrics carry the sync counters and the daemon's own memory.
	var body string
	waitFor(t, "metrics on "+addr, func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return resp.StatusCode == http.StatusOK
	})
	for _, want := range []string{"lockstep_sync_bytes_total", "go_memstats_heap_inuse_bytes", "process_resident_memory_bytes"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("sync returned %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("sync did not stop on cancellation")
	}
}

// TestSyncOnceMassDeleteNeedsConfirmation: an empty source (an unmounted
// volume) deletes nothing; the operator confirms with --allow-mass-delete.
func TestSyncOnceMassDeleteNeedsConfirmation(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	for _, n := range []string{"a.html", "b.html", "c/d.css"} {
		lsynctest.WriteFile(t, dst, n, "on the peer only", 0o644, time.Time{})
	}
	cfg := writeSyncConfig(t, src, map[string]string{"local": dst})
	code, out := runCLI(t, "sync", "-c", cfg, "--once")
	if code != exitFailure || !strings.Contains(out, "HELD 4 deletion(s): the source root is empty") {
		t.Fatalf("code %d, output:\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(dst, "c", "d.css")); err != nil {
		t.Fatalf("deleted without confirmation: %v", err)
	}
	if code, out := runCLI(t, "sync", "-c", cfg, "--allow-mass-delete"); code != exitUsage {
		t.Fatalf("--allow-mass-delete without --once: code %d, output:\n%s", code, out)
	}
	code, out = runCLI(t, "sync", "-c", cfg, "--once", "--allow-mass-delete")
	if code != exitOK {
		t.Fatalf("confirmed: code %d, output:\n%s", code, out)
	}
	lsynctest.AssertTreesEqual(t, src, dst)
}
