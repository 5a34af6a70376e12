package orchestrator

import (
	"strings"
	"testing"
	"time"
)

// health is a pure function of a RoleStatus; the first matching rule wins.
func TestHealthVerdicts(t *testing.T) {
	up := RoleStatus{Node: "a", DB: "db1", Role: RoleWriter, Decided: true}
	tests := []struct {
		name   string
		edit   func(*RoleStatus)
		agent  string
		reason string
	}{
		{"writer", func(*RoleStatus) {}, AgentUp, RoleWriter},
		{"standby", func(s *RoleStatus) { s.Role = RoleStandby }, AgentUp, RoleStandby},
		{"draining beats everything", func(s *RoleStatus) { s.Draining, s.Role, s.DBFenced = true, RoleFenced, true }, AgentDrain, "draining"},
		{"leaving", func(s *RoleStatus) { s.Leaving = true }, AgentDrain, "draining"},
		{"fenced", func(s *RoleStatus) { s.Role, s.Reason = RoleFenced, "isolated: x" }, AgentMaint, "fenced: isolated: x"},
		{"startup wait", func(s *RoleStatus) { s.Decided = false }, AgentDown, "starting"},
		{"database fenced", func(s *RoleStatus) { s.DBFenced, s.DBReason = true, "lag" }, AgentDown, "database db1 fenced (out of sync): lag"},
		{"database unreachable", func(s *RoleStatus) { s.DBUnreachable = "connection refused" }, AgentDown, "database db1: connection refused"},
	}
	for _, tc := range tests {
		s := up
		tc.edit(&s)
		h := health(s)
		if h.Agent != tc.agent || h.OK != (tc.agent == AgentUp) || !strings.Contains(h.Reason, tc.reason) {
			t.Errorf("%s: %+v, want agent %q reason containing %q", tc.name, h, tc.agent, tc.reason)
		}
	}
}

// The double-writer alert: the node stepping down takes no traffic; the
// one keeping the role serves and still says what happened.
func TestHealthDoubleWriter(t *testing.T) {
	dw := &DoubleWriterStatus{Peer: "a", Kept: "a", Why: "the longer tenure (a) keeps the role", DetectedAt: time.Now(), Active: true, Count: 1}
	loser := health(RoleStatus{Node: "b", Role: RoleWriter, Decided: true, DoubleWriter: dw})
	if loser.OK || !strings.Contains(loser.Reason, "DOUBLE WRITER") {
		t.Fatalf("loser: %+v", loser)
	}
	winDW := *dw
	winDW.Peer = "b"
	winner := health(RoleStatus{Node: "a", Role: RoleWriter, Decided: true, DoubleWriter: &winDW})
	if !winner.OK || !strings.Contains(winner.Reason, "DOUBLE WRITER with b") {
		t.Fatalf("winner: %+v", winner)
	}
}
