package lsync

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// downConnector is a target that cannot be reached (or refuses us); it
// records when it was dialled.
type downConnector struct {
	err error
	mu  sync.Mutex
	at  []time.Time
}

func (d *downConnector) Name() string { return "down" }

func (d *downConnector) Connect(context.Context) (Target, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.at = append(d.at, time.Now())
	return nil, d.err
}

func (d *downConnector) attempts() []time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]time.Time(nil), d.at...)
}

// TestUnreachablePeerIsRetriedEverySecondAtFirst: a short outage must not
// leave the catch-up waiting on a grown backoff once the peer is back.
// Without the cap, the gap before the seventh dial would be 1.6 s or more.
func TestUnreachablePeerIsRetriedEverySecondAtFirst(t *testing.T) {
	down := &downConnector{err: fmt.Errorf("%w: dial: connection refused", ErrDisconnected)}
	gaps := dialGaps(t, down, 7)
	if last := gaps[len(gaps)-1]; last > fastRetryMax+200*time.Millisecond {
		t.Errorf("gap before the last dial %s, want at most %s (gaps %v)", last, fastRetryMax, gaps)
	}
}

// TestRefusedTargetBacksOff: a refused host key or login is not retried
// every second; only an admin can fix it.
func TestRefusedTargetBacksOff(t *testing.T) {
	down := &downConnector{err: fmt.Errorf("host key verification failed")}
	gaps := dialGaps(t, down, 7)
	if last := gaps[len(gaps)-1]; last <= fastRetryMax+200*time.Millisecond {
		t.Errorf("gap before the last dial %s, want the backoff to grow past %s (gaps %v)", last, fastRetryMax, gaps)
	}
}

func dialGaps(t *testing.T, c *downConnector, dials int) []time.Duration {
	t.Helper()
	cfg := JobConfig{Name: "j", Source: t.TempDir(), Targets: []TargetConfig{{Name: "down", Path: t.TempDir()}}}
	j, err := NewJob(cfg, []Connector{c}, JobOptions{ReconnectMin: 100 * time.Millisecond, ReconnectMax: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := j.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer j.Stop()
	defer cancel()
	deadline := time.Now().Add(20 * time.Second)
	for len(c.attempts()) < dials {
		if time.Now().After(deadline) {
			t.Fatalf("%d dials in 20s, want %d", len(c.attempts()), dials)
		}
		time.Sleep(10 * time.Millisecond)
	}
	at := c.attempts()[:dials]
	gaps := make([]time.Duration, 0, dials-1)
	for i := 1; i < dials; i++ {
		gaps = append(gaps, at[i].Sub(at[i-1]))
	}
	return gaps
}
