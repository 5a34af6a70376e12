// Package testbed holds the process and network harnesses that tests, the
// benchmark harness and `lockstep playground` share: a MariaDB pair
// (testbed/mariadb), an OpenSSH server (testbed/sshd) and network
// namespaces (testbed/netns). None of them imports testing, so the
// production binary can link them; integration/mariadbpair, sshdtest and
// netns wrap them for tests (skip when unavailable, fail on error, clean up
// in t.Cleanup).
package testbed

import (
	"context"
	"net"
	"sync"
)

// Serve accepts connections on l and runs handle on each in its own
// goroutine (the connection is closed when handle returns) until the
// returned stop is called. stop closes the listener and every connection
// still open, cancels the handlers' ctx (for what else they opened), then
// waits for the accept loop and the handlers, so nothing outlives it.
func Serve(l net.Listener, handle func(ctx context.Context, c net.Conn)) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if conns == nil { // stopping
				mu.Unlock()
				c.Close()
				return
			}
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					c.Close()
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
				}()
				handle(ctx, c)
			})
		}
	})
	return func() {
		cancel()
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		conns = nil
		mu.Unlock()
		wg.Wait()
	}
}
