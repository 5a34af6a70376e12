package orchestrator

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// lsbScript writes an LSB script that appends "<name> <action>" to log
// and keeps its running state in a file next to it. extra is shell code
// run first (to make it fail or hang).
func lsbScript(t testing.TB, dir, name, log, extra string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	state := filepath.Join(dir, name+".running")
	body := fmt.Sprintf(`#!/bin/sh
echo "%s $1" >> %q
%s
case "$1" in
start) touch %q ;;
stop) rm -f %q ;;
status) [ -e %q ] && exit 0; exit 3 ;;
*) exit 2 ;;
esac
`, name, log, extra, state, state, state)
	if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func readLines(t testing.TB, p string) []string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(b)), " ", "_"))
}

func TestExecLSBCodes(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "calls")
	e := NewExec(lsbScript(t, dir, "svc", log, ""), 5*time.Second)
	ctx := context.Background()
	if run, err := e.Running(ctx); err != nil || run {
		t.Fatalf("before start: running=%v err=%v (status 3 means stopped)", run, err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if run, err := e.Running(ctx); err != nil || !run {
		t.Fatalf("after start: running=%v err=%v", run, err)
	}
	for range 2 { // stop is idempotent
		if err := e.Stop(ctx); err != nil {
			t.Fatal(err)
		}
	}
	bad := NewExec(lsbScript(t, dir, "bad", log, `[ "$1" = status ] && { echo broken >&2; exit 4; }; [ "$1" = start ] && { echo cannot bind >&2; exit 1; }`), 5*time.Second)
	if _, err := bad.Running(ctx); err == nil || !strings.Contains(err.Error(), "exited 4") {
		t.Fatalf("status 4: %v", err)
	}
	if err := bad.Start(ctx); err == nil || !strings.Contains(err.Error(), "exited 1") || !strings.Contains(err.Error(), "cannot bind") {
		t.Fatalf("failing start: %v", err)
	}
}

func TestExecTimeoutKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	// The script starts a child that would outlive it, then hangs.
	hang := fmt.Sprintf(`[ "$1" = start ] && { sleep 60 & echo $! > %q; sleep 60; }`, pidFile)
	e := NewExec(lsbScript(t, dir, "hang", filepath.Join(dir, "calls"), hang), 300*time.Millisecond)
	start := time.Now()
	err := e.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "timed out") || !strings.Contains(err.Error(), "process group killed") {
		t.Fatalf("want timeout, got %v", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("timeout took %s", el)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		// A zombie awaiting its reaper still answers kill 0; check state.
		if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); strings.Contains(string(st), ") Z") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %d of the hanging script survived the timeout", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func newTestGroup(t *testing.T, res []Resource) (*Group, *EventLog, *Metrics) {
	ev := NewEventLog(discardLogger())
	m := NewMetrics(prometheus.NewRegistry())
	return NewGroup(res, ev, m), ev, m
}

func TestGroupOrder(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "calls")
	var res []Resource
	for _, n := range []string{"one", "two", "three"} {
		res = append(res, NewExec(lsbScript(t, dir, n, log, ""), 5*time.Second))
	}
	g, _, m := newTestGroup(t, res)
	ctx := context.Background()
	if err := g.Acquire(ctx, "test"); err != nil {
		t.Fatal(err)
	}
	if held := g.Held(); len(held) != 3 {
		t.Fatalf("held %v", held)
	}
	if err := g.Release(ctx, "test"); err != nil {
		t.Fatal(err)
	}
	want := "one_start two_start three_start three_stop two_stop one_stop"
	if got := strings.Join(readLines(t, log), " "); got != want {
		t.Fatalf("calls:\n got %s\nwant %s", got, want)
	}
	if g.Holding() {
		t.Fatal("still holding after release")
	}
	if n := metricValue(t, m.resourceActions.WithLabelValues(res[1].Name(), "start", "ok")); n != 1 {
		t.Fatalf("resource action metric %v", n)
	}
}

func TestGroupFailedStartReleasesInReverse(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "calls")
	res := []Resource{
		NewExec(lsbScript(t, dir, "one", log, ""), 5*time.Second),
		NewExec(lsbScript(t, dir, "two", log, ""), 5*time.Second),
		NewExec(lsbScript(t, dir, "hang", log, `[ "$1" = start ] && sleep 60`), 300*time.Millisecond),
		NewExec(lsbScript(t, dir, "four", log, ""), 5*time.Second),
	}
	g, ev, m := newTestGroup(t, res)
	err := g.Acquire(context.Background(), "test")
	if err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("want timeout error, got %v", err)
	}
	want := "one_start two_start hang_start hang_stop two_stop one_stop"
	if got := strings.Join(readLines(t, log), " "); got != want {
		t.Fatalf("calls:\n got %s\nwant %s", got, want)
	}
	st := g.Status()
	if st[2].State != ResourceFailed || !strings.Contains(st[2].LastError, "timed out") {
		t.Fatalf("hanging resource status %+v", st[2])
	}
	if st[0].State != ResourceStopped || st[3].State != ResourceStopped {
		t.Fatalf("status %+v", st)
	}
	found := false
	for _, e := range ev.List() {
		if e.Kind == EventResource && strings.Contains(e.Message, "start "+res[2].Name()+" failed") && strings.Contains(e.Message, "releasing the group") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no failure event in %+v", ev.List())
	}
	if n := metricValue(t, m.resourceActions.WithLabelValues(res[2].Name(), "start", "error")); n != 1 {
		t.Fatalf("error metric %v", n)
	}
}

func TestReleaseLeftovers(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "calls")
	res := []Resource{
		NewExec(lsbScript(t, dir, "one", log, ""), 5*time.Second),
		NewExec(lsbScript(t, dir, "two", log, ""), 5*time.Second),
		NewExec(lsbScript(t, dir, "three", log, ""), 5*time.Second),
	}
	// "two" left running by a crashed run.
	if err := os.WriteFile(filepath.Join(dir, "two.running"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	g, _, _ := newTestGroup(t, res)
	if err := g.ReleaseLeftovers(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := "one_status two_status three_status two_stop one_stop"
	if got := strings.Join(readLines(t, log), " "); got != want {
		t.Fatalf("calls:\n got %s\nwant %s", got, want)
	}
}
