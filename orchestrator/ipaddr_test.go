package orchestrator

import (
	"context"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TestIPAddrInNetns adds and removes a virtual address on a dummy
// interface inside a private network namespace, so the host is untouched.
func TestIPAddrInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace and a dummy interface")
	}
	// The namespace belongs to this OS thread only; the thread is thrown
	// away afterwards (no UnlockOSThread) so it can never serve another
	// goroutine while inside the test namespace.
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		done <- func() error {
			orig, err := netns.Get()
			if err != nil {
				return err
			}
			defer orig.Close()
			ns, err := netns.New()
			if err != nil {
				return errSkip{err}
			}
			defer ns.Close()
			defer netns.Set(orig)
			testIPAddr(t)
			return nil
		}()
	}()
	err := <-done
	if s, ok := err.(errSkip); ok {
		t.Skipf("cannot create a network namespace: %v", s.error)
	}
	if err != nil {
		t.Fatal(err)
	}
}

type errSkip struct{ error }

func testIPAddr(t *testing.T) {
	// A veth pair (the dummy module is not always loadable): the address
	// goes on lsvip0, the gratuitous ARP is captured on lsvip1.
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lsvip0"}, PeerName: "lsvip1"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Errorf("add veth pair: %v", err)
		return
	}
	link, err := netlink.LinkByName("lsvip0")
	if err != nil {
		t.Error(err)
		return
	}
	peer, err := netlink.LinkByName("lsvip1")
	if err != nil {
		t.Error(err)
		return
	}
	for _, l := range []netlink.Link{link, peer} {
		if err := netlink.LinkSetUp(l); err != nil {
			t.Error(err)
			return
		}
	}
	arps := captureARP(t, peer.Attrs().Index)
	defer unix.Close(arps)
	a, err := NewIPAddr("10.77.0.10/24", "lsvip0", time.Second, discardLogger())
	if err != nil {
		t.Error(err)
		return
	}
	ctx := context.Background()
	if run, err := a.Running(ctx); err != nil || run {
		t.Errorf("before start: %v %v", run, err)
		return
	}
	for range 2 { // adding twice is not an error
		if err := a.Start(ctx); err != nil {
			t.Errorf("start: %v", err)
			return
		}
	}
	if run, err := a.Running(ctx); err != nil || !run {
		t.Errorf("after start: %v %v", run, err)
		return
	}
	if !sawGratuitousARP(arps, [4]byte{10, 77, 0, 10}) {
		t.Error("no gratuitous ARP for 10.77.0.10 seen on the peer interface")
	}
	addrs, _ := netlink.AddrList(link, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.77.0.10/24" {
		t.Errorf("addresses %v", addrs)
	}
	checkIPAddrMonitor(t, a, link)
	for range 2 { // stop is idempotent
		if err := a.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
			return
		}
	}
	if run, err := a.Running(ctx); err != nil || run {
		t.Errorf("after stop: %v %v", run, err)
	}
	missing, _ := NewIPAddr("10.77.0.11/24", "nosuchdev", time.Second, discardLogger())
	if err := missing.Start(ctx); err == nil {
		t.Error("start on a missing interface succeeded")
	}
	if err := missing.Stop(ctx); err != nil {
		t.Errorf("stop on a missing interface: %v", err)
	}
}

func captureARP(t *testing.T, ifindex int) int {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		t.Fatalf("AF_PACKET: %v", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifindex}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	tv := unix.NsecToTimeval(int64(2 * time.Second))
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return fd
}

func sawGratuitousARP(fd int, ip [4]byte) bool {
	buf := make([]byte, 128)
	for range 10 {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return false
		}
		// sender IP at 14, target IP at 24: an announcement has both = ip
		if n >= 28 && [4]byte(buf[14:18]) == ip && [4]byte(buf[24:28]) == ip {
			return true
		}
	}
	return false
}
