package dbrepl_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
	"github.com/prometheus/client_golang/prometheus"
)

// Tight timings keep the suite fast; CI generosity is in the wait bounds.
const (
	testInterval = 100 * time.Millisecond
	testMaxLag   = time.Second
	testHold     = time.Second
)

type harness struct {
	t        *testing.T
	pair     *mariadbpair.Pair
	cfg      dbrepl.Config
	reg      *prometheus.Registry
	sup      *dbrepl.Supervisor
	cancel   context.CancelFunc
	done     chan error
	mu       sync.Mutex
	events   []dbrepl.Event
	eventsWG sync.WaitGroup
}

func testConfig(p *mariadbpair.Pair, stateDir string) dbrepl.Config {
	cfg := dbrepl.Config{
		Interval: testInterval,
		StateDir: stateDir,
		Fence: dbrepl.FenceConfig{
			MaxLag:      testMaxLag,
			UnfenceLag:  300 * time.Millisecond,
			UnfenceHold: testHold,
		},
	}
	for _, n := range p.Nodes {
		cfg.Nodes = append(cfg.Nodes, dbrepl.NodeConfig{Name: n.Name, DSN: n.MonitorDSN()})
	}
	cfg.SetDefaults()
	return cfg
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("LOCKSTEP_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(&tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// tWriter sends supervisor logs to t.Log so a failing test shows them.
type tWriter struct{ t *testing.T }

func (w *tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func startPair(t *testing.T) *mariadbpair.Pair {
	t.Helper()
	return mariadbpair.Start(t)
}

// supervise starts a supervisor for the pair; it is stopped on cleanup.
func supervise(t *testing.T, p *mariadbpair.Pair, cfg dbrepl.Config) *harness {
	t.Helper()
	return superviseWith(t, p, cfg, nil)
}

// superviseWith is supervise with a conflict source (nil: none).
func superviseWith(t *testing.T, p *mariadbpair.Pair, cfg dbrepl.Config, conflicts dbrepl.ConflictSource) *harness {
	t.Helper()
	h := &harness{t: t, pair: p, cfg: cfg, reg: prometheus.NewRegistry()}
	sup, err := dbrepl.New(cfg, dbrepl.Options{Logger: testLogger(t), Registerer: h.reg, Conflicts: conflicts})
	if err != nil {
		t.Fatal(err)
	}
	h.sup = sup
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.done = make(chan error, 1)
	go func() { h.done <- sup.Run(ctx) }()
	h.eventsWG.Add(1)
	go func() {
		defer h.eventsWG.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-sup.Events():
				h.mu.Lock()
				h.events = append(h.events, ev)
				h.mu.Unlock()
			}
		}
	}()
	t.Cleanup(h.stop)
	return h
}

// superviseHealthy is supervise, returning once the supervisor has seen
// the pair healthy.
func superviseHealthy(t *testing.T, p *mariadbpair.Pair, cfg dbrepl.Config) *harness {
	t.Helper()
	h := supervise(t, p, cfg)
	h.waitFor(20*time.Second, "healthy pair", healthy)
	return h
}

func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("supervisor: %v", err)
		}
	case <-time.After(30 * time.Second):
		h.t.Errorf("supervisor did not stop within 30s")
	}
	h.eventsWG.Wait()
}

func (h *harness) eventsOf(typ, node string) []dbrepl.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []dbrepl.Event
	for _, e := range h.events {
		if e.Type == typ && (node == "" || e.Node == node) {
			out = append(out, e)
		}
	}
	return out
}

func node(st dbrepl.PairStatus, name string) dbrepl.NodeStatus {
	for _, n := range st.Nodes {
		if n.Name == name {
			return n
		}
	}
	return dbrepl.NodeStatus{}
}

// waitFor polls the supervisor's status until cond holds or timeout.
func (h *harness) waitFor(timeout time.Duration, what string, cond func(dbrepl.PairStatus) bool) dbrepl.PairStatus {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	var st dbrepl.PairStatus
	for time.Now().Before(deadline) {
		st = h.sup.Status()
		if cond(st) {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.t.Fatalf("timed out after %s waiting for %s; status: %s", timeout, what, describe(st))
	return st
}

func describe(st dbrepl.PairStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "verdict=%s fenced=%s problems=%q", st.Verdict, st.FencedNode, st.Problems)
	for _, n := range st.Nodes {
		lag := "nil"
		if n.LagSeconds != nil {
			lag = fmt.Sprintf("%.3f", *n.LagSeconds)
		}
		fmt.Fprintf(&b, "\n  %s reachable=%v ro=%v fenced=%v(%s) io=%v sql=%v lag=%s err=%q lasterr=%d %q",
			n.Name, n.Reachable, n.ReadOnly, n.Fenced, n.FenceReason, n.IORunning, n.SQLRunning, lag, n.Error, n.LastErrno, n.LastError)
	}
	return b.String()
}

func healthy(st dbrepl.PairStatus) bool {
	if st.Verdict != dbrepl.VerdictHealthy || len(st.Nodes) != 2 {
		return false
	}
	for _, n := range st.Nodes {
		if n.LagSeconds == nil {
			return false
		}
	}
	return true
}

func readOnly(t *testing.T, n *mariadbpair.Node) bool {
	t.Helper()
	ro, err := n.ReadOnly(context.Background())
	if err != nil {
		t.Fatalf("%s: read_only: %v", n.Name, err)
	}
	return ro
}

// writer inserts rows on a node until stopped.
type writer struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	n      int
	err    error
}

func startWriter(t *testing.T, n *mariadbpair.Node, table string, every time.Duration) *writer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &writer{cancel: cancel}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
			_, err := n.DB.ExecContext(ctx, "INSERT INTO "+table+" (v) VALUES (?)", n.Name)
			w.mu.Lock()
			if err != nil && ctx.Err() == nil && w.err == nil {
				w.err = err
			}
			if err == nil {
				w.n++
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(w.stop)
	return w
}

func (w *writer) stop() {
	w.cancel()
	w.wg.Wait()
}

func createTable(t *testing.T, p *mariadbpair.Pair, table string) {
	t.Helper()
	ctx := context.Background()
	db1 := p.Nodes[0]
	for _, s := range []string{
		"CREATE DATABASE IF NOT EXISTS app",
		"CREATE TABLE IF NOT EXISTS " + table + " (id BIGINT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(64))",
	} {
		if _, err := db1.DB.ExecContext(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.WaitSynced(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
}

func metric(t *testing.T, h *harness, name, node string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := node == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "node" && l.GetValue() == node {
					match = true
				}
			}
			if !match {
				continue
			}
			if m.Gauge != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s{node=%q} not found", name, node)
	return 0
}
