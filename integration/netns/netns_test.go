package netns_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/integration/netns"
	"github.com/lockstep-ha/lockstep/integration/poll"
	"github.com/lockstep-ha/lockstep/internal/testbed"
)

func needPing(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("ping"); err != nil {
		t.Skip("ping not installed (apt-get install iputils-ping)")
	}
}

func TestPingPartitionHeal(t *testing.T) {
	t.Parallel()
	needPing(t)
	nw := netns.New(t, 2)
	ctx := t.Context()
	n1, n2, w := nw.Node(1), nw.Node(2), nw.Witness()

	if n1.Addr != nw.Addr(1) || n2.Addr != nw.Addr(2) || w.Addr != nw.Addr(netns.WitnessHost) {
		t.Fatalf("addresses: n1=%s n2=%s w=%s in %s", n1.Addr, n2.Addr, w.Addr, nw.Subnet())
	}
	if !n1.Ping(ctx, n2.Addr, time.Second) || !n2.Ping(ctx, w.Addr, time.Second) {
		t.Fatal("nodes cannot ping each other or the witness on a fresh network")
	}
	// Loopback is up in each namespace.
	if !n1.Ping(ctx, netip.MustParseAddr("127.0.0.1"), time.Second) {
		t.Fatal("loopback is down in n1")
	}

	nw.Partition(1)
	if n2.Ping(ctx, n1.Addr, time.Second) {
		t.Fatal("n2 still reaches n1 after Partition(1)")
	}
	if n1.Ping(ctx, w.Addr, time.Second) {
		t.Fatal("n1 still reaches the witness after Partition(1)")
	}
	if !n2.Ping(ctx, w.Addr, time.Second) {
		t.Fatal("Partition(1) also cut n2 from the witness")
	}

	nw.Heal(1)
	waitFor(t, 5*time.Second, "n2 to reach n1 after Heal(1)", func() bool {
		return n2.Ping(ctx, n1.Addr, time.Second)
	})
	waitFor(t, 5*time.Second, "n1 to reach the witness after Heal(1)", func() bool {
		return n1.Ping(ctx, w.Addr, time.Second)
	})
}

func TestDisconnectKeepsWitness(t *testing.T) {
	t.Parallel()
	needPing(t)
	nw := netns.New(t, 2)
	ctx := t.Context()
	n1, n2, w := nw.Node(1), nw.Node(2), nw.Witness()

	nw.Disconnect(1, 2)
	if n1.Ping(ctx, n2.Addr, time.Second) || n2.Ping(ctx, n1.Addr, time.Second) {
		t.Fatal("n1 and n2 still reach each other after Disconnect(1, 2)")
	}
	if !n1.Ping(ctx, w.Addr, time.Second) || !n2.Ping(ctx, w.Addr, time.Second) {
		t.Fatal("Disconnect(1, 2) cut a node from the witness")
	}
	nw.Reconnect(1, 2)
	if !n1.Ping(ctx, n2.Addr, time.Second) {
		t.Fatal("n1 cannot reach n2 after Reconnect(1, 2)")
	}
}

// TestGoSocketsInNamespace checks Listen, DialContext and HTTPClient: a
// server listening in n2 is reachable from n1 and from nowhere else.
func TestGoSocketsInNamespace(t *testing.T) {
	t.Parallel()
	nw := netns.New(t, 2)
	n1, n2 := nw.Node(1), nw.Node(2)

	l, err := n2.Listen("tcp", net.JoinHostPort(n2.Addr.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from n2, you are %s", r.RemoteAddr)
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	url := "http://" + l.Addr().String() + "/"

	resp, err := n1.HTTPClient(2 * time.Second).Get(url)
	if err != nil {
		t.Fatalf("GET %s from n1: %v", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "you are "+n1.Addr.String()+":") {
		t.Fatalf("response %q does not show n1's address %s as the client", body, n1.Addr)
	}

	// The root namespace has no route to 10.77.X.0/24.
	c := &http.Client{Timeout: 500 * time.Millisecond}
	if resp, err := c.Get(url); err == nil {
		resp.Body.Close()
		t.Fatalf("GET %s succeeded from the root namespace; the server is not isolated", url)
	}

	nw.Partition(2)
	if resp, err := n1.HTTPClient(500 * time.Millisecond).Get(url); err == nil {
		resp.Body.Close()
		t.Fatal("GET succeeded across a partition")
	}
}

func TestCommandAndAddrs(t *testing.T) {
	t.Parallel()
	nw := netns.New(t, 1)
	n1 := nw.Node(1)
	ctx := t.Context()

	out, err := n1.Command(ctx, "ip", "-o", "-4", "addr", "show", "dev", netns.Dev).CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr in n1: %v: %s", err, out)
	}
	if !strings.Contains(string(out), n1.Addr.String()+"/24") {
		t.Fatalf("ip addr in n1 = %q, want %s/24", out, n1.Addr)
	}

	vip := nw.Addr(100)
	if has, err := n1.HasAddr(vip); err != nil || has {
		t.Fatalf("HasAddr(%s) before adding = %v, %v", vip, has, err)
	}
	if out, err := n1.Command(ctx, "ip", "addr", "add", nw.Prefix(100).String(), "dev", netns.Dev).CombinedOutput(); err != nil {
		t.Fatalf("adding VIP: %v: %s", err, out)
	}
	if has, err := n1.HasAddr(vip); err != nil || !has {
		t.Fatalf("HasAddr(%s) after adding = %v, %v", vip, has, err)
	}

	// A process started with Command is the program itself, so cancelling
	// its context kills it.
	cctx, cancel := context.WithCancel(ctx)
	cmd := n1.Command(cctx, "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var exe string
	waitFor(t, 5*time.Second, "the Command process to become sleep", func() bool {
		exe, _ = os.Readlink(filepath.Join("/proc", fmt.Sprint(cmd.Process.Pid), "exe"))
		return strings.HasSuffix(exe, "/sleep")
	})
	cancel()
	if err := cmd.Wait(); err == nil {
		t.Fatal("sleep 60 exited cleanly although its context was cancelled")
	}
}

func TestCleanupRemovesNamespaces(t *testing.T) {
	t.Parallel()
	var id string
	t.Run("build", func(t *testing.T) {
		nw := netns.New(t, 2)
		id = nw.ID()
		if got := listNS(t, id); len(got) != 4 {
			t.Fatalf("namespaces of %s = %v, want bridge, n1, n2, w", id, got)
		}
	})
	if got := listNS(t, id); len(got) != 0 {
		t.Fatalf("namespaces left after cleanup: %v", got)
	}
}

func listNS(t *testing.T, prefix string) []string {
	t.Helper()
	f, err := os.Open("/run/netns")
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		t.Fatal(err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix+"-") {
			out = append(out, n)
		}
	}
	return out
}

func TestWitnessServeTCP(t *testing.T) {
	t.Parallel()
	nw := netns.New(t, 1)
	addr := netns.ServeTCP(t, nw.Witness())
	c, err := nw.Node(1).DialContext(t.Context(), "tcp", addr)
	if err != nil {
		t.Fatalf("dial witness %s from n1: %v", addr, err)
	}
	// The witness closes right away: a read returns EOF, not a timeout.
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = bufio.NewReader(c).ReadByte()
	c.Close()
	if err != io.EOF {
		t.Fatalf("read from witness = %v, want EOF", err)
	}
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, within, what, cond)
}

// TestForward: a service on the host's loopback, forwarded to n1's
// address, is reachable from n2 across the bridge, cut by a partition,
// and still reachable from n1 itself.
func TestForward(t *testing.T) {
	t.Parallel()
	nw := netns.New(t, 2)
	n1, n2 := nw.Node(1), nw.Node(2)

	host, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(testbed.Serve(host, func(_ context.Context, c net.Conn) { _, _ = io.Copy(c, c) }))
	addr := netns.Forward(t, n1, net.JoinHostPort(n1.Addr.String(), "0"), host.Addr().String())

	echo := func(from *netns.Node) error {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		c, err := from.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if line != "ping\n" {
			return fmt.Errorf("echo returned %q", line)
		}
		return nil
	}
	if err := echo(n2); err != nil {
		t.Fatalf("n2 -> forwarded service on n1: %v", err)
	}
	nw.Partition(1)
	if err := echo(n2); err == nil {
		t.Fatal("n2 reached the forwarded service across a partition")
	}
	if err := echo(n1); err != nil {
		t.Fatalf("n1 cannot reach its own forwarded service during a partition: %v", err)
	}
}
