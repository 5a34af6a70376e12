package orchestrator

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func newTestObserver(t *testing.T) (*observer, *EventLog, *Metrics, *Key) {
	t.Helper()
	cfg := &ClusterConfig{Keepalive: 100 * time.Millisecond, Deadtime: 500 * time.Millisecond,
		Nodes: []NodeConfig{{Name: "a", Address: "127.0.0.1:1"}, {Name: "b", Address: "127.0.0.1:2"}}}
	cfg.SetDefaults()
	var p atomic.Pointer[ClusterConfig]
	p.Store(cfg)
	key := NewKey([]byte(testSecret))
	ev := NewEventLog(discardLogger())
	m := NewMetrics(prometheus.NewRegistry())
	o := newObserver("a", 77, &p, key, discardLogger(), ev, m)
	o.start(time.Now().Add(-time.Minute))
	return o, ev, m, key
}

// TestObserverDropsBadDatagramsBeforeState: forged (bad MAC, our
// fingerprint or another), garbled, replayed and stale datagrams from the
// peer's own address change nothing the observer believes, are counted by
// reason, and are logged once per source and reason however many arrive.
func TestObserverDropsBadDatagramsBeforeState(t *testing.T) {
	o, ev, m, key := newTestObserver(t)
	from := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2}
	body := `{"node":"b","boot":5,"seq":1,"ts":1,"role":"writer","decided":true,"leaving":true}`
	forged := append(append(append([]byte("LSH1"), key.fingerprint[:]...), make([]byte, 32)...), body...)
	otherKey := append(append(append([]byte("LSH1"), 9, 9, 9, 9), make([]byte, 32)...), body...)
	stale, _ := encodeHeartbeat(key, &Heartbeat{Node: "b", Boot: 5, Seq: 1, Role: RoleWriter, Echo: map[string][]EchoRef{"a": {{Boot: 76, Seq: 3}}}})
	now := time.Now()
	for range 500 {
		o.handle(forged, from, now)
		o.handle(otherKey, from, now)
		o.handle([]byte("LSH1garbage"), from, now)
		o.handle(stale, from, now)
	}
	obs := o.observe(now)
	p := obs.peers[0]
	if p.heard || p.alive || p.hb != nil || !obs.lastHeard.IsZero() {
		t.Fatalf("bad datagrams changed the peer's state: %+v", p)
	}
	for reason, want := range map[string]float64{rejectAuth: 1000, rejectMalformed: 500, rejectStale: 500} {
		if got := metricValue(t, m.heartbeatRejected.WithLabelValues(reason)); got != want {
			t.Errorf("rejected{%s} = %v, want %v", reason, got, want)
		}
	}
	logged := map[string]int{}
	for _, e := range ev.List() {
		switch {
		case strings.Contains(e.Message, "failed authentication"):
			logged["auth"]++
		case strings.Contains(e.Message, "not a lockstep heartbeat"):
			logged["malformed"]++
		case strings.Contains(e.Message, "stale"):
			logged["stale"]++
		}
	}
	// One event per source and reason per 10s; the stale one is the
	// handshake (b not accepted yet) and only counted.
	if logged["auth"] != 1 || logged["malformed"] != 1 || logged["stale"] != 0 {
		t.Fatalf("events per reason %v, want auth 1, malformed 1, stale 0", logged)
	}

	// The genuine handshake: b echoes our boot, and is alive at once.
	good, _ := encodeHeartbeat(key, &Heartbeat{Node: "b", Boot: 5, Seq: 2, Role: RoleStandby, Echo: map[string][]EchoRef{"a": {{Boot: 77, Seq: 4}}}})
	o.handle(good, from, now)
	if p := o.observe(now).peers[0]; !p.alive || p.hb.Role != RoleStandby {
		t.Fatalf("genuine heartbeat not accepted: %+v", p)
	}
	// We echo b's boot back with its newest seq.
	hb := &Heartbeat{Node: "a"}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	o.broadcast(conn, hb)
	if refs := hb.Echo["b"]; len(refs) != 1 || refs[0] != (EchoRef{Boot: 5, Seq: 2}) {
		t.Fatalf("echo %+v", hb.Echo)
	}
}
