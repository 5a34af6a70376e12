package orchestrator

import (
	"bytes"
	"crypto/hmac"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Heartbeats travel over UDP: a lost datagram is simply a missed
// heartbeat (which deadtime already tolerates), there is no connection to
// re-establish after a partition heals, no head-of-line blocking behind a
// stalled send buffer, and every datagram is authenticated on its own.
//
// Wire format: magic(4) | key fingerprint(4) | HMAC-SHA256(32) | JSON body.
// The MAC covers magic, fingerprint and body.
var heartbeatMagic = []byte("LSH1")

const (
	headerLen       = 4 + 4 + 32
	maxHeartbeatLen = 8 << 10
)

// Heartbeat is what a node tells its peers every keepalive: enough for
// each of them to decide roles without asking anything else.
type Heartbeat struct {
	Node string `json:"node"`
	// Boot is random per daemon start; Seq increases within a boot. Together
	// with Time they make every datagram usable once.
	Boot uint64 `json:"boot"`
	Seq  uint64 `json:"seq"`
	Time int64  `json:"ts"` // unix nanoseconds at the sender

	Role     string `json:"role"`
	Decided  bool   `json:"decided"`  // past the startup wait
	Eligible bool   `json:"eligible"` // may take the writer role now
	Draining bool   `json:"draining"` // releasing resources
	Leaving  bool   `json:"leaving"`  // shut down cleanly, resources released
	// WriterSince orders two nodes that both claim the writer role.
	WriterSince int64 `json:"writer_since,omitempty"`
	WitnessSeen bool  `json:"witness_seen"`

	DB         string   `json:"db,omitempty"`
	DBFenced   bool     `json:"db_fenced"`
	DBReason   string   `json:"db_reason,omitempty"`
	AppliedTrx int64    `json:"applied_trx,omitempty"`
	LagSeconds *float64 `json:"lag_seconds,omitempty"`
	Resources  []string `json:"resources,omitempty"` // held, in start order
}

// Rejection reasons, used as metric labels and in events.
const (
	rejectMalformed = "malformed"
	rejectAuth      = "auth"
	rejectStale     = "stale"
	rejectReplay    = "replay"
	rejectUnknown   = "unknown_node"
)

// rejectError says why a datagram was dropped.
type rejectError struct {
	reason string
	msg    string
}

func (e *rejectError) Error() string { return e.msg }

func rejectf(reason, format string, args ...any) error {
	return &rejectError{reason: reason, msg: fmt.Sprintf(format, args...)}
}

func rejectReason(err error) string {
	var r *rejectError
	if errors.As(err, &r) {
		return r.reason
	}
	return rejectMalformed
}

// encodeHeartbeat signs hb with key.
func encodeHeartbeat(key *Key, hb *Heartbeat) ([]byte, error) {
	body, err := json.Marshal(hb)
	if err != nil {
		return nil, err
	}
	mac := key.sign(heartbeatMagic, key.fingerprint[:], body)
	out := make([]byte, 0, headerLen+len(body))
	out = append(out, heartbeatMagic...)
	out = append(out, key.fingerprint[:]...)
	out = append(out, mac...)
	return append(out, body...), nil
}

// decodeHeartbeat authenticates pkt and parses it. It does not check
// freshness; see replayGuard.
func decodeHeartbeat(key *Key, pkt []byte) (*Heartbeat, error) {
	if len(pkt) < headerLen || !bytes.Equal(pkt[:4], heartbeatMagic) {
		return nil, rejectf(rejectMalformed, "not a lockstep heartbeat (%d bytes)", len(pkt))
	}
	fp, mac, body := pkt[4:8], pkt[8:headerLen], pkt[headerLen:]
	want := key.sign(pkt[:4], fp, body)
	if !hmac.Equal(mac, want) {
		if !bytes.Equal(fp, key.fingerprint[:]) {
			return nil, rejectf(rejectAuth, "failed authentication: sender's key fingerprint %s differs from ours %s: check cluster.key_file on both nodes",
				hex.EncodeToString(fp), key.Fingerprint())
		}
		return nil, rejectf(rejectAuth, "failed authentication (bad MAC with our key fingerprint %s: forged or corrupted): check cluster.key_file on both nodes", key.Fingerprint())
	}
	var hb Heartbeat
	if err := json.Unmarshal(body, &hb); err != nil {
		return nil, rejectf(rejectMalformed, "authenticated but unparsable heartbeat: %v", err)
	}
	if hb.Node == "" || hb.Boot == 0 || hb.Seq == 0 {
		return nil, rejectf(rejectMalformed, "heartbeat lacks node, boot or seq")
	}
	return &hb, nil
}

// replayGuard keeps, per sender, the newest (boot, seq, time) accepted.
// A datagram is accepted once: within a boot its seq must grow; a new boot
// must be newer than anything accepted from the previous one; and its
// timestamp must be within maxSkew of our clock, which bounds replays of
// datagrams recorded before we ourselves restarted.
type replayGuard struct {
	boot   uint64
	seq    uint64
	lastTS int64
}

func (g *replayGuard) check(hb *Heartbeat, now time.Time, maxSkew time.Duration) error {
	skew := now.Sub(time.Unix(0, hb.Time))
	if skew > maxSkew || skew < -maxSkew {
		return rejectf(rejectStale, "stale heartbeat: timestamp is %s off our clock (limit %s): replayed, or clocks not synchronised", skew.Round(time.Millisecond), maxSkew)
	}
	if g.boot == hb.Boot {
		if hb.Seq <= g.seq {
			return rejectf(rejectReplay, "replayed heartbeat: seq %d already seen (newest %d)", hb.Seq, g.seq)
		}
	} else if g.boot != 0 && hb.Time <= g.lastTS {
		return rejectf(rejectReplay, "replayed heartbeat from an earlier daemon start (boot %x)", hb.Boot)
	}
	return nil
}

func (g *replayGuard) accept(hb *Heartbeat) (restarted bool) {
	restarted = g.boot != 0 && g.boot != hb.Boot
	g.boot, g.seq, g.lastTS = hb.Boot, hb.Seq, hb.Time
	return restarted
}
