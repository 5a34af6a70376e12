package orchestrator

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// HAProxy agent-check answers. "up" is followed by "ready" because HAProxy
// keeps an agent-set DRAIN or MAINT administrative state until the agent
// says "ready"; without it a node that drained once would never return.
const (
	AgentUp    = "up ready"
	AgentDrain = "drain"
	AgentDown  = "down"
	AgentMaint = "maint"
)

// Health is the traffic verdict for this node.
type Health struct {
	OK     bool   `json:"ok"`
	Agent  string `json:"agent"`
	Reason string `json:"reason"`
	// Warnings name what does not change where traffic goes but needs an
	// operator: a sync job holding deletions, or waiting for its source.
	Warnings []string `json:"warnings,omitempty"`
}

// PeerStatus is one peer in /status.
type PeerStatus struct {
	Name          string         `json:"name"`
	Address       string         `json:"address"`
	Alive         bool           `json:"alive"`
	LastHeartbeat time.Time      `json:"last_heartbeat,omitzero"`
	From          string         `json:"from,omitempty"`
	Role          string         `json:"role,omitempty"`
	Eligible      bool           `json:"eligible"`
	DBFenced      bool           `json:"db_fenced"`
	Resources     []string       `json:"resources,omitempty"`
	Rejected      map[string]int `json:"rejected,omitempty"`
}

// Status is the /status document (and `lockstep status --json`). Field
// names are a stable interface: add, never rename.
type Status struct {
	Node       string           `json:"node"`
	Role       string           `json:"role"`
	RoleSince  time.Time        `json:"role_since"`
	RoleReason string           `json:"role_reason"`
	Draining   bool             `json:"draining"`
	Decided    bool             `json:"decided"`
	Health     Health           `json:"health"`
	DB         string           `json:"db,omitempty"`
	Peers      []PeerStatus     `json:"peers"`
	Witnesses  []WitnessStatus  `json:"witnesses"`
	Resources  []ResourceStatus `json:"resources"`
	SelfFence  *SelfFenceStatus `json:"self_fence,omitempty"`
	// ReleaseIncomplete is set while a resource's stop has failed: it may
	// still be up here, and peers do not take the writer role.
	ReleaseIncomplete *ReleaseStatus `json:"release_incomplete,omitempty"`
	Arbiter           *ArbiterStatus `json:"arbiter,omitempty"`
	// DoubleWriter is the last double writer detected (two nodes holding
	// the writer role after a healed cut) and how it was resolved.
	DoubleWriter *DoubleWriterStatus `json:"double_writer,omitempty"`
	Sync         []SyncTargetStatus  `json:"sync"`
	Replication  *dbrepl.PairStatus  `json:"replication"`
	Events       []Event             `json:"events"`
	GeneratedAt  time.Time           `json:"generated_at"`
	// Monitoring: whether this node may take the writer role, and why
	// not; what is being recovered in place; the failures `lockstep
	// clear` lifts; the track checks.
	Eligible         bool              `json:"eligible"`
	NotEligible      string            `json:"not_eligible,omitempty"`
	Recovering       string            `json:"recovering,omitempty"`
	ResourceFailures []ResourceFailure `json:"resource_failures"`
	Tracks           []TrackStatus     `json:"tracks"`
}

// health decides whether this node should receive traffic.
func health(rs RoleStatus) Health {
	h := Health{}
	switch {
	case rs.SelfFence != nil && !rs.SelfFence.Holding:
		h.Agent, h.Reason = AgentMaint, fmt.Sprintf("SELF-FENCE NOT HOLDING after %d attempts since %s: this node may still be writable: %s",
			rs.SelfFence.Attempts, rs.SelfFence.Since.Format(time.RFC3339), rs.SelfFence.LastError)
	case rs.Release != nil:
		// Not a writer, yet maybe still serving on the VIP: no traffic,
		// and an operator is needed if the retries keep failing.
		h.Agent, h.Reason = AgentMaint, fmt.Sprintf("RELEASE INCOMPLETE since %s (%d attempts): %s may still be up here; peers will not take over until it is stopped: %s",
			rs.Release.Since.Format(time.RFC3339), rs.Release.Attempts, strings.Join(rs.Release.Resources, ", "), rs.Release.LastError)
	case rs.DoubleWriter != nil && rs.DoubleWriter.Active && rs.DoubleWriter.Kept != rs.Node:
		// The step-down is under way: no new traffic here.
		h.Agent, h.Reason = AgentDown, "DOUBLE WRITER: stepping down: "+rs.DoubleWriter.Why
	case rs.Draining || rs.Leaving:
		h.Agent, h.Reason = AgentDrain, "draining: releasing resources"
	case rs.Role == RoleFenced:
		h.Agent, h.Reason = AgentMaint, "fenced: "+rs.Reason
	case !rs.Decided:
		h.Agent, h.Reason = AgentDown, "starting: waiting for peers"
	case rs.DBFenced:
		h.Agent, h.Reason = AgentDown, fmt.Sprintf("database %s fenced (out of sync): %s", rs.DB, rs.DBReason)
	case rs.DBUnreachable != "":
		h.Agent, h.Reason = AgentDown, fmt.Sprintf("database %s: %s", rs.DB, rs.DBUnreachable)
	case rs.Recovering != "":
		// Drain, not down: the restart usually takes a moment and
		// established sessions may finish.
		h.Agent, h.Reason = AgentDrain, "recovering: "+rs.Recovering
	case rs.Role == RoleWriter && rs.Ineligible != "":
		// Kept only because no peer may take over; what failed is not
		// serving here.
		h.Agent, h.Reason = AgentDrain, "writer not eligible, waiting for an eligible peer: "+rs.Ineligible
	case failingTrack(rs.Tracks) != "":
		h.Agent, h.Reason = AgentDrain, failingTrack(rs.Tracks)
	default:
		h.OK, h.Agent, h.Reason = true, AgentUp, rs.Role
		if dw := rs.DoubleWriter; dw != nil {
			// Still serving, but the alert stays visible until restart: the
			// loser's writes during the cut wait for `repl repair`.
			h.Reason += fmt.Sprintf("; DOUBLE WRITER with %s detected at %s (%d since start): %s keeps the writer role",
				dw.Peer, dw.DetectedAt.Format(time.RFC3339), dw.Count, dw.Kept)
		}
	}
	return h
}

func failingTrack(ts []TrackStatus) string {
	for _, t := range ts {
		if t.Checked && !t.OK {
			return fmt.Sprintf("track %s failing: %s", t.Name, t.LastError)
		}
	}
	return ""
}

// Health decides whether this node should receive traffic.
func (d *Daemon) Health() Health {
	h := health(d.role.Status())
	h.Warnings = d.syncWarnings()
	d.metrics.healthy.Set(b2f(h.OK))
	return h
}

// syncWarnings lists the sync targets that hold deletions.
func (d *Daemon) syncWarnings() []string {
	var out []string
	for _, j := range d.cfg.Sync {
		for _, t := range j.Status() {
			if t.Held != "" {
				out = append(out, fmt.Sprintf("sync %s -> %s holding %d deletion(s): %s", t.Job, t.Target, t.HeldDeletes, t.Held))
			}
			if t.Refused > 0 {
				out = append(out, fmt.Sprintf("sync %s -> %s: the peer refuses %d path(s), first %s (a symlink where lockstep writes on the peer: see the log)",
					t.Job, t.Target, t.Refused, t.FirstRefused))
			}
			if t.ProtocolFallback != "" {
				out = append(out, fmt.Sprintf("sync %s -> %s over SFTP: the lockstep receiver is unavailable on the peer (%s)",
					t.Job, t.Target, t.ProtocolFallback))
			}
		}
	}
	return out
}

// Status assembles the /status document.
func (d *Daemon) Status() Status {
	rs := d.role.Status()
	h := health(rs)
	h.Warnings = d.syncWarnings()
	d.metrics.healthy.Set(b2f(h.OK))
	st := Status{
		Node: rs.Node, Role: rs.Role, RoleSince: rs.RoleSince, RoleReason: rs.Reason,
		Draining: rs.Draining, Decided: rs.Decided, Health: h, DB: rs.DB,
		Peers: rs.Peers, Witnesses: rs.Witnesses, Resources: rs.Resources, SelfFence: rs.SelfFence, Arbiter: rs.Arbiter,
		ReleaseIncomplete: rs.Release,
		DoubleWriter:      rs.DoubleWriter,
		Sync:              []SyncTargetStatus{}, GeneratedAt: time.Now(),
		Eligible: rs.Ineligible == "", NotEligible: rs.Ineligible, Recovering: rs.Recovering,
		ResourceFailures: rs.ResourceFailures, Tracks: rs.Tracks,
	}
	for _, j := range d.cfg.Sync {
		for _, t := range j.Status() {
			st.Sync = append(st.Sync, SyncTargetStatus{Job: t.Job, Target: t.Target, Connected: t.Connected,
				PendingFiles: t.PendingFiles, LastSync: t.LastSync, LastVerified: t.LastVerified, LastError: t.LastError,
				Held: t.Held, HeldDeletes: t.HeldDeletes, Progress: t.Progress,
				Protocol: t.Protocol, ProtocolFallback: t.ProtocolFallback, Refused: t.Refused, FirstRefused: t.FirstRefused})
		}
	}
	if d.cfg.Repl != nil {
		ps := d.cfg.Repl.Status()
		st.Replication = &ps
	}
	st.Events = d.events.List()
	return st
}

// Handler serves /health, /status and /metrics.
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		h := d.Health()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if !h.OK {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "DOWN %s\n", h.Reason)
			return
		}
		fmt.Fprintf(w, "OK %s\n", h.Reason)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		_ = enc.Encode(d.Status())
	})
	// POST /clear?resource=NAME lifts a recorded resource failure
	// (`lockstep clear`); without resource, every one. POST only: a
	// crawler or a prefetching browser must not re-enable a node. Only
	// from this host: listen is often opened to the balancer, which may
	// read the state but must not change it.
	mux.HandleFunc("POST /clear", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !fromThisHost(r.RemoteAddr) {
			http.Error(w, "clear is accepted only from this host (run lockstep clear on it)", http.StatusForbidden)
			return
		}
		name := r.URL.Query().Get("resource")
		if name == "" && r.URL.Query().Get("all") != "1" {
			http.Error(w, "resource=NAME or all=1 required", http.StatusBadRequest)
			return
		}
		cleared, err := d.role.ClearFailure(name)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		for _, c := range cleared {
			fmt.Fprintf(w, "cleared %s\n", c)
		}
	})
	prom := promhttp.HandlerFor(d.cfg.Registry, promhttp.HandlerOpts{Registry: d.cfg.Registry})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		d.Health() // refreshes lockstep_healthy for this scrape
		prom.ServeHTTP(w, r)
	})
	return mux
}

// fromThisHost reports whether remote ("ip:port") is an address of this
// host (in this network namespace); TCP's handshake keeps it from being
// forged by another host.
func fromThisHost(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	if ip.IsLoopback() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if la, ok := netip.AddrFromSlice(n.IP); ok && la.Unmap() == ip {
				return true
			}
		}
	}
	return false
}

// serveAgent answers every connection with one agent-check line.
func (d *Daemon) serveAgent(l net.Listener) {
	acceptLoop(l, func(c net.Conn) {
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.Write([]byte(d.Health().Agent + "\n"))
		c.Close()
	})
}

// acceptLoop hands each connection to handle, one at a time, until the
// listener is closed: its owner stops it by closing l.
func acceptLoop(l net.Listener, handle func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		handle(c)
	}
}
