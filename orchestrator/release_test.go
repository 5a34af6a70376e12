package orchestrator

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stopGate makes r2's stop exit 1 while the file nostop exists in the
// node's directory (before it removes r2.running: the "service" stays
// up), and its start fail while nostart exists.
const stopGate = `[ "$1" = stop ] && [ -e "$(dirname "$0")/nostop" ] && { echo "stop refused (test)"; exit 1; }
[ "$1" = start ] && [ -e "$(dirname "$0")/nostart" ] && { echo "start refused (test)"; exit 1; }`

func gatedOpts() clusterOpts {
	return clusterOpts{scripts: map[string][]string{"a": {"", stopGate}, "b": {"", stopGate}}}
}

func touch(t testing.TB, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// holderSampler counts, every 10ms, the samples in which both nodes hold
// (or may still hold: unreleased counts) some resource, or both run r2.
type holderSampler struct {
	both, samples atomic.Int64
	stop          chan struct{}
	wg            sync.WaitGroup
}

func sampleHolders(a, b *testNode) *holderSampler {
	s := &holderSampler{stop: make(chan struct{})}
	s.wg.Go(func() {
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			s.samples.Add(1)
			if (len(a.held()) > 0 || a.running("r2")) && (len(b.held()) > 0 || b.running("r2")) {
				s.both.Add(1)
			}
		}
	})
	return s
}

func (s *holderSampler) close() { close(s.stop); s.wg.Wait() }

// A writer that gives the role up (its track fails) and cannot stop r2
// keeps announcing it: the peer does not take over while the stop fails,
// and does once a retry succeeds.
func TestReleaseIncompleteHoldsPeerOff(t *testing.T) {
	tc := startCluster(t, trackOpts(gatedOpts(), nil))
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	hs := sampleHolders(a, b)
	defer hs.close()

	touch(t, filepath.Join(a.dir, "nostop"))
	touch(t, filepath.Join(a.dir, "track.fail"))
	waitFor(t, 5*time.Second, "a standby with its release incomplete", func() bool {
		return a.role() == RoleStandby && a.daemon.role.Status().Release != nil
	})
	r2 := a.resourceName(1)
	rs := a.daemon.role.Status()
	if got := strings.Join(rs.Release.Resources, ","); got != r2 || !strings.Contains(rs.Release.LastError, "stop refused (test)") {
		t.Fatalf("release status %+v", rs.Release)
	}
	if !a.running("r2") || a.running("r1") {
		t.Fatalf("r1 running %v, r2 running %v: want r2 only (its stop failed)", a.running("r1"), a.running("r2"))
	}
	// Loud everywhere.
	if code, body := getText(t, a, "/health"); code != http.StatusServiceUnavailable || !strings.Contains(body, "RELEASE INCOMPLETE") {
		t.Fatalf("health: %d %q", code, body)
	}
	if ag := agent(t, a); ag != AgentMaint+"\n" {
		t.Fatalf("agent %q", ag)
	}
	var st Status
	getJSON(t, a, "/status", &st)
	if st.ReleaseIncomplete == nil || st.ReleaseIncomplete.Attempts < 1 {
		t.Fatalf("/status release_incomplete %+v", st.ReleaseIncomplete)
	}
	if !st.Resources[1].Unreleased {
		t.Fatalf("/status resources %+v", st.Resources)
	}
	if v := metricValue(t, a.daemon.metrics.releaseIncomplete); v != 1 {
		t.Fatalf("lockstep_release_incomplete %v", v)
	}
	eventTime(t, a, "RELEASE INCOMPLETE: "+r2+" may still be up")
	// The peer sees the claim and says why it waits.
	waitFor(t, 2*time.Second, "b sees a's unreleased r2", func() bool {
		for _, p := range b.daemon.role.Status().Peers {
			if p.Name == "a" && p.Alive && !p.Eligible && slicesContains(p.Resources, r2) {
				return true
			}
		}
		return false
	})
	eventTime(t, b, "peer a has not released "+r2)
	// Hold it a while: a few retries fail, b never takes over.
	waitFor(t, 5*time.Second, "two failed retries", func() bool {
		return metricValue(t, a.daemon.metrics.releaseRetries.WithLabelValues("error")) >= 2
	})
	if len(b.held()) != 0 || b.role() != RoleStandby {
		t.Fatalf("b took over while a's r2 may still be up: role %s held %v", b.role(), b.held())
	}

	if err := os.Remove(filepath.Join(a.dir, "nostop")); err != nil {
		t.Fatal(err)
	}
	fixed := time.Now()
	waitFor(t, 10*time.Second, "b holding the group", func() bool { return len(b.held()) == 2 })
	t.Logf("stop succeeding again -> the peer holds the group: %s (%d of %d samples with two holders)",
		time.Since(fixed).Round(time.Millisecond), hs.both.Load(), hs.samples.Load())
	if n := hs.both.Load(); n > 0 {
		t.Fatalf("two holders in %d samples", n)
	}
	if a.running("r2") || len(a.held()) != 0 || a.daemon.role.Status().Release != nil {
		t.Fatalf("a after the retry: r2 running %v held %v release %+v", a.running("r2"), a.held(), a.daemon.role.Status().Release)
	}
	eventTime(t, a, "release complete after")
	if v := metricValue(t, a.daemon.metrics.releaseIncomplete); v != 0 {
		t.Fatalf("lockstep_release_incomplete %v after the release", v)
	}
	if v := metricValue(t, a.daemon.metrics.releaseRetries.WithLabelValues("ok")); v != 1 {
		t.Fatalf("successful retries %v", v)
	}
}

func slicesContains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// A takeover whose start fails and whose stop fails too keeps the claim,
// says so in the role reason, and takes over once both are fixed.
func TestReleaseIncompleteAfterFailedStart(t *testing.T) {
	tc := startCluster(t, gatedOpts())
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	touch(t, filepath.Join(b.dir, "nostart"))
	touch(t, filepath.Join(b.dir, "nostop"))
	a.stop(errCrash)
	waitFor(t, 5*time.Second, "b's takeover failed with r2 unreleased", func() bool {
		return b.role() == RoleStandby && b.daemon.role.Status().Release != nil
	})
	if r := b.reason(); !strings.Contains(r, "resource start failed") || !strings.Contains(r, "RELEASE INCOMPLETE") {
		t.Fatalf("b's reason %q", r)
	}
	if err := os.Remove(filepath.Join(b.dir, "nostop")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "b's release complete", func() bool { return b.daemon.role.Status().Release == nil && len(b.held()) == 0 })
	if err := os.Remove(filepath.Join(b.dir, "nostart")); err != nil {
		t.Fatal(err)
	}
	// After the failed start's hold (2 x deadtime).
	waitFor(t, 5*time.Second, "b writer", func() bool { return len(b.held()) == 2 })
}

// A shutdown whose stop fails retries it and says goodbye only once it
// succeeds: the peer does not take over before.
func TestReleaseIncompleteAtShutdown(t *testing.T) {
	tc := startCluster(t, gatedOpts())
	a, b := tc.nodes["a"], tc.nodes["b"]
	waitFor(t, 5*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
	hs := sampleHolders(a, b)
	defer hs.close()
	touch(t, filepath.Join(a.dir, "nostop"))
	go func() {
		time.Sleep(time.Second)
		os.Remove(filepath.Join(a.dir, "nostop"))
	}()
	stopped := time.Now()
	a.stop(nil)
	t.Logf("shutdown with a stop failing for 1s took %s", time.Since(stopped).Round(time.Millisecond))
	if a.running("r2") {
		t.Fatal("r2 still running after the shutdown")
	}
	waitFor(t, 3*time.Second, "b writer", func() bool { return len(b.held()) == 2 })
	if n := hs.both.Load(); n > 0 {
		t.Fatalf("two holders in %d samples", n)
	}
	eventTime(t, a, "shutdown: release complete after retrying")
}
