package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// serviceAlive reports whether node d's service process runs (its stop
// removes the pid file only once the process is gone).
func (d *daemon) serviceAlive() bool {
	pid := d.servicePID()
	if pid == 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// "pid (comm) S ...": a zombie no longer serves.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// holderSampler polls both nodes every 50ms: samples with two VIP
// holders, and with two holders of anything (the VIP or a running
// service).
type holderSampler struct {
	samples, twoVIP, twoHolders atomic.Int64
	stop                        chan struct{}
	once                        sync.Once
	wg                          sync.WaitGroup
}

func sampleHolders(c *cluster) *holderSampler {
	s := &holderSampler{stop: make(chan struct{})}
	s.wg.Go(func() {
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			vips, holders := 0, 0
			for _, d := range c.nodes {
				vip, err := d.node.HasAddr(c.vip)
				if err == nil && vip {
					vips++
				}
				if err == nil && vip || d.serviceAlive() {
					holders++
				}
			}
			s.samples.Add(1)
			if vips > 1 {
				s.twoVIP.Add(1)
			}
			if holders > 1 {
				s.twoHolders.Add(1)
			}
		}
	})
	return s
}

func (s *holderSampler) close() { s.once.Do(func() { close(s.stop) }); s.wg.Wait() }

// TestClusterReleaseIncomplete: the writer gives the role up (its track
// fails) but its service's stop exits 1 for a while, leaving the service
// running. The writer keeps announcing the unreleased service, the peer
// does not take over meanwhile — never two VIP holders, never the VIP or
// the service on both — and takes over once a retried stop succeeds.
func TestClusterReleaseIncomplete(t *testing.T) {
	c := serviceCluster(t)
	c.extraClusterFor = func(d *daemon) string {
		script := filepath.Join(d.dir, "track.sh")
		body := "#!/bin/sh\n[ -e " + strconv.Quote(filepath.Join(d.dir, "track.fail")) + " ] && { echo 'upstream unreachable'; exit 1; }\nexit 0\n"
		if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		return "  track:\n    - {name: upstream, script: " + script + ", interval: 200ms, timeout: 1s, fall: 1, rise: 1}"
	}
	for _, d := range c.nodes {
		d.start()
	}
	w := c.waitWriter(15 * time.Second)
	s := c.other(w)
	c.waitAnswer(5*time.Second, w.node.Name)
	svc := filepath.Join(w.dir, "svc.sh")

	hs := sampleHolders(c)
	defer hs.close()
	if err := os.WriteFile(filepath.Join(w.dir, "nostop"), []byte("device busy (test)"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(w.dir, "track.fail"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, w.node.Name+" reports its release incomplete", func() bool {
		st, err := w.status(t.Context())
		return err == nil && st.Role == "standby" && strings.Contains(string(st.raw), `"release_incomplete"`)
	})
	if !w.serviceAlive() {
		t.Fatalf("%s's service is not running: the stop gate did not hold it", w.node.Name)
	}
	if code := w.health(t.Context()); code != 503 {
		t.Errorf("%s /health %d while its release is incomplete", w.node.Name, code)
	}
	if a, _ := w.agent(t.Context()); a != "maint" {
		t.Errorf("%s agent check %q", w.node.Name, a)
	}
	if v := w.metric("lockstep_release_incomplete"); v != "1" {
		t.Errorf("lockstep_release_incomplete %q", v)
	}
	out, err := w.node.Command(t.Context(), lockstepBinary(t), "status", "-c", w.config).CombinedOutput()
	if !strings.Contains(string(out), "RELEASE INCOMPLETE") || !strings.Contains(string(out), "device busy (test)") {
		t.Errorf("lockstep status (%v) does not say the release is incomplete:\n%s", err, out)
	}

	// Several failed retries; the peer stays standby throughout.
	held := time.Now()
	for time.Since(held) < 3*time.Second {
		if vip, err := s.node.HasAddr(c.vip); err == nil && vip {
			t.Fatalf("%s took the VIP %s after the release began although %s's service was not stopped", s.node.Name, time.Since(held).Round(time.Millisecond), w.node.Name)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st, err := s.status(t.Context()); err != nil {
		t.Fatal(err)
	} else if _, ok := st.findEvent("role", "peer "+w.node.Name+" has not released "+svc); !ok {
		t.Errorf("%s does not say why it waits: %s", s.node.Name, st.raw)
	}

	if err := os.Remove(filepath.Join(w.dir, "nostop")); err != nil {
		t.Fatal(err)
	}
	fixed := time.Now()
	vipAt := waitFor2(t, 10*time.Second, s.node.Name+" holding the VIP", func() bool {
		vip, err := s.node.HasAddr(c.vip)
		return err == nil && vip
	})
	c.waitAnswer(5*time.Second, s.node.Name)
	answered := time.Since(fixed)
	hs.close()
	t.Logf("stop succeeding again -> %s holds the VIP: %s, its service answers: %s; samples (every 50ms): %d, with two VIP holders: %d, with the VIP or the service on both nodes: %d",
		s.node.Name, vipAt.Round(time.Millisecond), answered.Round(time.Millisecond), hs.samples.Load(), hs.twoVIP.Load(), hs.twoHolders.Load())
	if hs.twoVIP.Load() != 0 || hs.twoHolders.Load() != 0 {
		t.Fatalf("two holders: %d VIP samples, %d VIP-or-service samples", hs.twoVIP.Load(), hs.twoHolders.Load())
	}
	st, err := w.status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(st.raw), `"release_incomplete"`) {
		t.Errorf("%s still reports its release incomplete: %s", w.node.Name, st.raw)
	}
	if _, ok := st.findEvent("resource", "release complete after"); !ok {
		t.Errorf("no release-complete event in %s", st.raw)
	}
	if _, ok := st.findEvent("resource", "RELEASE INCOMPLETE", "device busy (test)"); !ok {
		t.Errorf("no release-incomplete event naming the stop's output in %s", st.raw)
	}
}
