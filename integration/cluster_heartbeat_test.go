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
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/orchestrator"
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
// (which node, which setting), and the writer keeps the VIP. Since issue 16
// unauthenticated datagrams change no belief (a forger can send them from
// a dead writer's address to block the failover), so the node with the
// wrong key sees a dead peer: without an arbiter a key mismatch is a
// partition as far as either daemon can tell.
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
	// n1 hears only unauthenticated datagrams from n2: they change nothing
	// it believes, and it keeps the VIP.
	hold := time.Now().Add(c.deadtime + 2*time.Second)
	for time.Now().Before(hold) {
		if !n1.holdsVIP() {
			t.Fatal("n1 lost the VIP because of a node with the wrong key")
		}
		time.Sleep(50 * time.Millisecond)
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

// TestClusterForgedFloodDuringFailover SIGKILLs the writer and, from the
// dead writer's own heartbeat address and port, floods the survivor with
// datagrams that carry the protocol magic but fail authentication: our key
// fingerprint with a bad MAC, another key's fingerprint, and garbage. Before
// issue 16 they made the survivor believe its peer alive with another key
// and hold the failover back; now they must be dropped before they touch
// any state: the failover keeps its deadline, every datagram is counted
// and the log stays rate-limited.
func TestClusterForgedFloodDuringFailover(t *testing.T) {
	c := newCluster(t, 2, nil)
	for _, d := range c.nodes {
		d.start()
	}
	w := c.waitWriter(15 * time.Second)
	s := c.other(w)
	key, err := orchestrator.LoadKey(c.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	fp, _ := hex.DecodeString(key.Fingerprint())
	body := fmt.Sprintf(`{"node":%q,"boot":1,"seq":1,"ts":%d,"role":"writer","decided":true,"resources":["vip"]}`, w.node.Name, time.Now().UnixNano())
	forge := func(fp []byte) []byte {
		pkt := append([]byte("LSH1"), fp...)
		mac := make([]byte, 32)
		_, _ = rand.Read(mac)
		return append(append(pkt, mac...), body...)
	}
	junk := make([]byte, 300)
	_, _ = rand.Read(junk)
	packets := [][]byte{forge(fp), forge([]byte{1, 2, 3, 4}), junk}
	before := rejectedCounts(t, s)

	killed := time.Now()
	w.kill()
	var conn net.PacketConn
	if err := w.node.Do(func() (err error) {
		conn, err = net.ListenPacket("udp", net.JoinHostPort(w.node.Addr.String(), strconv.Itoa(heartbeatPort)))
		return err
	}); err != nil {
		t.Fatalf("bind the dead writer's heartbeat address: %v", err)
	}
	target := &net.UDPAddr{IP: s.node.Addr.AsSlice(), Port: heartbeatPort}
	stop := make(chan struct{})
	var sent atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := conn.WriteTo(packets[i%len(packets)], target); err == nil {
				sent.Add(1)
			}
			if i%20 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	})
	defer func() { close(stop); wg.Wait(); conn.Close() }()

	limit := c.deadtime + time.Second
	var took time.Duration
	waitFor(t, 10*time.Second, "the survivor to hold the VIP and resources under the flood", func() bool {
		if s.holdsVIP() && s.running("a") && s.running("b") {
			took = time.Since(killed)
			return true
		}
		return false
	})
	after := rejectedCounts(t, s)
	t.Logf("failover under a flood of %d forged datagrams from %s's address: %s (deadtime %s); rejected %v -> %v",
		sent.Load(), w.node.Name, took.Round(time.Millisecond), c.deadtime, before, after)
	if took > limit {
		t.Errorf("failover under the flood took %s, want <= deadtime + 1s = %s", took, limit)
	}
	if after["auth"]-before["auth"] < 100 || after["malformed"] <= before["malformed"] {
		t.Errorf("forged datagrams not counted: before %v after %v", before, after)
	}
	st, err := s.status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Role != "writer" {
		t.Errorf("survivor role %q under the flood", st.Role)
	}
	logged := 0
	for _, e := range st.Events {
		if e.Kind == "heartbeat" {
			logged++
		}
	}
	// One event per source and reason per 10s: auth and malformed.
	if logged > 4 {
		t.Errorf("%d heartbeat events for one flooding source: the log is not rate-limited", logged)
	}
}
