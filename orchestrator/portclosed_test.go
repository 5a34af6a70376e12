package orchestrator

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// A datagram to a loopback port nobody listens on comes back as ICMP port
// unreachable: with enableRecvErr the receive fails with ECONNREFUSED and
// closedPorts names that destination.
func TestClosedPortsReportsPortUnreachable(t *testing.T) {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := enableRecvErr(conn); err != nil {
		t.Fatal(err)
	}
	// A port that was just free: bind, note, close.
	probe, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	dead := probe.LocalAddr().(*net.UDPAddr)
	probe.Close()

	if _, err := conn.WriteToUDP([]byte("hb"), dead); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, _, err = conn.ReadFromUDP(make([]byte, 64))
	if !refusedError(err) {
		t.Fatalf("receive after a datagram to a closed port: %v, want ECONNREFUSED", err)
	}
	got := closedPorts(conn)
	want := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(dead.Port))
	if len(got) != 1 || got[0] != want {
		t.Fatalf("closedPorts = %v, want [%v]", got, want)
	}
	if again := closedPorts(conn); len(again) != 0 {
		t.Fatalf("queue not drained: %v", again)
	}
}
