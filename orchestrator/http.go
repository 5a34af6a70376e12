package orchestrator

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
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
	Node        string             `json:"node"`
	Role        string             `json:"role"`
	RoleSince   time.Time          `json:"role_since"`
	RoleReason  string             `json:"role_reason"`
	Draining    bool               `json:"draining"`
	Decided     bool               `json:"decided"`
	Health      Health             `json:"health"`
	DB          string             `json:"db,omitempty"`
	Peers       []PeerStatus       `json:"peers"`
	Witnesses   []WitnessStatus    `json:"witnesses"`
	Resources   []ResourceStatus   `json:"resources"`
	SelfFence   *SelfFenceStatus   `json:"self_fence,omitempty"`
	Arbiter     *ArbiterStatus     `json:"arbiter,omitempty"`
	Sync        []SyncTargetStatus `json:"sync"`
	Replication *dbrepl.PairStatus `json:"replication"`
	Events      []Event            `json:"events"`
	GeneratedAt time.Time          `json:"generated_at"`
}

// health decides whether this node should receive traffic.
func health(rs RoleStatus) Health {
	h := Health{}
	switch {
	case rs.SelfFence != nil && !rs.SelfFence.Holding:
		h.Agent, h.Reason = AgentMaint, fmt.Sprintf("SELF-FENCE NOT HOLDING after %d attempts since %s: this node may still be writable: %s",
			rs.SelfFence.Attempts, rs.SelfFence.Since.Format(time.RFC3339), rs.SelfFence.LastError)
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
	default:
		h.OK, h.Agent, h.Reason = true, AgentUp, rs.Role
	}
	return h
}

// Health decides whether this node should receive traffic.
func (d *Daemon) Health() Health {
	h := health(d.role.Status())
	d.metrics.healthy.Set(b2f(h.OK))
	return h
}

// Status assembles the /status document.
func (d *Daemon) Status() Status {
	rs := d.role.Status()
	h := health(rs)
	d.metrics.healthy.Set(b2f(h.OK))
	st := Status{
		Node: rs.Node, Role: rs.Role, RoleSince: rs.RoleSince, RoleReason: rs.Reason,
		Draining: rs.Draining, Decided: rs.Decided, Health: h, DB: rs.DB,
		Peers: rs.Peers, Witnesses: rs.Witnesses, Resources: rs.Resources, SelfFence: rs.SelfFence, Arbiter: rs.Arbiter,
		Sync: []SyncTargetStatus{}, GeneratedAt: time.Now(),
	}
	for _, j := range d.cfg.Sync {
		st.Sync = append(st.Sync, j.Targets()...)
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
	prom := promhttp.HandlerFor(d.cfg.Registry, promhttp.HandlerOpts{Registry: d.cfg.Registry})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		d.Health() // refreshes lockstep_healthy for this scrape
		prom.ServeHTTP(w, r)
	})
	return mux
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
