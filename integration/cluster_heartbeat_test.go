package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestClusterForgedAndReplayedHeartbeats captures a real heartbeat of the
// writer and plays it back, tampered and garbled, at the standby from a
// third namespace. The cluster config lists a third member n3 that runs no
// daemon, so the writer sends its heartbeats there too and the test can
// capture them without sniffing. None of the datagrams may change a role;
// each is counted under its reason.
func TestClusterForgedAndReplayedHeartbeats(t *testing.T) {
	c := newCluster(t, 3, nil)
	n1, n2 := c.node(1), c.node(2)
	// n3 is a configured member without a daemon: the attacker's seat.
	attacker := c.nw.Node(3)
	var ln net.PacketConn
	if err := attacker.Do(func() (err error) {
		ln, err = net.ListenPacket("udp", net.JoinHostPort(attacker.Addr.String(), strconv.Itoa(heartbeatPort)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c.nodes = c.nodes[:2] // only n1 and n2 run; n3 stays in their configs
	c.extraMembers = []member{{Name: attacker.Name, Address: net.JoinHostPort(attacker.Addr.String(), strconv.Itoa(heartbeatPort))}}
	n1.start()
	n2.start()
	w := c.waitWriter(15 * time.Second)
	s := c.other(w)

	// Capture one authentic heartbeat of the writer.
	var captured []byte
	buf := make([]byte, 64<<10)
	_ = ln.SetReadDeadline(time.Now().Add(5 * time.Second))
	for captured == nil {
		n, from, err := ln.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no heartbeat reached n3: %v", err)
		}
		if from.(*net.UDPAddr).IP.Equal(w.node.Addr.AsSlice()) {
			captured = append([]byte(nil), buf[:n]...)
		}
	}
	if !bytes.Contains(captured, []byte(`"node":"`+w.node.Name+`"`)) {
		t.Fatalf("captured datagram does not look like %s's heartbeat: %q", w.node.Name, captured)
	}
	// Let the standby see newer heartbeats than the captured one.
	time.Sleep(3 * c.keepalive)

	before := rejectedCounts(t, s)
	target := net.JoinHostPort(s.node.Addr.String(), strconv.Itoa(heartbeatPort))
	send := func(pkt []byte) {
		t.Helper()
		conn, err := attacker.DialContext(t.Context(), "udp", target)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write(pkt); err != nil {
			t.Fatal(err)
		}
	}

	// 1. Replay: authentic, but already seen (or too old).
	send(captured)
	// 2. Forgery: the writer "announces" it left (which would make the
	// standby take over at once), with the MAC of the original body.
	forged := bytes.Replace(captured, []byte(`"leaving":false`), []byte(`"leaving":true `), 1)
	if bytes.Equal(forged, captured) {
		t.Fatalf("captured heartbeat has no leaving field to tamper with: %q", captured)
	}
	for range 5 {
		send(forged)
	}
	// 3. Garbage.
	junk := make([]byte, 200)
	_, _ = rand.Read(junk)
	send(junk)

	waitFor(t, 3*time.Second, "the standby to count all three kinds of rejection", func() bool {
		after := rejectedCounts(t, s)
		replayed := after["replay"]+after["stale"] > before["replay"]+before["stale"]
		return replayed && after["auth"] >= before["auth"]+5 && after["malformed"] > before["malformed"]
	})
	after := rejectedCounts(t, s)
	t.Logf("rejections on %s before %v, after %v", s.node.Name, before, after)

	// Nothing changed: the forged "leaving" never triggered a takeover.
	hold := time.Now().Add(4 * c.keepalive)
	for time.Now().Before(hold) {
		if s.holdsVIP() {
			t.Fatalf("%s took the VIP after forged heartbeats", s.node.Name)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := s.role(t.Context()); r != "standby" {
		t.Errorf("%s role = %q after forged heartbeats, want standby", s.node.Name, r)
	}
	if r := w.role(t.Context()); r != "writer" {
		t.Errorf("%s role = %q after forged heartbeats, want writer", w.node.Name, r)
	}
	st, err := s.status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	low := strings.ToLower(string(st.raw))
	if !strings.Contains(low, "replayed") && !strings.Contains(low, "stale") {
		t.Errorf("%s /status events do not mention the replayed heartbeat", s.node.Name)
	}
	if !strings.Contains(low, "failed authentication") {
		t.Errorf("%s /status events do not mention the forged heartbeat", s.node.Name)
	}
}

// TestClusterWrongKey: a node started with another key is reported clearly
// (which node, which setting), and neither node hands the VIP over because
// of it.
func TestClusterWrongKey(t *testing.T) {
	c := newCluster(t, 2, nil)
	n1, n2 := c.node(1), c.node(2)
	n1.start()
	w := c.waitWriter(15 * time.Second)
	if w != n1 {
		t.Fatalf("writer = %s, want n1 (the only node running)", w.node.Name)
	}

	other := filepath.Join(n2.dir, "other.key")
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	if err := os.WriteFile(other, []byte(hex.EncodeToString(key)), 0o600); err != nil {
		t.Fatal(err)
	}
	n2.keyFile = other
	n2.start()

	waitFor(t, 5*time.Second, "n1 to report n2's heartbeats as failing authentication", func() bool {
		st, err := n1.status(t.Context())
		return err == nil && strings.Contains(string(st.raw), "check cluster.key_file")
	})
	st, _ := n1.status(t.Context())
	if !strings.Contains(string(st.raw), n2.node.Addr.String()) {
		t.Errorf("n1's key warning does not name n2's address %s", n2.node.Addr)
	}
	// n2 hears only unauthenticated datagrams from n1: it must not take the
	// VIP while n1, probably alive, holds it.
	hold := time.Now().Add(c.deadtime + 2*time.Second)
	for time.Now().Before(hold) {
		if n2.holdsVIP() {
			t.Fatal("n2 (wrong key) took the VIP while n1 holds it")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !n1.holdsVIP() {
		t.Error("n1 lost the VIP because of a node with the wrong key")
	}
	st2, err := n2.status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(st2.raw), "check cluster.key_file") {
		t.Errorf("n2 does not report the key mismatch: %s", st2.raw)
	}
	t.Logf("n2 role with the wrong key: %s", st2.Role)
}

// rejectedCounts reads lockstep_heartbeat_rejected_total by reason.
func rejectedCounts(t *testing.T, d *daemon) map[string]float64 {
	t.Helper()
	_, body, err := d.get(t.Context(), "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "lockstep_heartbeat_rejected_total{") {
			continue
		}
		_, rest, _ := strings.Cut(line, `reason="`)
		reason, _, _ := strings.Cut(rest, `"`)
		f := strings.Fields(line)
		var v float64
		fmt.Sscan(f[len(f)-1], &v)
		out[reason] = v
	}
	return out
}
