package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/orchestrator"
)

// TestPrintStatusArbiterAndSelfFence: `lockstep status` names the etcd
// leader, the lease, the term and the eligibility, and shouts when a
// self-fence does not hold.
func TestPrintStatusArbiterAndSelfFence(t *testing.T) {
	now := time.Now()
	st := &orchestrator.Status{
		Node: "web1", Role: orchestrator.RoleFenced, RoleSince: now.Add(-time.Minute), GeneratedAt: now,
		Health:    orchestrator.Health{Agent: orchestrator.AgentMaint, Reason: "SELF-FENCE NOT HOLDING"},
		SelfFence: &orchestrator.SelfFenceStatus{Since: now.Add(-10 * time.Second), Attempts: 4, LastError: "server has gone away"},
		Arbiter: &orchestrator.ArbiterStatus{Kind: "etcd", Endpoints: []string{"https://10.0.0.1:2379"}, Connected: true,
			Leader: "web2", Term: 42, Lease: "694da23b", LeaseTTL: 4 * time.Second, LeaseValid: 1500 * time.Millisecond, Eligible: false},
	}
	var b bytes.Buffer
	printStatus(&b, st)
	out := b.String()
	for _, want := range []string{"SELF-FENCE NOT HOLDING since 10s ago (4 attempts): server has gone away",
		"arbiter etcd https://10.0.0.1:2379: connected true, leader web2 (term 42), this node leader false",
		"lease 694da23b (ttl 4s, valid for 1.5s before demotion), eligible false"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}
