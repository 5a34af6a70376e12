package main

import (
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/orchestrator"
)

// A sync target that fell back to SFTP, or whose peer refuses paths, says
// so in the human status: both leave the peer less safe or not in sync.
func TestPrintStatusSyncProtocolAndRefusals(t *testing.T) {
	now := time.Now()
	st := &orchestrator.Status{
		Node: "web1", Role: orchestrator.RoleStandby, GeneratedAt: now,
		Sync: []orchestrator.SyncTargetStatus{
			{Job: "docroot", Target: "web2", Connected: true, Protocol: "receiver v2", LastSync: now},
			{Job: "docroot", Target: "web3", Connected: true, Protocol: "sftp", ProtocolFallback: "exit 127: lockstep not installed",
				Refused: 2, FirstRefused: "uploads/a.php"},
		},
	}
	var b strings.Builder
	printStatus(&b, st)
	out := b.String()
	for _, want := range []string{
		"PROTOCOL", "REFUSED", "receiver v2", "sftp (FALLBACK)",
		"docroot -> web3: REFUSED 2 path(s), first uploads/a.php",
		"docroot -> web3: over SFTP because the lockstep receiver is unavailable on the peer: exit 127: lockstep not installed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "docroot -> web2:") {
		t.Errorf("a target on the receiver with nothing refused has a note:\n%s", out)
	}
}
