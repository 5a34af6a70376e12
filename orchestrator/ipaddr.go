package orchestrator

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// IPAddr is a virtual address on a local interface. Adding it is followed
// by gratuitous ARP so switches and neighbours learn the new owner at once
// instead of after their ARP cache expires.
type IPAddr struct {
	prefix  netip.Prefix
	dev     string
	timeout time.Duration
	logger  *slog.Logger
}

// NewIPAddr parses "10.0.0.10/24".
func NewIPAddr(prefix, dev string, timeout time.Duration, logger *slog.Logger) (*IPAddr, error) {
	p, err := netip.ParsePrefix(prefix)
	if err != nil {
		return nil, fmt.Errorf("ipaddr %q: %w", prefix, err)
	}
	if dev == "" {
		return nil, fmt.Errorf("ipaddr %s: dev required", prefix)
	}
	return &IPAddr{prefix: p, dev: dev, timeout: timeout, logger: logger}, nil
}

func (a *IPAddr) Name() string { return a.prefix.String() + "@" + a.dev }
func (a *IPAddr) Kind() string { return "ipaddr" }

func (a *IPAddr) nlAddr() *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{
		IP:   a.prefix.Addr().AsSlice(),
		Mask: net.CIDRMask(a.prefix.Bits(), a.prefix.Addr().BitLen()),
	}}
}

func (a *IPAddr) link() (netlink.Link, error) {
	l, err := netlink.LinkByName(a.dev)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", a.dev, err)
	}
	return l, nil
}

func (a *IPAddr) Start(ctx context.Context) error {
	l, err := a.link()
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, a.nlAddr()); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add %s to %s: %w", a.prefix, a.dev, err)
	}
	if a.prefix.Addr().Is4() {
		// Twice, a few ms apart: one lost frame must not leave peers
		// pointing at the old owner.
		if err := sendGratuitousARP(l, a.prefix.Addr()); err != nil {
			// The address is up and answers ARP requests; only the
			// proactive announcement failed (e.g. the link is down).
			a.logger.Warn("gratuitous ARP failed; neighbours learn the address when their ARP cache expires",
				"address", a.prefix.Addr(), "dev", a.dev, "err", err)
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return nil
		}
		_ = sendGratuitousARP(l, a.prefix.Addr())
	}
	return nil
}

func (a *IPAddr) Stop(context.Context) error {
	l, err := a.link()
	if err != nil {
		// No interface, no address: stop is idempotent.
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	err = netlink.AddrDel(l, a.nlAddr())
	if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("remove %s from %s: %w", a.prefix, a.dev, err)
	}
	return nil
}

func (a *IPAddr) Running(context.Context) (bool, error) {
	l, err := a.link()
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, err
	}
	family := netlink.FAMILY_V4
	if a.prefix.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(l, family)
	if err != nil {
		return false, fmt.Errorf("list addresses of %s: %w", a.dev, err)
	}
	for _, ad := range addrs {
		if ip, ok := netip.AddrFromSlice(ad.IP); ok && ip.Unmap() == a.prefix.Addr() {
			return true, nil
		}
	}
	return false, nil
}

// sendGratuitousARP broadcasts an ARP request for ip from ip (RFC 5227
// "ARP announcement") through an AF_PACKET socket, so no arping binary is
// needed. Interfaces without an Ethernet address (loopback) are skipped.
func sendGratuitousARP(l netlink.Link, ip netip.Addr) error {
	attrs := l.Attrs()
	mac := attrs.HardwareAddr
	if len(mac) != 6 {
		return nil
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		return fmt.Errorf("AF_PACKET socket: %w", err)
	}
	defer unix.Close(fd)
	ip4 := ip.As4()
	pkt := make([]byte, 28)
	binary.BigEndian.PutUint16(pkt[0:], 1)      // hardware type: Ethernet
	binary.BigEndian.PutUint16(pkt[2:], 0x0800) // protocol: IPv4
	pkt[4], pkt[5] = 6, 4
	binary.BigEndian.PutUint16(pkt[6:], 1) // request
	copy(pkt[8:], mac)
	copy(pkt[14:], ip4[:])
	// target hardware address stays zero
	copy(pkt[24:], ip4[:])
	sa := &unix.SockaddrLinklayer{
		Protocol: htons(unix.ETH_P_ARP),
		Ifindex:  attrs.Index,
		Halen:    6,
		Addr:     [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	}
	if err := unix.Sendto(fd, pkt, 0, sa); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
