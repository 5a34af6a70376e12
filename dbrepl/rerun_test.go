package dbrepl_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/integration/poll"
)

// The daemon restarts a failed supervisor by calling Run again: the second
// run observes the pair afresh with the metrics registered at New, and two
// runs never overlap.
func TestRunAgainAfterItReturned(t *testing.T) {
	p := startPair(t)
	reg := prometheus.NewRegistry()
	sup, err := dbrepl.New(testConfig(p, t.TempDir()), dbrepl.Options{Logger: testLogger(t), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	for run := 1; run <= 2; run++ {
		since := time.Now()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- sup.Run(ctx) }()
		poll.Until(t, 10*time.Second, fmt.Sprintf("run %d: a healthy status observed by this run", run), func() bool {
			st := sup.Status()
			return st.GeneratedAt.After(since) && healthy(st)
		})
		if err := sup.Run(ctx); err == nil {
			t.Error("an overlapping Run was accepted")
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}
