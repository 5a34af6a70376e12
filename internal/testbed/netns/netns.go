// Package netns builds small throw-away networks out of Linux network
// namespaces so that multi-node tests can run real daemons on real
// addresses, cut links and heal them, on one machine.
//
// Layout of a Network with two nodes:
//
//	ls-<pid>-<rand>-br   bridge "br0" with ports n1, n2, w
//	ls-<pid>-<rand>-n1   eth0 10.77.X.1/24   (veth peer of n1)
//	ls-<pid>-<rand>-n2   eth0 10.77.X.2/24   (veth peer of n2)
//	ls-<pid>-<rand>-w    eth0 10.77.X.254/24 (the witness)
//
// Every interface lives inside a namespace the harness created, so nothing
// in the root namespace is touched and deleting the namespaces removes
// everything (veth pairs die with their namespace). X is random per
// Network; since each Network is fully private the subnets could even
// collide, the random X only keeps logs of parallel tests readable.
//
// The package does not import testing, so programs (the benchmark harness)
// can use it: every step returns its error. integration/netns wraps it for
// tests, turning those errors into test failures and stops into cleanups.
package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/lockstep-ha/lockstep/internal/testbed"
)

// Prefix starts the name of every namespace this package creates; stale
// ones are recognised by it (see SweepStale).
const Prefix = "ls-"

// WitnessHost is the last octet of the witness address.
const WitnessHost = 254

// Dev is the name of each node's interface inside its namespace.
const Dev = "eth0"

const bridgeName = "br0"

// Network is a bridge with one namespace per node plus a witness namespace.
type Network struct {
	id      string
	created []string // namespaces to delete, in creation order
	subnet  netip.Prefix
	bridge  string
	nodes   []*Node
	witness *Node
}

// Node is one namespace attached to the bridge.
type Node struct {
	// Name is the node name used in generated configs: "n1", "n2", ... or "w".
	Name string
	// NS is the network namespace name (for `ip -n` / `ip netns exec`).
	NS string
	// Addr is the node's address on Dev.
	Addr netip.Addr
	// Dev is the node-side interface name inside NS.
	Dev string

	net    *Network
	port   string // bridge-side veth name
	mu     sync.Mutex
	handle *netlink.Handle
}

// Skip reports why netns tests cannot run here, or "" when they can.
func Skip() string {
	if os.Geteuid() != 0 {
		return "network namespace tests need root (creating namespaces, veth pairs and bridges requires CAP_NET_ADMIN and CAP_SYS_ADMIN)"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "network namespace tests need the `ip` command from iproute2 (apt-get install iproute2)"
	}
	return ""
}

// NewNetwork creates a network with nodes nodes (1..200) and a witness.
// It returns setup errors, removes whatever it built when one occurs, and
// leaves the deletion to Close. Call Skip first for a readable reason when
// it cannot work.
func NewNetwork(nodes int) (*Network, error) {
	if nodes < 1 || nodes > 200 {
		return nil, fmt.Errorf("netns: nodes = %d, want 1..200", nodes)
	}
	SweepStale()
	x, err := rand.Int(rand.Reader, big.NewInt(250))
	if err != nil {
		return nil, err
	}
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	n := &Network{
		id:     fmt.Sprintf("%s%d-%s", Prefix, os.Getpid(), hex.EncodeToString(b[:])),
		subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, byte(x.Int64() + 1), 0}), 24),
	}
	n.bridge = n.id + "-br"
	if err := n.build(nodes); err != nil {
		err = fmt.Errorf("netns: building network %s: %w", n.id, err)
		if cerr := n.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return nil, err
	}
	return n, nil
}

func (n *Network) build(nodes int) error {
	n.created = append(n.created, n.bridge)
	if err := addNS(n.bridge); err != nil {
		return err
	}
	if err := ip("-n", n.bridge, "link", "add", bridgeName, "type", "bridge"); err != nil {
		return err
	}
	// No STP and no forwarding delay: ports forward the moment they come up,
	// so Heal restores traffic immediately.
	if err := ip("-n", n.bridge, "link", "set", bridgeName, "type", "bridge", "stp_state", "0", "forward_delay", "0"); err != nil {
		return err
	}
	if err := ip("-n", n.bridge, "link", "set", bridgeName, "up"); err != nil {
		return err
	}
	for i := 1; i <= nodes; i++ {
		node, err := n.attach(fmt.Sprintf("n%d", i), byte(i))
		if err != nil {
			return err
		}
		n.nodes = append(n.nodes, node)
	}
	w, err := n.attach("w", WitnessHost)
	if err != nil {
		return err
	}
	n.witness = w
	return nil
}

func (n *Network) attach(name string, host byte) (*Node, error) {
	node := &Node{
		Name: name,
		NS:   n.id + "-" + name,
		Addr: n.Addr(host),
		Dev:  Dev,
		net:  n,
		port: name,
	}
	// Recorded first: a failed `ip netns add` may still leave the name.
	n.created = append(n.created, node.NS)
	if err := addNS(node.NS); err != nil {
		return nil, err
	}
	// Created directly inside the bridge namespace with the peer moved into
	// the node namespace, so no interface ever appears in the root namespace.
	if err := ip("-n", n.bridge, "link", "add", node.port, "type", "veth", "peer", "name", node.Dev, "netns", node.NS); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"-n", n.bridge, "link", "set", node.port, "master", bridgeName},
		{"-n", n.bridge, "link", "set", node.port, "up"},
		{"-n", node.NS, "link", "set", "lo", "up"},
		{"-n", node.NS, "addr", "add", netip.PrefixFrom(node.Addr, n.subnet.Bits()).String(), "dev", node.Dev},
		{"-n", node.NS, "link", "set", node.Dev, "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return nil, err
		}
	}
	return node, nil
}

// Close deletes every namespace of the network, which removes all its
// links. It may be called more than once.
func (n *Network) Close() error {
	for _, node := range append(append([]*Node{}, n.nodes...), n.witness) {
		if node == nil {
			continue
		}
		node.mu.Lock()
		if node.handle != nil {
			node.handle.Close()
			node.handle = nil
		}
		node.mu.Unlock()
	}
	// Deleting a namespace deletes its veth ends, which deletes the peers.
	var errs []error
	for _, name := range slices.Backward(n.created) {
		if err := delNS(name); err != nil {
			errs = append(errs, err)
		}
	}
	n.created = nil
	return errors.Join(errs...)
}

// ID is the common prefix of this network's namespace names.
func (n *Network) ID() string { return n.id }

// Subnet is the network's /24.
func (n *Network) Subnet() netip.Prefix { return n.subnet }

// Addr returns the address with last octet host inside the subnet, e.g.
// Addr(100) for a virtual IP.
func (n *Network) Addr(host byte) netip.Addr {
	a := n.subnet.Addr().As4()
	a[3] = host
	return netip.AddrFrom4(a)
}

// Prefix returns Addr(host) with the subnet's prefix length, ready for an
// `ipaddr:` resource.
func (n *Network) Prefix(host byte) netip.Prefix {
	return netip.PrefixFrom(n.Addr(host), n.subnet.Bits())
}

// Nodes returns the number of nodes (the witness not included).
func (n *Network) Nodes() int { return len(n.nodes) }

// Node returns node i, counted from 1 like its address (10.77.X.i). An
// index out of range is a bug in the caller and panics.
func (n *Network) Node(i int) *Node {
	if i < 1 || i > len(n.nodes) {
		panic(fmt.Sprintf("netns: node %d out of range 1..%d", i, len(n.nodes)))
	}
	return n.nodes[i-1]
}

// Witness returns the witness namespace (address .254).
func (n *Network) Witness() *Node { return n.witness }

// Partition cuts node i off the bridge: it loses its peers and the witness.
func (n *Network) Partition(i int) error { return n.Node(i).Partition() }

// Heal reconnects node i after Partition.
func (n *Network) Heal(i int) error { return n.Node(i).Heal() }

// Disconnect stops traffic between nodes i and j only (both keep the
// witness and any other node), with blackhole routes on both sides.
func (n *Network) Disconnect(i, j int) error {
	a, b := n.Node(i), n.Node(j)
	if err := ip("-n", a.NS, "route", "add", "blackhole", b.Addr.String()+"/32"); err != nil {
		return err
	}
	return ip("-n", b.NS, "route", "add", "blackhole", a.Addr.String()+"/32")
}

// Reconnect undoes Disconnect(i, j).
func (n *Network) Reconnect(i, j int) error {
	a, b := n.Node(i), n.Node(j)
	if err := ip("-n", a.NS, "route", "del", "blackhole", b.Addr.String()+"/32"); err != nil {
		return err
	}
	return ip("-n", b.NS, "route", "del", "blackhole", a.Addr.String()+"/32")
}

// Partition takes the bridge side of the node's veth down, so the node
// sees no carrier and nothing reaches it; its own addresses stay.
func (node *Node) Partition() error {
	return ip("-n", node.net.bridge, "link", "set", node.port, "down")
}

// Heal brings the bridge side of the node's veth back up.
func (node *Node) Heal() error {
	return ip("-n", node.net.bridge, "link", "set", node.port, "up")
}

// Command returns a command that runs name inside the node's namespace
// (via `ip netns exec`, which execs name, so the Process is the program
// itself and ctx cancellation kills it directly). The process is killed
// if the test binary dies first (a `go test -timeout` panic), so no
// daemon outlives its test inside a namespace nobody can see any more.
func (node *Node) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", node.NS, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Do runs fn on an OS thread switched into the node's namespace. Sockets
// created by fn belong to that namespace for their whole life, even when
// used later from other goroutines. fn must not rely on goroutines it
// starts being in the namespace.
func (node *Node) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: current namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(node.NS)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: open %s: %w", node.NS, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: enter %s: %w", node.NS, err)
			return
		}
		ferr := fn()
		// A thread that cannot switch back stays locked: the runtime then
		// terminates it with this goroutine instead of reusing it.
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		} else if ferr == nil {
			ferr = fmt.Errorf("netns: leaving %s: %w", node.NS, err)
		}
		errc <- ferr
	}()
	return <-errc
}

// DialContext dials from inside the node's namespace.
func (node *Node) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var conn net.Conn
	err := node.Do(func() error {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, address)
		conn = c
		return err
	})
	return conn, err
}

// Listen opens a listener inside the node's namespace.
func (node *Node) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := node.Do(func() error {
		var err error
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// HTTPClient returns a client whose connections originate in the node's
// namespace. Keep-alives are off so that every request sees the current
// state of the network rather than a connection opened before a cut.
func (node *Node) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:       node.DialContext,
			DisableKeepAlives: true,
		},
	}
}

// ServeTCP starts a TCP listener on the node's address that accepts and
// immediately closes connections, which is all a tcp:// witness probe
// needs. It returns the address ("10.77.X.254:PORT") and the function that
// stops it.
func (node *Node) ServeTCP() (addr string, stop func(), err error) {
	l, err := node.Listen("tcp", net.JoinHostPort(node.Addr.String(), "0"))
	if err != nil {
		return "", nil, fmt.Errorf("netns: witness listener in %s: %w", node.NS, err)
	}
	stop = testbed.Serve(l, func(context.Context, net.Conn) {})
	return l.Addr().String(), stop, nil
}

// Forward listens on listenAddr inside the node's namespace and relays
// every connection to target, dialed from the namespace the caller runs
// in. It puts a service started on the host's loopback (a mariadbd of the
// MariaDB pair harness) at a node's address: peers reach it across the
// bridge, so Partition cuts them off, while the node itself still reaches
// it locally. It returns the bound address and the function that stops
// it, closing every relayed connection.
func (node *Node) Forward(listenAddr, target string) (addr string, stop func(), err error) {
	l, err := node.Listen("tcp", listenAddr)
	if err != nil {
		return "", nil, fmt.Errorf("netns: forward listener %s in %s: %w", listenAddr, node.NS, err)
	}
	stop = testbed.Serve(l, func(ctx context.Context, in net.Conn) {
		out, err := net.DialTimeout("tcp", target, 5*time.Second)
		if err != nil {
			return
		}
		defer out.Close()
		// Serve closes in on stop; out is ours to close then.
		defer context.AfterFunc(ctx, func() { out.Close() })()
		done := make(chan struct{}, 2)
		relay := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			done <- struct{}{}
		}
		go relay(out, in)
		go relay(in, out)
		<-done
		<-done
	})
	return l.Addr().String(), stop, nil
}

func (node *Node) netlinkHandle() (*netlink.Handle, error) {
	node.mu.Lock()
	defer node.mu.Unlock()
	if node.handle != nil {
		return node.handle, nil
	}
	ns, err := netns.GetFromName(node.NS)
	if err != nil {
		return nil, fmt.Errorf("netns: open %s: %w", node.NS, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netns: netlink in %s: %w", node.NS, err)
	}
	node.handle = h
	return h, nil
}

// Addrs lists the IPv4 addresses configured on the node's Dev. It uses a
// netlink socket kept open in the namespace, so sampling every few
// milliseconds is cheap.
func (node *Node) Addrs() ([]netip.Prefix, error) {
	h, err := node.netlinkHandle()
	if err != nil {
		return nil, err
	}
	link, err := h.LinkByName(node.Dev)
	if err != nil {
		return nil, fmt.Errorf("netns: %s in %s: %w", node.Dev, node.NS, err)
	}
	list, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("netns: addresses of %s in %s: %w", node.Dev, node.NS, err)
	}
	out := make([]netip.Prefix, 0, len(list))
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		bits, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, bits))
	}
	return out, nil
}

// HasAddr reports whether addr is configured on the node's Dev.
func (node *Node) HasAddr(addr netip.Addr) (bool, error) {
	list, err := node.Addrs()
	if err != nil {
		return false, err
	}
	for _, p := range list {
		if p.Addr() == addr {
			return true, nil
		}
	}
	return false, nil
}

// Ping sends one ICMP echo from the node to addr and reports whether a reply
// came back within timeout.
func (node *Node) Ping(ctx context.Context, addr netip.Addr, timeout time.Duration) bool {
	secs := max(1, int(timeout.Round(time.Second)/time.Second))
	cmd := node.Command(ctx, "ping", "-c", "1", "-n", "-q", "-W", strconv.Itoa(secs), addr.String())
	return cmd.Run() == nil
}

// SweepStale deletes namespaces left behind by earlier test processes that
// died without cleaning up (killed by a timeout, SIGKILL). Only names of
// the form ls-<pid>-... whose pid no longer exists are touched, so
// networks of tests running in parallel are safe.
func SweepStale() {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, Prefix) {
			continue
		}
		pidStr, _, ok := strings.Cut(strings.TrimPrefix(name, Prefix), "-")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		_ = delNS(name)
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func addNS(name string) error { return ip("netns", "add", name) }

func delNS(name string) error {
	if _, err := os.Stat(filepath.Join("/run/netns", name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return ip("netns", "del", name)
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
