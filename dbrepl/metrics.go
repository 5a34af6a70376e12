package dbrepl

import (
	"math"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	lag     *prometheus.GaugeVec
	fenced  *prometheus.GaugeVec
	behind  *prometheus.GaugeVec
	up      *prometheus.GaugeVec
	fences  prometheus.Counter
	healthy prometheus.Gauge
	active  prometheus.Gauge
	// refreshLag, when set, brings the lag gauge up to date from the
	// binlog streams just before a scrape reads it, so that the figure a
	// monitoring system sees is not one lag tick old.
	refreshLag atomic.Pointer[func()]
}

// lagCollector is the lag gauge, refreshed at collection time.
type lagCollector struct{ m *metrics }

func (c lagCollector) Describe(ch chan<- *prometheus.Desc) { c.m.lag.Describe(ch) }

func (c lagCollector) Collect(ch chan<- prometheus.Metric) {
	if f := c.m.refreshLag.Load(); f != nil {
		(*f)()
	}
	c.m.lag.Collect(ch)
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockstep_repl_lag_seconds",
			Help: "Heartbeat lag of the node behind its peer (NaN when unknown).",
		}, []string{"node"}),
		fenced: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockstep_repl_fenced",
			Help: "1 while lockstep holds the node fenced (read-only).",
		}, []string{"node"}),
		behind: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockstep_repl_behind_transactions",
			Help: "Peer transactions (by GTID) the node has not applied (NaN when unknown).",
		}, []string{"node"}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockstep_repl_up",
			Help: "1 when the node answered the last poll.",
		}, []string{"node"}),
		fences: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lockstep_repl_fences_total",
			Help: "Fences applied (automatic and manual).",
		}),
		healthy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lockstep_repl_healthy",
			Help: "1 when the pair's verdict is healthy.",
		}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lockstep_repl_active",
			Help: "1 when this supervisor makes the automatic fence decisions, 0 while it only observes.",
		}),
	}
	m.active.Set(1)
	if reg != nil {
		reg.MustRegister(lagCollector{m}, m.fenced, m.behind, m.up, m.fences, m.healthy, m.active)
	}
	return m
}

func (m *metrics) init(node string) {
	m.lag.WithLabelValues(node).Set(math.NaN())
	m.behind.WithLabelValues(node).Set(math.NaN())
	m.fenced.WithLabelValues(node).Set(0)
	m.up.WithLabelValues(node).Set(0)
}
