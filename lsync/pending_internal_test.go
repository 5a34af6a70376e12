package lsync

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A batch escalated to a rescan remembers since when its dropped events
// were seen, so that the catch-up pass knows which files to content-check.
func TestBatchEscalationKeepsChangedSince(t *testing.T) {
	s := newBatchState(2)
	t0 := time.Now()
	s.add(Event{Path: "a", Op: OpWrite}, t0)
	s.add(Event{Path: "b", Op: OpWrite}, t0.Add(time.Millisecond))
	s.add(Event{Path: "c", Op: OpWrite}, t0.Add(2*time.Millisecond))
	b := s.take()
	if !b.Rescan || !b.ChangedSince.Equal(t0) || len(b.Paths) != 0 {
		t.Fatalf("escalated batch = %+v; want a rescan with ChangedSince %v", b, t0)
	}
	s.add(Event{Path: "a", Op: OpWrite}, t0.Add(time.Second))
	if b := s.take(); b.Rescan || !b.ChangedSince.IsZero() {
		t.Fatalf("next batch = %+v; the escalation must not carry over", b)
	}
}

type noConnector struct{}

func (noConnector) Name() string { return "peer" }
func (noConnector) Connect(context.Context) (Target, error) {
	return nil, errors.New("not used")
}

// Paths queued for a target survive a queued full pass (reconnect,
// verification) and reach it as pending paths; an overflow replaces them
// by the time of the oldest one.
func TestWorkerKeepsPendingPathsAcrossRescan(t *testing.T) {
	j, err := NewJob(JobConfig{Name: "docroot", Source: t.TempDir(), Targets: []TargetConfig{{Name: "peer", Path: t.TempDir()}}},
		[]Connector{noConnector{}}, JobOptions{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer j.source.Close()
	w := j.workers[0]
	t0 := time.Now()
	w.enqueue(Batch{Paths: []string{"page.html"}, Oldest: t0})
	w.enqueue(Batch{Rescan: true, Reason: "connect", Oldest: t0.Add(time.Second)})
	w.enqueue(Batch{Paths: []string{"later.html"}, Oldest: t0.Add(2 * time.Second)})
	b, _ := w.take()
	slices.Sort(b.Paths)
	if !b.Rescan || !slices.Equal(b.Paths, []string{"later.html", "page.html"}) || !b.ChangedSince.IsZero() {
		t.Fatalf("taken = %+v; want a rescan carrying both pending paths", b)
	}

	// A failed pass puts everything back.
	w.requeue(b, nil)
	if st := w.status(); !st.Rescanning || st.PendingFiles != 2 {
		t.Fatalf("after requeue: %+v", st)
	}
	w.take()

	// Overflow: too many paths to remember.
	w.enqueue(Batch{Paths: []string{"first"}, Oldest: t0})
	big := make([]string, DefaultMaxPendingPaths)
	for i := range big {
		big[i] = "f" + strconv.Itoa(i)
	}
	w.enqueue(Batch{Paths: big, Oldest: t0.Add(time.Second)})
	b, _ = w.take()
	if !b.Rescan || len(b.Paths) != 0 || !b.ChangedSince.Equal(t0) {
		t.Fatalf("after overflow: rescan=%v paths=%d changedSince=%v; want a rescan since %v", b.Rescan, len(b.Paths), b.ChangedSince, t0)
	}
}
