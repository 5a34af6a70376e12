package integration

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestClusterDoubleWriterHealsToOne is heartbeat mode's known limit and
// its answer: the node↔node link alone is cut with nftables (both nodes
// still reach the witness), so the standby takes over while the writer
// keeps its role: two writers, both holding the VIP. When the link heals,
// both detect the double writer from the first heartbeats, the writer
// from before the cut (the longer tenure, whose database has every write
// acknowledged before the cut) keeps the role, the other steps down and
// releases the VIP, and both raise the alert (event, /status, metric).
func TestClusterDoubleWriterHealsToOne(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft not installed (apt-get install nftables)")
	}
	c := newCluster(t, 2, nil)
	c.startAll()
	w := c.waitWriter(15 * time.Second)
	s := c.other(w)

	cutLink(t, w.node, s.node)
	healed := false
	t.Cleanup(func() {
		if !healed {
			healLink(t, w.node, s.node)
		}
	})
	waitFor(t, c.deadtime+5*time.Second, "both nodes writers holding the VIP (the cut's double writer)", func() bool {
		return w.role(t.Context()) == "writer" && s.role(t.Context()) == "writer" && w.holdsVIP() && s.holdsVIP()
	})
	// Let the second writer's tenure grow past a few keepalives, as in a
	// real cut: the order must not depend on how long the cut lasted.
	time.Sleep(time.Second)

	healLink(t, w.node, s.node)
	healed = true
	at := time.Now()
	// Deadline: the first heartbeats after the heal (one keepalive), one
	// decision tick, the step-down (VIP and two exec resources), margin.
	deadline := 2*c.keepalive + 2*time.Second
	got := c.waitWriter(deadline + 3*time.Second)
	took := time.Since(at)
	t.Logf("healed: one writer (%s) after %s", got.node.Name, took.Round(time.Millisecond))
	if took > deadline {
		t.Errorf("one writer only %s after the heal, want within %s", took.Round(time.Millisecond), deadline)
	}
	if got != w {
		t.Errorf("%s kept the writer role; want %s, the writer from before the cut", got.node.Name, w.node.Name)
	}
	// It stays that way.
	time.Sleep(5 * c.keepalive)
	if s.holdsVIP() || s.role(t.Context()) == "writer" {
		t.Errorf("%s is writer again or holds the VIP after stepping down", s.node.Name)
	}

	for _, d := range []*daemon{w, s} {
		st, err := d.status(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		var dw struct {
			DoubleWriter *struct {
				Peer, Kept string
				Count      int
			} `json:"double_writer"`
		}
		if err := json.Unmarshal(st.raw, &dw); err != nil {
			t.Fatal(err)
		}
		if dw.DoubleWriter == nil || dw.DoubleWriter.Kept != w.node.Name || dw.DoubleWriter.Peer != c.other(d).node.Name {
			t.Errorf("%s /status double_writer = %+v, want peer %s, kept %s", d.node.Name, dw.DoubleWriter, c.other(d).node.Name, w.node.Name)
		}
		if _, ok := st.findEvent("role", "DOUBLE WRITER"); !ok {
			t.Errorf("%s has no DOUBLE WRITER event", d.node.Name)
		}
		if n := metricSum(t, d, "lockstep_double_writer_detected_total"); n < 1 {
			t.Errorf("%s lockstep_double_writer_detected_total = %v, want >= 1", d.node.Name, n)
		}
		if n := metricSum(t, d, "lockstep_double_writer"); n != 0 {
			t.Errorf("%s lockstep_double_writer = %v after the resolution, want 0", d.node.Name, n)
		}
	}
}

// metricSum adds up every sample of the metric name (all label sets).
func metricSum(t *testing.T, d *daemon, name string) float64 {
	t.Helper()
	_, body, err := d.get(t.Context(), "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || (f[0] != name && !strings.HasPrefix(f[0], name+"{")) {
			continue
		}
		var v float64
		fmt.Sscan(f[len(f)-1], &v)
		sum += v
	}
	return sum
}
