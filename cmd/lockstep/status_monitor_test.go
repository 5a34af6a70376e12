package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/orchestrator"
)

// The monitoring state is part of the human status: why the node is not
// eligible, what is being recovered, restarts, failures and tracks.
func TestPrintStatusMonitoring(t *testing.T) {
	now := time.Now()
	st := &orchestrator.Status{
		Node: "web1", Role: orchestrator.RoleStandby, GeneratedAt: now,
		Health:      orchestrator.Health{OK: false, Agent: orchestrator.AgentDrain, Reason: "track gw failing: exited 1"},
		NotEligible: "resource /etc/init.d/app failed (restart limit reached)",
		Recovering:  "restarting /etc/init.d/app",
		Resources: []orchestrator.ResourceStatus{{
			Name: "/etc/init.d/app", Kind: "exec", State: orchestrator.ResourceStopped, Restarts: 3,
			Failure: &orchestrator.ResourceFailure{Resource: "/etc/init.d/app", Reason: "restart limit reached", Since: now, Expires: now.Add(10 * time.Minute)},
		}},
		Tracks: []orchestrator.TrackStatus{{Name: "gw", Checked: true, LastError: "exited 1", LastCheck: now}, {Name: "app"}},
	}
	var b strings.Builder
	printStatus(&b, st)
	out := b.String()
	for _, want := range []string{
		"not eligible for the writer role: resource /etc/init.d/app failed",
		"recovering: restarting /etc/init.d/app",
		"RESTARTS", "FAILED, not eligible until `lockstep clear /etc/init.d/app`",
		"TRACK", "gw", "exited 1", "unchecked",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}

func TestClearCommand(t *testing.T) {
	if code, out := runCLI(t, "clear", "--addr", "127.0.0.1:1"); code != exitUsage || !strings.Contains(out, "RESOURCE or give --all") {
		t.Fatalf("no resource: %d %s", code, out)
	}
	if code, out := runCLI(t, "clear", "--addr", "127.0.0.1:1", "--all", "x"); code != exitUsage {
		t.Fatalf("both: %d %s", code, out)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/clear" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		if r.URL.Query().Get("resource") != "/etc/init.d/app" {
			http.Error(w, "no failure recorded for \""+r.URL.Query().Get("resource")+"\"", http.StatusNotFound)
			return
		}
		io.WriteString(w, "cleared /etc/init.d/app\n")
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	if code, out := runCLI(t, "clear", "--addr", addr, "/etc/init.d/app"); code != exitOK || !strings.Contains(out, "cleared /etc/init.d/app") {
		t.Fatalf("clear: %d %s", code, out)
	}
	if code, out := runCLI(t, "clear", "--addr", addr, "/etc/init.d/other"); code != exitFailure || !strings.Contains(out, "no failure recorded") {
		t.Fatalf("clear unknown: %d %s", code, out)
	}
	if code, out := runCLI(t, "clear", "--addr", "127.0.0.1:1", "x"); code != exitUsage || !strings.Contains(out, "cannot reach") {
		t.Fatalf("daemon down: %d %s", code, out)
	}
}
