package orchestrator

import (
	"bytes"
	"crypto/hmac"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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
	// Boot is random per daemon start (the sender's boot nonce); Seq
	// increases within a boot. Echo carries, per peer, the boot nonces of
	// that peer this sender heard recently with the newest Seq of each: a
	// receiver accepts a datagram only when it echoes the receiver's own
	// current boot, which proves it was made after the receiver started,
	// with no clock involved.
	Boot uint64               `json:"boot"`
	Seq  uint64               `json:"seq"`
	Echo map[string][]EchoRef `json:"echo,omitempty"`
	// Time is the sender's wall clock (unix nanoseconds). It is shown and
	// logged, never used to accept or order anything: a clock step on one
	// node must not change what the other believes.
	Time int64 `json:"ts"`

	Role     string `json:"role"`
	Decided  bool   `json:"decided"`  // past the startup wait
	Eligible bool   `json:"eligible"` // may take the writer role now
	Draining bool   `json:"draining"` // releasing resources
	Leaving  bool   `json:"leaving"`  // shut down cleanly, resources released
	// WriterSince is the sender's wall clock when it took the writer
	// role: shown, never compared (clocks differ).
	WriterSince int64 `json:"writer_since,omitempty"`
	// WriterForMs is how long the sender has held the writer role, by its
	// own monotonic clock, when it sent this: two writers that meet again
	// after a cut order themselves by it (decide.go, resolveDoubleWriter)
	// with no wall clock involved.
	WriterForMs int64 `json:"writer_for_ms,omitempty"`
	WitnessSeen bool  `json:"witness_seen"`

	DB         string   `json:"db,omitempty"`
	DBFenced   bool     `json:"db_fenced"`
	DBReason   string   `json:"db_reason,omitempty"`
	AppliedTrx int64    `json:"applied_trx,omitempty"`
	LagSeconds *float64 `json:"lag_seconds,omitempty"`
	Resources  []string `json:"resources,omitempty"` // held, in start order
	// Unreleased lists the resources whose stop failed: they may still be
	// up on the sender, whatever its role says. A peer does not take the
	// writer role while a live sender lists any (decide.go,
	// peerUnreleased); the sender retries the stop until it succeeds.
	Unreleased []string `json:"unreleased,omitempty"`
}

// EchoRef is one boot nonce of a peer as this sender heard it: the newest
// sequence number seen with it.
type EchoRef struct {
	Boot uint64 `json:"boot"`
	Seq  uint64 `json:"seq"`
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

// replayGuard is the anti-replay state of one sender. Freshness never
// depends on a clock:
//
//   - the datagram must echo our own current boot nonce, so it was made
//     after this daemon started (a datagram recorded earlier, whatever its
//     timestamp, is stale);
//   - within the sender's boot, seq must grow;
//   - a new boot of the sender must echo a newer seq of ours than the last
//     accepted datagram of its previous boot did: our seq only grows, so
//     the newer sender process is the one that heard us later, and replays
//     of the older one stay rejected.
type replayGuard struct {
	boot    uint64
	seq     uint64
	echoSeq uint64 // our seq echoed by the newest accepted datagram
}

// echoOf is the newest seq of ours that hb echoes for our boot, 0 when it
// echoes none.
func echoOf(hb *Heartbeat, self string, ourBoot uint64) (uint64, bool) {
	for _, e := range hb.Echo[self] {
		if e.Boot == ourBoot {
			return e.Seq, true
		}
	}
	return 0, false
}

func (g *replayGuard) check(hb *Heartbeat, self string, ourBoot uint64) error {
	if g.boot == hb.Boot && hb.Seq <= g.seq {
		return rejectf(rejectReplay, "replayed heartbeat: seq %d already seen (newest %d)", hb.Seq, g.seq)
	}
	echo, ok := echoOf(hb, self, ourBoot)
	if !ok {
		return rejectf(rejectStale, "stale heartbeat: it does not echo this daemon's boot nonce, so it may have been recorded before we started (normal for a keepalive or two after either daemon starts)")
	}
	if g.boot != 0 && g.boot != hb.Boot && echo <= g.echoSeq {
		return rejectf(rejectReplay, "replayed heartbeat from an earlier daemon start (boot %x): it echoes our seq %d, the current start echoed %d", hb.Boot, echo, g.echoSeq)
	}
	return nil
}

// accept records hb, which check passed.
func (g *replayGuard) accept(hb *Heartbeat, self string, ourBoot uint64) (restarted bool) {
	echo, _ := echoOf(hb, self, ourBoot)
	restarted = g.boot != 0 && g.boot != hb.Boot
	g.boot, g.seq, g.echoSeq = hb.Boot, hb.Seq, max(echo, g.echoSeq)
	return restarted
}

// maxEchoBoots bounds the boot nonces remembered per peer. A replayed
// datagram of an old boot can add one (it passed authentication), which
// changes only what we echo, never what we believe; the peer's current
// boot is refreshed every keepalive and kept while it is the accepted one.
const maxEchoBoots = 8

// echoSet is what we echo for one peer: its boot nonces heard within
// deadtime, each with the newest seq.
type echoSet struct {
	refs []echoEntry
}

type echoEntry struct {
	EchoRef
	seen time.Time
}

// learn remembers hb's boot. keep is the boot we accepted last (never
// evicted); entries unheard for window expire.
func (s *echoSet) learn(boot, seq, keep uint64, now time.Time, window time.Duration) {
	found := false
	for i := range s.refs {
		if s.refs[i].Boot == boot {
			s.refs[i].Seq = max(s.refs[i].Seq, seq)
			s.refs[i].seen = now
			found = true
		}
	}
	if !found {
		s.refs = append(s.refs, echoEntry{EchoRef{boot, seq}, now})
	}
	s.refs = slices.DeleteFunc(s.refs, func(e echoEntry) bool {
		return e.Boot != keep && e.Boot != boot && now.Sub(e.seen) > window
	})
	for len(s.refs) > maxEchoBoots {
		oldest := -1
		for i, e := range s.refs {
			if e.Boot != keep && e.Boot != boot && (oldest < 0 || e.seen.Before(s.refs[oldest].seen)) {
				oldest = i
			}
		}
		s.refs = slices.Delete(s.refs, oldest, oldest+1)
	}
}

func (s *echoSet) list() []EchoRef {
	out := make([]EchoRef, 0, len(s.refs))
	for _, e := range s.refs {
		out = append(out, e.EchoRef)
	}
	return out
}
