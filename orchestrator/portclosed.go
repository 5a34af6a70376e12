package orchestrator

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A peer's host answers a heartbeat sent to a port nobody listens on with
// ICMP port unreachable. That means the peer's daemon is not running
// (crashed, killed, stopped without its goodbye), so it cannot be fencing
// itself either: the survivor need not wait takeover_margin for that
// fence, only deadtime (decide.go, peerView.gone). A node that lost power
// sends nothing and the margin applies as before.
//
// The kernel reports such errors for an unconnected UDP socket only with
// IP_RECVERR (IPV6_RECVERR); the next receive then fails with
// ECONNREFUSED and the error queue holds the destination that refused.
// A forged ICMP error can at most skip the margin after a full deadtime
// of heartbeat silence, never make a live peer look dead. The same holds
// for a firewall rule rejecting the heartbeat port with port unreachable
// (iptables REJECT's default): it reads as a stopped daemon; use DROP
// to cut heartbeats on purpose.

// enableRecvErr turns the reporting on. The socket may be IPv4 or a
// dual-stack IPv6 one: either option is enough.
func enableRecvErr(conn *net.UDPConn) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var e4, e6 error
	if err := rc.Control(func(fd uintptr) {
		e4 = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVERR, 1)
		e6 = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1)
	}); err != nil {
		return err
	}
	if e4 != nil && e6 != nil {
		return fmt.Errorf("IP_RECVERR: %w", e4)
	}
	return nil
}

// refusedError: a receive or send failed because an ICMP port unreachable
// came back for an earlier datagram.
func refusedError(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// closedPorts drains the socket's error queue (without blocking) and
// returns the destinations that answered with port unreachable.
func closedPorts(conn *net.UDPConn) []netip.AddrPort {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil
	}
	var out []netip.AddrPort
	buf := make([]byte, 64)
	oob := make([]byte, 512)
	// Control, not Read: Read would wait for the read lock that the
	// receive loop's blocked ReadFromUDP holds; MSG_DONTWAIT makes the
	// read non-blocking by itself.
	_ = rc.Control(func(fd uintptr) {
		// Bounded: the queue is bounded by the receive buffer anyway, and
		// a flood of errors must not keep the receive loop here.
		for range 64 {
			_, oobn, _, from, err := unix.Recvmsg(int(fd), buf, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
			if err != nil {
				return // EAGAIN: empty
			}
			msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				continue
			}
			for _, m := range msgs {
				v4 := m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_RECVERR
				v6 := m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_RECVERR
				if !v4 && !v6 || len(m.Data) < int(unsafe.Sizeof(unix.SockExtendedErr{})) {
					continue
				}
				ee := (*unix.SockExtendedErr)(unsafe.Pointer(&m.Data[0]))
				if syscall.Errno(ee.Errno) != syscall.ECONNREFUSED {
					continue
				}
				if ap, ok := sockaddrAddrPort(from); ok {
					out = append(out, ap)
				}
			}
		}
	})
	return out
}

func sockaddrAddrPort(sa unix.Sockaddr) (netip.AddrPort, bool) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)), true
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port)), true
	}
	return netip.AddrPort{}, false
}

// portsClosed marks the peers whose heartbeat address refused a datagram:
// their daemon is not running until a valid heartbeat says otherwise.
func (o *observer) portsClosed(conn *net.UDPConn, now time.Time) {
	aps := closedPorts(conn)
	if len(aps) == 0 {
		return
	}
	o.mu.Lock()
	var news []string
	for _, name := range o.peerNames() {
		p := o.peers[name]
		if p.addr == nil {
			continue
		}
		pa := p.addr.AddrPort()
		pa = netip.AddrPortFrom(pa.Addr().Unmap(), pa.Port())
		for _, ap := range aps {
			if ap != pa {
				continue
			}
			if !p.closedAt.After(p.lastValid) {
				news = append(news, name)
			}
			p.closedAt = now
		}
	}
	o.mu.Unlock()
	for _, name := range news {
		o.events.Warn(EventPeer, fmt.Sprintf("peer %s: its heartbeat port is closed (ICMP port unreachable): its daemon is not running", name), "peer", name)
	}
}
