// Package netns is the testing face of internal/testbed/netns: New builds
// a throw-away network of namespaces for the duration of a test, and its
// steps (Partition, Heal, ...) fail the test instead of returning errors.
// Everything else is the testbed's.
package netns

import (
	"testing"

	"github.com/lockstep-ha/lockstep/internal/testbed/netns"
)

// Names and addresses of every network.
const (
	Dev         = netns.Dev
	WitnessHost = netns.WitnessHost
)

// Node is one namespace attached to the bridge.
type Node = netns.Node

// Network is a testbed network bound to the test that owns it.
type Network struct {
	*netns.Network
	t testing.TB
}

// New creates a network with nodes nodes (1..200) and a witness. It skips
// the test when not root or `ip` is missing, fails it on any setup error,
// and deletes everything in t.Cleanup.
func New(t testing.TB, nodes int) *Network {
	t.Helper()
	if reason := netns.Skip(); reason != "" {
		t.Skip(reason)
	}
	n, err := netns.NewNetwork(nodes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("netns cleanup: %v", err)
		}
	})
	return &Network{Network: n, t: t}
}

// Partition cuts node i off the bridge: it loses its peers and the witness.
func (n *Network) Partition(i int) { n.t.Helper(); n.must(n.Network.Partition(i)) }

// Heal reconnects node i after Partition.
func (n *Network) Heal(i int) { n.t.Helper(); n.must(n.Network.Heal(i)) }

// Disconnect stops traffic between nodes i and j only.
func (n *Network) Disconnect(i, j int) { n.t.Helper(); n.must(n.Network.Disconnect(i, j)) }

// Reconnect undoes Disconnect(i, j).
func (n *Network) Reconnect(i, j int) { n.t.Helper(); n.must(n.Network.Reconnect(i, j)) }

func (n *Network) must(err error) {
	n.t.Helper()
	if err != nil {
		n.t.Fatal(err)
	}
}

// ServeTCP runs node.ServeTCP (a listener a tcp:// witness probe can
// reach) until the test ends and returns its address.
func ServeTCP(t testing.TB, node *Node) string {
	t.Helper()
	addr, stop, err := node.ServeTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr
}

// Forward runs node.Forward (listenAddr in the node's namespace relayed to
// target) until the test ends and returns the bound address.
func Forward(t testing.TB, node *Node, listenAddr, target string) string {
	t.Helper()
	addr, stop, err := node.Forward(listenAddr, target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr
}
