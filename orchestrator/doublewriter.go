package orchestrator

import (
	"fmt"
	"time"
)

// DoubleWriterStatus is a double writer this node detected: it and Peer
// both held the writer role when they heard each other again (heartbeat
// mode cannot prevent it when a node↔node cut leaves both nodes the
// witness; see README). decide resolves it at once (resolveDoubleWriter);
// this is the alert: an event, /status, /health and metrics.
type DoubleWriterStatus struct {
	Peer       string    `json:"peer"`
	Kept       string    `json:"kept"` // the node that keeps the writer role ("" when both step down)
	Why        string    `json:"why"`
	DetectedAt time.Time `json:"detected_at"`
	// Active while both still claim the role (until the step-down is seen).
	Active bool `json:"active"`
	Count  int  `json:"count"` // detections since the daemon started
}

// noteDoubleWriter raises the alert once per detection and clears the
// gauge when the double writer is gone. Role loop only.
func (rm *RoleManager) noteDoubleWriter(d *doubleWriter, now time.Time) {
	cur := rm.double.Load()
	if d == nil {
		if cur != nil && cur.Active {
			next := *cur
			next.Active = false
			rm.double.Store(&next)
			rm.metrics.doubleWriter.Set(0)
			rm.events.Add(EventRole, fmt.Sprintf("double writer with %s resolved: %s", cur.Peer, orNobody(cur.Kept)+" is the only writer"), "peer", cur.Peer)
		}
		return
	}
	if cur != nil && cur.Active && cur.Peer == d.peer {
		return
	}
	next := &DoubleWriterStatus{Peer: d.peer, Kept: d.kept, Why: d.why, DetectedAt: now, Active: true, Count: 1}
	if cur != nil {
		next.Count = cur.Count + 1
	}
	rm.double.Store(next)
	rm.metrics.doubleWriter.Set(1)
	rm.metrics.doubleWriters.Inc()
	rm.events.Warn(EventRole, fmt.Sprintf("DOUBLE WRITER: %s and %s both hold the writer role (their link was cut while both reached the witness); %s. The other node's writes since the cut stay in its binlog as errant transactions for `repl repair`",
		rm.self.Name, d.peer, d.why), "peer", d.peer)
}

func orNobody(s string) string {
	if s == "" {
		return "nobody (both stepped down; the election picks one)"
	}
	return s
}
