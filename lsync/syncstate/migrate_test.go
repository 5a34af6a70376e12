package syncstate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// writeSchema1 writes a state as lockstep wrote it before owners were
// recorded: schema 1, values mode|size|mtime|link.
func writeSchema1(t *testing.T, path, identity string, entries, intents map[string]Record) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	enc := func(r Record) []byte {
		b := binary.BigEndian.AppendUint32(nil, r.Mode)
		b = binary.BigEndian.AppendUint64(b, uint64(r.Size))
		b = binary.BigEndian.AppendUint64(b, uint64(r.MTimeNs))
		return append(b, r.Link...)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		if err := meta.Put(keySchema, binary.BigEndian.AppendUint32(nil, 1)); err != nil {
			return err
		}
		if err := meta.Put(keyIdentity, []byte(identity)); err != nil {
			return err
		}
		if err := meta.Put(keyComplete, []byte{1}); err != nil {
			return err
		}
		for name, recs := range map[string]map[string]Record{string(bucketEntries): entries, string(bucketIntents): intents} {
			b, err := tx.CreateBucket([]byte(name))
			if err != nil {
				return err
			}
			for p, r := range recs {
				if err := b.Put([]byte(p), enc(r)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSchema1IsMigrated: a state written before owners were recorded is
// kept, not set aside (that would lose the two-way merge base, and with it
// the deletions made while the peer was away): every record and intent
// reads as it did, with its owner unknown, so that no owner change is
// ever inferred from it.
func TestSchema1IsMigrated(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.db")
	const id = "job docroot -> b"
	entries := map[string]Record{
		"d":      {Mode: uint32(os.ModeDir | 0o755), MTimeNs: 5},
		"d/f":    {Mode: 0o644, Size: 3, MTimeNs: 1_700_000_000_123_456_789},
		"d/link": {Mode: uint32(os.ModeSymlink | 0o777), Link: "f"},
		"e":      {Mode: 0o600, Size: 1 << 40, MTimeNs: -1},
	}
	// Enough records for the migration to go in several chunks.
	for i := range 9000 {
		entries[fmt.Sprintf("many/%05d", i)] = Record{Mode: 0o644, Size: int64(i)}
	}
	intents := map[string]Record{"new": {Mode: 0o644, Size: 9, MTimeNs: 7, Link: ""}}
	writeSchema1(t, p, id, entries, intents)

	s, err := Open(p, id)
	if err != nil {
		t.Fatal(err)
	}
	if s.Fresh || s.SetAside != "" || !s.Migrated {
		t.Fatalf("Fresh=%v SetAside=%q Migrated=%v, want a migrated, known state", s.Fresh, s.SetAside, s.Migrated)
	}
	if !s.Complete() {
		t.Error("the completeness mark was lost")
	}
	for path, want := range entries {
		got, ok := s.Get(path)
		if !ok || got != want || got.Owner.Known {
			t.Fatalf("%s: %+v %v, want %+v with no owner", path, got, ok, want)
		}
	}
	if n, _ := s.Stats(); n != len(entries) {
		t.Errorf("%d entries after migration, want %d", n, len(entries))
	}
	if got, ok := s.Intended("new"); !ok || got != intents["new"] {
		t.Errorf("intent: %+v %v", got, ok)
	}
	// Owners recorded from now on survive a reopen, which is no migration.
	own := Record{Mode: 0o644, Size: 3, Link: "", Owner: Owner{Known: true, UID: 33, GID: 33, User: "www-data", Group: "www-data"}}
	if err := s.Update(map[string]Record{"d/f": own}, nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(p, id)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Migrated || s.Fresh {
		t.Errorf("reopened: Migrated=%v Fresh=%v", s.Migrated, s.Fresh)
	}
	if got, _ := s.Get("d/f"); got != own {
		t.Errorf("d/f = %+v, want %+v", got, own)
	}
	if got, _ := s.Get("d/link"); got != entries["d/link"] {
		t.Errorf("d/link = %+v", got)
	}
}

// TestUnknownSchemaIsSetAside: a schema this lockstep does not know (a
// newer one, after a downgrade) is not read.
func TestUnknownSchemaIsSetAside(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.db")
	s, err := Open(p, "id")
	if err != nil {
		t.Fatal(err)
	}
	_ = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchema, binary.BigEndian.AppendUint32(nil, SchemaVersion+1))
	})
	s.Close()
	s, err = Open(p, "id")
	if !errors.Is(err, ErrSetAside) || !s.Fresh {
		t.Fatalf("err=%v", err)
	}
	s.Close()
}

// TestRecordEncoding: owners and link targets round-trip, whatever their
// bytes; a truncated or padded value is no record.
func TestRecordEncoding(t *testing.T) {
	for _, r := range []Record{
		{Mode: 0o644},
		{Mode: uint32(os.ModeSymlink | 0o777), Link: "x\x00\x01y"},
		{Mode: 0o644, Owner: Owner{Known: true}},
		{Mode: 0o644, Size: 7, MTimeNs: 9, Link: "l", Owner: Owner{Known: true, UID: 1 << 31, GID: 5, User: "ünïcode", Group: ""}},
	} {
		v := encode(r)
		if got, ok := decode(v); !ok || got != r {
			t.Errorf("decode(encode(%+v)) = %+v %v", r, got, ok)
		}
		for cut := 1; cut < len(v)-20; cut++ {
			if got, ok := decode(v[:len(v)-cut]); ok && got == r {
				t.Errorf("%+v: truncated by %d reads as the record", r, cut)
			}
		}
		if _, ok := decode(append(v, 0)); ok && r.Owner.Known {
			t.Errorf("%+v: a padded value reads", r)
		}
	}
}
