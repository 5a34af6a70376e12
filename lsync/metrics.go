package lsync

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are shared by every job registered on the same Registerer.
type metrics struct {
	pending   *prometheus.GaugeVec
	lag       *prometheus.GaugeVec
	files     *prometheus.CounterVec
	bytes     *prometheus.CounterVec
	errors    *prometheus.CounterVec
	connected *prometheus.GaugeVec
	// verified and drift make the backstop visible: when the periodic
	// verification has to repair something the live path missed, that is
	// a bug, not routine.
	verified *prometheus.GaugeVec
	drift    *prometheus.CounterVec
	// held is the mass-deletion guard at work: entries it keeps from
	// being deleted, and whether the source root is missing.
	held, missing *prometheus.GaugeVec
	refused       *prometheus.CounterVec
	// protocol is an info-style gauge: 1 on the protocol the target's
	// session uses (or last used), 0 on the others it used before.
	protocol *prometheus.GaugeVec
	// passProgress is the running full pass (the numbers of `status` and
	// of `sync --once`'s progress bar), by "what".
	passProgress *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	labels := []string{"job", "target"}
	m := &metrics{
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockstep_sync_pending_files", Help: "Paths waiting to be synced to the target.",
		}, labels),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockstep_sync_lag_seconds", Help: "Age of the oldest change not yet on the target (0 when in sync).",
		}, labels),
		files: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockstep_sync_files_total", Help: "Files written to the target.",
		}, labels),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockstep_sync_bytes_total", Help: "Bytes of file content written to the target.",
		}, labels),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockstep_sync_errors_total", Help: "Failed operations on the target (per path, or connection).",
		}, labels),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockstep_sync_connected", Help: "1 when the session to the target is up.",
		}, labels),
		verified: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockstep_sync_last_verified_timestamp_seconds",
			Help: "Unix time at which a full comparison last found (or left) the target equal to the source.",
		}, labels),
		drift: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockstep_sync_verify_repairs_total",
			Help: "Paths a periodic verification had to repair although no change of theirs was pending: drift the live sync missed (a bug) or changes made on the target behind lockstep's back.",
		}, labels),
		held: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockstep_sync_deletes_held",
			Help: "Target entries the mass-deletion guard keeps from being deleted (max_delete, or an empty source root); the job holds until the source is back or `lockstep sync --once --allow-mass-delete` confirms.",
		}, labels),
		missing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockstep_sync_source_missing",
			Help: "1 while the source root does not exist (an unmounted volume, a deploy between its renames): nothing is deleted, the job retries.",
		}, labels),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lockstep_sync_refused_total",
			Help: "Operations the target refused because they would leave its root or go through a symlink there.",
		}, labels),
		protocol: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockstep_sync_target_protocol",
			Help: "1 for the protocol the target's session uses or last used (receiver v5, receiver v4, receiver v3, receiver v2, sftp, local; fallback=1 when receiver: auto fell back to SFTP), 0 for one it used before. SFTP as root leaves a hostile peer race windows the receiver does not (README, threat model).",
		}, append(labels, "protocol", "fallback")),
		passProgress: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lockstep_sync_pass_progress",
			Help: "The running full pass: what=compared|total (source entries), files|bytes (pushed), rate (entries/s), eta_seconds; 0 when none runs.",
		}, append(labels, "what")),
	}
	if reg == nil {
		return m
	}
	m.pending = register(reg, m.pending)
	m.lag = register(reg, m.lag)
	m.files = register(reg, m.files)
	m.bytes = register(reg, m.bytes)
	m.errors = register(reg, m.errors)
	m.connected = register(reg, m.connected)
	m.verified = register(reg, m.verified)
	m.drift = register(reg, m.drift)
	m.held = register(reg, m.held)
	m.missing = register(reg, m.missing)
	m.refused = register(reg, m.refused)
	m.protocol = register(reg, m.protocol)
	m.passProgress = register(reg, m.passProgress)
	return m
}

// register returns the already registered collector when another job in
// the same process registered it first.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err) // a conflicting definition is a programming error
	}
	return c
}
