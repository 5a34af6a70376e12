package orchestrator

import (
	"strings"
	"testing"
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
