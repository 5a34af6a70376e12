package orchestrator

import (
	"slices"
	"testing"
	"time"
)

// BenchmarkFailover measures, at the default keepalive (200ms), deadtime
// (1s) and takeover margin (2 x keepalive), the time from the writer's
// daemon dying (no goodbye, like kill -9) to the survivor holding every
// resource. Run: go test -run '^$' -bench Failover -benchtime 10x ./orchestrator/
func BenchmarkFailover(b *testing.B) {
	var took []time.Duration
	for b.Loop() {
		tc := startCluster(b, clusterOpts{keepalive: DefaultKeepalive, deadtime: DefaultDeadtime})
		a, s := tc.nodes["a"], tc.nodes["b"]
		waitFor(b, 10*time.Second, "a writer", func() bool { return len(a.held()) == 2 })
		// Kill at a random phase of the heartbeat cycle.
		time.Sleep(time.Duration(len(took)%4) * DefaultKeepalive / 4)
		killed := time.Now()
		a.stop(errCrash)
		waitFor(b, 10*time.Second, "survivor holding the resources", func() bool { return len(s.held()) == 2 })
		took = append(took, time.Since(killed))
		s.stop(nil)
	}
	slices.Sort(took)
	var sum time.Duration
	for _, d := range took {
		sum += d
	}
	b.ReportMetric(float64(sum.Milliseconds())/float64(len(took)), "ms-mean")
	b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "ms-max")
	b.ReportMetric(float64(took[0].Milliseconds()), "ms-min")
	b.ReportMetric(0, "ns/op")
}
