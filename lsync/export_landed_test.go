package lsync

import "testing"

// DisableLandedCache makes every landed-cache lookup miss for the rest of
// the test (as after a daemon restart, or once a generation rolled over).
func DisableLandedCache(t testing.TB) {
	landedCacheOff.Store(true)
	t.Cleanup(func() { landedCacheOff.Store(false) })
}
