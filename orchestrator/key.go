package orchestrator

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
)

// MinKeyBytes is the minimum amount of secret material in the key file:
// 32 bytes match the HMAC-SHA256 block security level.
const MinKeyBytes = 32

// Key is the cluster's heartbeat secret. It never appears in logs or in
// String output; Fingerprint identifies it without revealing it.
type Key struct {
	mac         []byte // derived HMAC key, never the raw file content
	fingerprint [4]byte
}

// LoadKey reads and checks a key file: it must exist, be a regular file,
// not be readable by group or others and hold at least MinKeyBytes of
// secret (surrounding whitespace, e.g. a trailing newline, is ignored).
func LoadKey(path string) (*Key, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s is accessible by group or others (mode %04o); run chmod 600 %s", path, perm, path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read key file: %w", err)
	}
	secret := bytes.TrimSpace(raw)
	if len(secret) < MinKeyBytes {
		return nil, fmt.Errorf("%s holds %d bytes of secret, need at least %d (e.g. head -c 48 /dev/urandom | base64 > %s)", path, len(secret), MinKeyBytes, path)
	}
	return NewKey(secret), nil
}

// NewKey derives the heartbeat key from secret material. Deriving (rather
// than using the file bytes directly) keeps the MAC key and the public
// fingerprint independent of each other.
func NewKey(secret []byte) *Key {
	k := &Key{mac: derive(secret, "lockstep heartbeat mac v1")}
	copy(k.fingerprint[:], derive(secret, "lockstep heartbeat fingerprint v1"))
	return k
}

func derive(secret []byte, label string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// Fingerprint is a short public identifier of the key, carried in every
// heartbeat so that a receiver can tell "different key" from "corrupted".
func (k *Key) Fingerprint() string { return hex.EncodeToString(k.fingerprint[:]) }

// String never reveals the secret.
func (k *Key) String() string { return "key:" + k.Fingerprint() }

func (k *Key) sign(parts ...[]byte) []byte {
	m := hmac.New(sha256.New, k.mac)
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)
}
