package orchestrator

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func writeKey(t testing.TB, dir, secret string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, "cluster.key")
	if err := os.WriteFile(p, []byte(secret+"\n"), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

const testSecret = "0123456789abcdef0123456789abcdef-test-secret"

func TestLoadKeyValidation(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadKey(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "cannot read key file") {
		t.Fatalf("missing file: %v", err)
	}
	p := writeKey(t, dir, testSecret, 0o644)
	if _, err := LoadKey(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("group-readable key accepted or unclear: %v", err)
	}
	p = writeKey(t, dir, "short", 0o600)
	_, err := LoadKey(p)
	if err == nil || !strings.Contains(err.Error(), "at least 32") {
		t.Fatalf("short key: %v", err)
	}
	if strings.Contains(err.Error(), "short") && strings.Contains(err.Error(), "\"short\"") {
		t.Fatalf("error leaks the secret: %v", err)
	}
	p = writeKey(t, dir, testSecret, 0o600)
	k, err := LoadKey(p)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(k.String(), testSecret) || len(k.Fingerprint()) != 8 {
		t.Fatalf("key string %q", k.String())
	}
}

func TestConfigValidatesKeyFile(t *testing.T) {
	dir := t.TempDir()
	c := ClusterConfig{
		KeyFile: writeKey(t, dir, testSecret, 0o640),
		Nodes:   []NodeConfig{{Name: "a", Address: "127.0.0.1:1"}, {Name: "b", Address: "127.0.0.1:2"}},
	}
	c.SetDefaults()
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "key_file:") || !strings.Contains(err.Error(), "accessible by group") {
		t.Fatalf("want key_file permission error, got %v", err)
	}
	c.KeyFile = writeKey(t, dir, testSecret, 0o600)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.TakeoverMargin != 2*c.Keepalive {
		t.Fatalf("takeover_margin default %s", c.TakeoverMargin)
	}
}

func TestHeartbeatAuthentication(t *testing.T) {
	key := NewKey([]byte(testSecret))
	other := NewKey([]byte(strings.Repeat("x", 40)))
	hb := &Heartbeat{Node: "web2", Boot: 7, Seq: 1, Time: time.Now().UnixNano(), Role: RoleWriter}
	pkt, err := encodeHeartbeat(key, hb)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeHeartbeat(key, pkt)
	if err != nil || got.Node != "web2" || got.Role != RoleWriter {
		t.Fatalf("roundtrip: %+v %v", got, err)
	}

	// Forged: body changed after signing.
	forged := bytes.Replace(pkt, []byte(`"writer"`), []byte(`"fenced"`), 1)
	if _, err := decodeHeartbeat(key, forged); rejectReason(err) != rejectAuth || !strings.Contains(err.Error(), "forged or corrupted") {
		t.Fatalf("forged: %v", err)
	}
	// Signed with another key: the message names the key file.
	wrong, _ := encodeHeartbeat(other, hb)
	_, err = decodeHeartbeat(key, wrong)
	if rejectReason(err) != rejectAuth || !strings.Contains(err.Error(), "check cluster.key_file on both nodes") ||
		!strings.Contains(err.Error(), other.Fingerprint()) {
		t.Fatalf("wrong key: %v", err)
	}
	if _, err := decodeHeartbeat(key, []byte("garbage")); rejectReason(err) != rejectMalformed {
		t.Fatalf("garbage: %v", err)
	}
}

func TestReplayGuard(t *testing.T) {
	const self, ourBoot = "a", uint64(77)
	var g replayGuard
	// hb is b's datagram of boot/seq echoing our seq echo (0: no echo of
	// our current boot, e.g. recorded before we started).
	hb := func(boot, seq, echo uint64) *Heartbeat {
		h := &Heartbeat{Node: "b", Boot: boot, Seq: seq}
		if echo > 0 {
			h.Echo = map[string][]EchoRef{self: {{Boot: 5, Seq: 900}, {Boot: ourBoot, Seq: echo}}}
		}
		return h
	}
	first := hb(1, 1, 10)
	if err := g.check(first, self, ourBoot); err != nil {
		t.Fatal(err)
	}
	g.accept(first, self, ourBoot)
	if err := g.check(first, self, ourBoot); rejectReason(err) != rejectReplay {
		t.Fatalf("same datagram twice: %v", err)
	}
	second := hb(1, 2, 11)
	if err := g.check(second, self, ourBoot); err != nil {
		t.Fatal(err)
	}
	g.accept(second, self, ourBoot)
	// An older seq arriving late is a replay too.
	if err := g.check(hb(1, 1, 11), self, ourBoot); rejectReason(err) != rejectReplay {
		t.Fatalf("old seq: %v", err)
	}
	// Stale: made before we started (it echoes another boot of ours, or
	// none), whatever its timestamp says.
	stale := hb(1, 3, 0)
	stale.Time = time.Now().UnixNano()
	if err := g.check(stale, self, ourBoot); rejectReason(err) != rejectStale {
		t.Fatalf("stale: %v", err)
	}
	stale.Echo = map[string][]EchoRef{self: {{Boot: ourBoot + 1, Seq: 50}}, "c": {{Boot: ourBoot, Seq: 50}}}
	if err := g.check(stale, self, ourBoot); rejectReason(err) != rejectStale {
		t.Fatalf("echo of another boot, or for another node: %v", err)
	}
	// A restart (new boot) is accepted when it echoes a newer seq of ours
	// than the old boot did; a datagram of another boot echoing an older
	// one is a replay.
	if err := g.check(hb(9, 1, 9), self, ourBoot); rejectReason(err) != rejectReplay {
		t.Fatalf("old boot: %v", err)
	}
	restart := hb(9, 1, 14)
	if err := g.check(restart, self, ourBoot); err != nil {
		t.Fatal(err)
	}
	if !g.accept(restart, self, ourBoot) {
		t.Fatal("restart not reported")
	}
	// The previous boot cannot come back by replay.
	if err := g.check(hb(1, 50, 12), self, ourBoot); rejectReason(err) != rejectReplay {
		t.Fatalf("replay of the previous boot after a restart: %v", err)
	}
}

// TestReplayGuardIgnoresClocks: a sender whose clock is stepped by an hour
// either way is accepted as before; the timestamp plays no part.
func TestReplayGuardIgnoresClocks(t *testing.T) {
	var g replayGuard
	for i, step := range []time.Duration{0, time.Hour, -time.Hour, 6 * time.Second, -6 * time.Second} {
		h := &Heartbeat{Node: "b", Boot: 3, Seq: uint64(i + 1), Time: time.Now().Add(step).UnixNano(),
			Echo: map[string][]EchoRef{"a": {{Boot: 1, Seq: uint64(i + 1)}}}}
		if err := g.check(h, "a", 1); err != nil {
			t.Fatalf("clock step %s: %v", step, err)
		}
		g.accept(h, "a", 1)
	}
}

// TestEchoSet: bounded, keeps the accepted boot however many old ones a
// replayer adds, and forgets boots not heard for the window.
func TestEchoSet(t *testing.T) {
	now := time.Now()
	var s echoSet
	s.learn(100, 5, 100, now, time.Second)
	s.learn(100, 7, 100, now, time.Second)
	s.learn(100, 6, 100, now, time.Second) // a late datagram does not lower it
	if got := s.list(); len(got) != 1 || got[0] != (EchoRef{100, 7}) {
		t.Fatalf("%+v", got)
	}
	for i := range 3 * maxEchoBoots {
		s.learn(uint64(200+i), 1, 100, now.Add(time.Duration(i)*time.Millisecond), time.Second)
	}
	got := s.list()
	if len(got) != maxEchoBoots || !slices.Contains(got, EchoRef{100, 7}) {
		t.Fatalf("flooded set lost the accepted boot or grew: %+v", got)
	}
	s.learn(300, 1, 300, now.Add(5*time.Second), time.Second)
	if got := s.list(); len(got) != 1 || got[0] != (EchoRef{300, 1}) {
		t.Fatalf("expired boots kept: %+v", got)
	}
}

func TestAppliedTrx(t *testing.T) {
	if got := appliedTrx("0-1-100,1-2-50"); got != 150 {
		t.Fatalf("got %d", got)
	}
	if got := appliedTrx(""); got != 0 {
		t.Fatalf("got %d", got)
	}
}

func TestConfigChecksResources(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "svc")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o644)
	c := ClusterConfig{
		KeyFile: writeKey(t, dir, testSecret, 0o600),
		Nodes:   []NodeConfig{{Name: "a", Address: "127.0.0.1:1"}, {Name: "b", Address: "127.0.0.1:2"}},
		Resources: []ResourceConfig{
			{Exec: script}, {Exec: "relative/svc"}, {IPAddr: "10.0.0.10/24", Dev: "eth0"}, {IPAddr: "10.0.0.300/24"},
		},
	}
	c.SetDefaults()
	err := c.Validate()
	for _, want := range []string{"resources[1].exec: \"relative/svc\" must be an absolute path", "resources[3].ipaddr:", "resources[3].dev: required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
	if strings.Contains(err.Error(), "resources[0]") || strings.Contains(err.Error(), "resources[2]") {
		t.Errorf("valid resource rejected: %v", err)
	}
	// At daemon start the script must exist and be executable.
	_, err = NewResources([]ResourceConfig{{Exec: script}}, discardLogger())
	if err == nil || !strings.Contains(err.Error(), "resources[0].exec: "+script+" is not an executable file") {
		t.Errorf("non-executable script: %v", err)
	}
	_, err = NewResources([]ResourceConfig{{Exec: filepath.Join(dir, "missing")}}, discardLogger())
	if err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing script: %v", err)
	}
}
