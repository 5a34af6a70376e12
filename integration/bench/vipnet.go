package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
)

// vipNet is a throw-away network for the failover scenario: a witness
// namespace holding a bridge, and one namespace per node attached to it by
// a veth pair. Everything lives in namespaces the harness created, so
// deleting them removes every link; nothing in the root namespace changes.
type vipNet struct {
	witness string
	nodes   []string
	subnet  byte
}

// vipNetUnavailable says why namespaces cannot be built here, or "".
func vipNetUnavailable() string {
	if os.Geteuid() != 0 {
		return "network namespaces need root"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "the `ip` command (iproute2) is missing"
	}
	return ""
}

func newVIPNet(ctx context.Context, nodes int) (_ *vipNet, err error) {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := fmt.Sprintf("lsb%d-%s", os.Getpid(), hex.EncodeToString(b))
	v := &vipNet{witness: id + "-w", subnet: 1 + b[0]%250}
	for i := 1; i <= nodes; i++ {
		v.nodes = append(v.nodes, fmt.Sprintf("%s-n%d", id, i))
	}
	defer func() {
		if err != nil {
			v.close()
		}
	}()
	ip := func(args ...string) error {
		_, err := runCmd(ctx, append([]string{"ip"}, args...)...)
		return err
	}
	for _, ns := range append([]string{v.witness}, v.nodes...) {
		if err := ip("netns", "add", ns); err != nil {
			return nil, err
		}
		if err := ip("-n", ns, "link", "set", "lo", "up"); err != nil {
			return nil, err
		}
	}
	steps := [][]string{
		{"-n", v.witness, "link", "add", "br0", "type", "bridge"},
		{"-n", v.witness, "addr", "add", v.addr(254) + "/24", "dev", "br0"},
		{"-n", v.witness, "link", "set", "br0", "up"},
	}
	for i, ns := range v.nodes {
		port := fmt.Sprintf("v%d", i+1)
		steps = append(steps,
			[]string{"-n", v.witness, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"-n", v.witness, "link", "set", port, "master", "br0"},
			[]string{"-n", v.witness, "link", "set", port, "up"},
			[]string{"-n", ns, "addr", "add", v.addr(byte(i+1)) + "/24", "dev", "eth0"},
			[]string{"-n", ns, "link", "set", "eth0", "up"},
		)
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return nil, err
		}
	}
	return v, nil
}

func (v *vipNet) addr(host byte) string { return fmt.Sprintf("10.89.%d.%d", v.subnet, host) }

func (v *vipNet) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, ns := range append(append([]string{}, v.nodes...), v.witness) {
		_, _ = runCmd(ctx, "ip", "netns", "del", ns)
	}
}

// dialFrom opens a TCP connection from inside namespace ns: the socket is
// created on a thread switched into ns and stays there.
func dialFrom(ns, addr string, timeout time.Duration) (net.Conn, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer orig.Close()
	h, err := netns.GetFromName(ns)
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	c, derr := net.DialTimeout("tcp", addr, timeout)
	if err := netns.Set(orig); err != nil {
		// The thread is stuck in ns: leave it locked so that the runtime
		// retires it with this goroutine instead of reusing it.
		if c != nil {
			c.Close()
		}
		return nil, fmt.Errorf("restore network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return c, derr
}

// whoAnswers asks http://addr/status from the witness namespace and returns
// the name of the node that answered.
func (v *vipNet) whoAnswers(addr string, timeout time.Duration) (string, error) {
	c, err := dialFrom(v.witness, addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(c, "GET /status HTTP/1.0\r\nHost: %s\r\n\r\n", addr); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var st struct {
		Node string `json:"node"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return "", err
	}
	if st.Node == "" {
		return "", errors.New("status without node name")
	}
	return st.Node, nil
}
