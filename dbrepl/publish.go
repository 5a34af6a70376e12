package dbrepl

import (
	"fmt"
	"math"
	"time"
)

// publish turns the poll's observations into the PairStatus, the verdict
// and the metrics.
func (s *Supervisor) publish(obs [2]*Observation, ev [2]*nodeEval) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.obs = obs
	st := PairStatus{GeneratedAt: time.Now().UTC()}
	var problems []string
	unreachable, brokenRepl, writable, fencedN := 0, 0, 0, 0
	var fencedName string
	replBroken := [2]bool{}
	for i, o := range obs {
		e := ev[i]
		f := s.fences[i]
		ns := NodeStatus{
			Name:       o.Node,
			Address:    s.nodes[i].addr,
			Reachable:  o.Reachable,
			ObservedAt: o.Local.UTC(),
			Flavor:     o.Flavor,
		}
		if o.Err != nil {
			ns.Error = o.Err.Error()
		} else if o.HeartbeatErr != nil {
			ns.Error = "heartbeat: " + o.HeartbeatErr.Error()
		}
		if f != nil && s.foreign[i] != "" {
			ns.FenceRecordIgnored = s.foreign[i]
			problems = append(problems, fmt.Sprintf("%s: fence record ignored, it belongs to another server: %s", o.Node, s.foreign[i]))
			f = nil
		}
		if f != nil {
			ns.Fenced, ns.FenceReason, ns.FenceManual = true, f.Reason, f.Manual
			since := f.Since
			ns.FenceSince = &since
			fencedN++
			fencedName = o.Node
		}
		if o.Reachable && o.Err == nil {
			ns.ReadOnly = o.ReadOnly || o.SuperReadOnly
			ns.Writable = !ns.ReadOnly
			if f != nil && !ns.ReadOnly {
				ns.FenceDisagrees = "fence record says fenced, but the server is writable (read_only=OFF)"
				problems = append(problems, fmt.Sprintf("%s: %s", o.Node, ns.FenceDisagrees))
			}
			ns.GTIDBinlogPos, ns.GTIDSlavePos, ns.GTIDCurrentPos = o.GTIDBinlogPos, o.GTIDSlavePos, o.GTIDCurrentPos
			ns.GTIDExecuted = o.GTIDExecuted
			if o.Flavor == FlavorMySQL {
				// One field the dashboard can always show.
				ns.GTIDBinlogPos = o.GTIDExecuted
			}
			ns.BinlogFile, ns.BinlogPos = o.Binlog.File, o.Binlog.Position
			if r := e.replica; r != nil {
				ns.IORunning, ns.SQLRunning = r.IOOK(), r.SQLOK()
				ns.SecondsBehindMaster = r.SecondsBehind
				ns.GTIDRetrieved = r.RetrievedGTID
			}
			ns.LastErrno, ns.LastError, ns.LastErrorGTID = e.errno, e.errText, e.failingGTID
			if e.lag != nil {
				v := e.lag.Seconds()
				ns.LagSeconds = &v
			}
			if e.age != nil {
				v := e.age.Seconds()
				ns.HeartbeatAge = &v
			}
			ns.BehindTrx = e.behind
			ns.ErrantGTIDs = e.errant
			if ns.Writable {
				writable++
			}
		}
		if !o.Reachable {
			unreachable++
			problems = append(problems, fmt.Sprintf("%s unreachable: %s", o.Node, errString(o.Err)))
		} else if o.Err != nil {
			brokenRepl++
			problems = append(problems, o.Err.Error())
		}
		if e.brokenNow != "" {
			problems = append(problems, fmt.Sprintf("%s: %s", o.Node, e.brokenNow))
		} else if e.lagging != "" {
			problems = append(problems, fmt.Sprintf("%s: %s", o.Node, e.lagging))
		}
		problems = append(problems, e.replProblems...)
		if e.brokenNow != "" || e.lagging != "" || e.stopped {
			replBroken[i] = true
			brokenRepl++
		}
		if len(e.errant) > 0 {
			problems = append(problems, fmt.Sprintf("%s: errant transactions its peer lacks: %v", o.Node, e.errant))
		}
		if o.HeartbeatErr != nil && o.Err == nil {
			problems = append(problems, fmt.Sprintf("%s: heartbeat write failed: %v", o.Node, o.HeartbeatErr))
		}
		if e.lag != nil && *e.lag >= s.cfg.Fence.UnfenceLag && e.lagging == "" {
			problems = append(problems, fmt.Sprintf("%s: lag %s over unfence_lag %s", o.Node, e.lag.Round(time.Millisecond), s.cfg.Fence.UnfenceLag))
		}
		st.Nodes = append(st.Nodes, ns)

		s.metrics.up.WithLabelValues(o.Node).Set(b2f(o.Reachable))
		s.metrics.fenced.WithLabelValues(o.Node).Set(b2f(f != nil))
		if e.lag != nil {
			s.metrics.lag.WithLabelValues(o.Node).Set(e.lag.Seconds())
		} else {
			s.metrics.lag.WithLabelValues(o.Node).Set(math.NaN())
		}
		if e.behind != nil {
			s.metrics.behind.WithLabelValues(o.Node).Set(float64(*e.behind))
		} else {
			s.metrics.behind.WithLabelValues(o.Node).Set(math.NaN())
		}
	}
	if aic := autoIncrementCollision(obs); aic != "" {
		problems = append(problems, aic)
	}
	splitBrain := obs[0].Reachable && obs[1].Reachable && writable == 2 && replBroken[0] && replBroken[1]
	if splitBrain {
		problems = append([]string{"both nodes writable while replication is broken both ways"}, problems...)
	}
	switch {
	case splitBrain:
		st.Verdict = VerdictSplitBrain
	case fencedN == 1:
		st.Verdict = VerdictFenced
		st.FencedNode = fencedName
	case fencedN == 2 || unreachable > 0 || brokenRepl > 0:
		st.Verdict = VerdictBroken
	case len(problems) > 0:
		st.Verdict = VerdictDegraded
	default:
		st.Verdict = VerdictHealthy
	}
	st.Problems = problems
	st.Observer = s.inactive
	s.status = st
	s.metrics.healthy.Set(b2f(st.Verdict == VerdictHealthy))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// autoIncrementCollision explains how the two nodes' auto_increment
// settings can hand out the same id, or "" when they cannot.
func autoIncrementCollision(obs [2]*Observation) string {
	a, b := obs[0], obs[1]
	if !a.Reachable || !b.Reachable || a.Err != nil || b.Err != nil || a.AutoIncInc == 0 || b.AutoIncInc == 0 {
		return ""
	}
	switch {
	case a.AutoIncInc != b.AutoIncInc:
		return fmt.Sprintf("auto_increment_increment differs (%s=%d, %s=%d): generated ids can collide",
			a.Node, a.AutoIncInc, b.Node, b.AutoIncInc)
	case a.AutoIncInc < 2:
		return fmt.Sprintf("auto_increment_increment=%d on both nodes: both generate the same ids (set 2 and offsets 1/2)", a.AutoIncInc)
	case a.AutoIncOff%a.AutoIncInc == b.AutoIncOff%b.AutoIncInc:
		return fmt.Sprintf("auto_increment_offset %d on %s and %d on %s are equal modulo %d: generated ids collide",
			a.AutoIncOff, a.Node, b.AutoIncOff, b.Node, a.AutoIncInc)
	}
	return ""
}
