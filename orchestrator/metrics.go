package orchestrator

import "github.com/prometheus/client_golang/prometheus"

// Metrics of the role manager and its resources.
type Metrics struct {
	role              *prometheus.GaugeVec
	fenced            prometheus.Gauge
	peerAlive         *prometheus.GaugeVec
	heartbeatsSent    prometheus.Counter
	heartbeatsRecv    *prometheus.CounterVec
	heartbeatLosses   *prometheus.CounterVec
	heartbeatRejected *prometheus.CounterVec
	witnessUp         *prometheus.GaugeVec
	resourceActions   *prometheus.CounterVec
	roleChanges       prometheus.Counter
	healthy           prometheus.Gauge
	restarts          *prometheus.CounterVec
	monitor           *monitorMetrics
	selfFenceFailing  prometheus.Gauge
	selfFenceAttempts *prometheus.CounterVec
	doubleWriter      prometheus.Gauge
	doubleWriters     prometheus.Counter
	releaseIncomplete prometheus.Gauge
	releaseRetries    *prometheus.CounterVec
}

// NewMetrics registers the orchestrator's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		role: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockstep_role", Help: "1 for the role this node currently has (writer, standby, fenced).",
		}, []string{"role"}),
		fenced: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lockstep_fenced", Help: "1 when this node is fenced (self-fenced or its database fenced).",
		}),
		peerAlive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockstep_peer_alive", Help: "1 while a valid heartbeat from the peer arrived within deadtime.",
		}, []string{"peer"}),
		heartbeatsSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lockstep_heartbeats_sent_total", Help: "Heartbeat datagrams sent (one per peer per keepalive).",
		}),
		heartbeatsRecv: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockstep_heartbeats_received_total", Help: "Valid heartbeats accepted, per peer.",
		}, []string{"peer"}),
		heartbeatLosses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockstep_heartbeat_losses_total", Help: "Times a peer was declared dead (no valid heartbeat for deadtime).",
		}, []string{"peer"}),
		heartbeatRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockstep_heartbeat_rejected_total", Help: "Heartbeats dropped, by reason (auth, replay, stale, malformed, unknown_node).",
		}, []string{"reason"}),
		witnessUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockstep_witness_up", Help: "1 while the witness answered within deadtime.",
		}, []string{"witness"}),
		resourceActions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockstep_resource_actions_total", Help: "Resource start/stop calls by resource, action and result.",
		}, []string{"resource", "action", "result"}),
		roleChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lockstep_role_changes_total", Help: "Role transitions of this node.",
		}),
		healthy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lockstep_healthy", Help: "1 when /health answers 200 (this node should receive traffic).",
		}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockstep_component_restarts_total", Help: "Restarts of a supervised component after a failure.",
		}, []string{"component"}),
		selfFenceFailing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lockstep_self_fence_failing", Help: "1 while this node is fenced but not verifiably unwritable (database not read-only or resources still held).",
		}),
		selfFenceAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockstep_self_fence_attempts_total", Help: "Self-fence attempts (read_only, then the escalation), by result.",
		}, []string{"result"}),
	}
	m.doubleWriter = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "lockstep_double_writer", Help: "1 while this node and a live peer both hold the writer role (heartbeat mode, after a healed cut), until one steps down.",
	})
	m.doubleWriters = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "lockstep_double_writer_detected_total", Help: "Double writers detected by this node (two nodes holding the writer role when they hear each other again).",
	})
	m.releaseIncomplete = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "lockstep_release_incomplete", Help: "1 while a resource's stop has failed and it may still be up on this node (peers do not take over meanwhile).",
	})
	m.releaseRetries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lockstep_release_retries_total", Help: "Retried stops of resources whose stop had failed, by result.",
	}, []string{"result"})
	reg.MustRegister(m.selfFenceFailing, m.selfFenceAttempts, m.doubleWriter, m.doubleWriters, m.releaseIncomplete, m.releaseRetries)
	reg.MustRegister(m.role, m.fenced, m.peerAlive, m.heartbeatsSent, m.heartbeatsRecv, m.heartbeatLosses,
		m.heartbeatRejected, m.witnessUp, m.resourceActions, m.roleChanges, m.healthy, m.restarts)
	m.monitor = newMonitorMetrics(reg)
	return m
}

func (m *Metrics) setRole(role string) {
	for _, r := range []string{RoleWriter, RoleStandby, RoleFenced} {
		v := 0.0
		if r == role {
			v = 1
		}
		m.role.WithLabelValues(r).Set(v)
	}
}
