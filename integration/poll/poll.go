// Package poll lets a test wait for a condition that another process or
// goroutine makes true: a daemon's state, a file on a peer, a VIP moving.
package poll

import (
	"testing"
	"time"
)

// Until checks cond until it holds and returns how long that took. It
// fails the test after within, naming what it waited for. The check
// interval scales with within (5–50 ms), so short waits stay precise and
// long ones do not spin.
func Until(t testing.TB, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	every := min(max(within/1000, 5*time.Millisecond), 50*time.Millisecond)
	start := time.Now()
	for {
		if cond() {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("timed out after %s waiting for %s", within, what)
			return 0
		}
		time.Sleep(every)
	}
}
