// Package syncstate keeps, per sync job and target, what was last made
// identical on both sides: for every path its type, permission bits,
// size, mtime and link target. It is the merge base of two-way sync (a
// path changed on one side only is that side's change, deletions
// included) and survives restarts.
//
// The store is an embedded, crash-safe bbolt file. Its schema is
// versioned; a missing, foreign or corrupt file is set aside and a fresh
// one started, which the caller must treat as "nothing known" — a safe
// full comparison that never deletes on the strength of missing state.
package syncstate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is bumped whenever the encoding changes. A file of
// schema 1 (before owners were recorded) is migrated in place, its records
// with their owner unknown: setting it aside would lose the merge base of
// two-way sync, and with it every deletion made while the peer was away.
// Any other schema is set aside (the state is a cache of facts that a
// comparison can rebuild, never deleting on the strength of it).
const SchemaVersion = 2

// schemaNoOwner is the schema whose records carry no owner: type, mode,
// size and mtime, the link target being the rest of the value.
const schemaNoOwner = 1

var (
	bucketMeta    = []byte("meta")
	bucketEntries = []byte("entries")
	// bucketIntents holds what a batch is about to make identical, written
	// before its first operation and cleared by the transaction that
	// records what landed: after a crash in between, a target that holds
	// an intended version is known to have received it.
	bucketIntents = []byte("intents")
	keySchema     = []byte("schema")
	keyIdentity   = []byte("identity")
)

// Record is one path as both sides had it when they were last identical.
type Record struct {
	Mode    uint32 // os.FileMode bits: type and permissions
	Size    int64
	MTimeNs int64
	Link    string
	// Owner is the owner and group both sides last agreed on, as the
	// recording node names them; not Known when they never agreed since
	// it was recorded, or the record is older than owners in the state.
	Owner Owner
}

// Owner is a recorded owner and group: the recording node's ids and,
// with owner: names, their names there ("" where an id has none). The
// names let a comparison map them to the peer's ids afresh, so that two
// nodes whose users have different ids still agree on one owner.
type Owner struct {
	Known       bool
	UID, GID    uint32
	User, Group string
}

// Store is one (job, target) state file.
type Store struct {
	db   *bolt.DB
	path string
	// Fresh is true when the store started empty (first run, or a file
	// set aside): nothing is known, every decision must be conservative.
	Fresh bool
	// SetAside names the file a foreign or corrupt state was moved to.
	SetAside string
	// Migrated is true when Open rewrote a state of schema 1 (records
	// without owners) to the current schema.
	Migrated bool

	// entries is the number of paths recorded (-1: not known until
	// counted), taken at Open from keyEntries and kept up by every write:
	// counting them reads every page of the file, which maps all of it
	// into this process (11 MiB of a 16 MiB state of 110k paths, the peak
	// of a first sync's memory when its report asked for the count).
	countMu sync.Mutex
	entries int64

	mapped mapping // see readDone
}

// Open opens (creating it and its directory, both private) the state at
// path for identity (e.g. "job docroot -> target web2:/var/www"). A file
// that belongs to another identity, has another schema, or cannot be read
// is renamed aside and a fresh store is started.
func Open(path, identity string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("sync state: %w", err)
	}
	s, err := open(path, identity)
	if err == nil {
		return s, nil
	}
	var locked lockedError
	if errors.As(err, &locked) {
		return nil, err
	}
	aside := fmt.Sprintf("%s.unusable-%s", path, time.Now().UTC().Format("20060102-150405"))
	if rerr := os.Rename(path, aside); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return nil, fmt.Errorf("sync state %s: %v; and it cannot be set aside: %w", path, err, rerr)
	}
	s, err2 := open(path, identity)
	if err2 != nil {
		return nil, err2
	}
	s.Fresh, s.SetAside = true, aside
	return s, fmt.Errorf("%w: %v", ErrSetAside, err)
}

// ErrSetAside accompanies a usable, fresh Store when the previous state
// could not be used; the caller logs it.
var ErrSetAside = errors.New("previous sync state set aside")

type lockedError struct{ error }

func open(path, identity string) (*Store, error) {
	_, statErr := os.Stat(path)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, lockedError{fmt.Errorf("sync state %s is in use by another lockstep process", path)}
		}
		return nil, fmt.Errorf("sync state %s: %w", path, err)
	}
	s := &Store{db: db, path: path, Fresh: statErr != nil, entries: -1}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		entries, err := tx.CreateBucketIfNotExists(bucketEntries)
		if err != nil {
			return err
		}
		s.entries = stampedEntries(tx)
		if empty(entries) {
			s.entries = 0
		}
		if _, err := tx.CreateBucketIfNotExists(bucketIntents); err != nil {
			return err
		}
		v := meta.Get(keySchema)
		switch {
		case v == nil:
			s.Fresh = true
			if err := meta.Put(keySchema, binary.BigEndian.AppendUint32(nil, SchemaVersion)); err != nil {
				return err
			}
			if err := meta.Put(keyIdentity, []byte(identity)); err != nil {
				return err
			}
		case !bytes.Equal(meta.Get(keyIdentity), []byte(identity)):
			return fmt.Errorf("belongs to %q, not %q", meta.Get(keyIdentity), identity)
		case len(v) == 4 && binary.BigEndian.Uint32(v) == schemaNoOwner:
			s.Migrated, s.entries = true, -1 // it may drop what it cannot read
			if err := migrateNoOwner(tx, meta); err != nil {
				return err
			}
		case len(v) != 4 || binary.BigEndian.Uint32(v) != SchemaVersion:
			return fmt.Errorf("schema %x, want %d", v, SchemaVersion)
		}
		return stampEntries(tx, s.entries)
	})
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// Path is the state file.
func (s *Store) Path() string { return s.path }

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Get returns the record of path.
func (s *Store) Get(path string) (Record, bool) {
	var r Record
	var ok bool
	_ = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketEntries).Get([]byte(path))
		if v != nil {
			r, ok = decode(v)
		}
		s.readDone(tx, 1) // a daemon's lookups add up to the whole file
		return nil
	})
	return r, ok
}

// Intend records what the operations about to run will make identical
// (see bucketIntents), durably, before they run.
func (s *Store) Intend(recs map[string]Record) error {
	if len(recs) == 0 {
		return nil
	}
	return s.update(func(tx *bolt.Tx) (int64, error) {
		b := tx.Bucket(bucketIntents)
		for p, r := range recs {
			if err := b.Put([]byte(p), encode(r)); err != nil {
				return 0, err
			}
		}
		return 0, nil
	})
}

// IntendMove records, before a rename is replayed on the target, the
// records under from as intents under to: a crash between the rename and
// Move leaves the new names with the base they carry.
func (s *Store) IntendMove(from, to string) error {
	if from == to || from == "" || to == "" {
		return nil
	}
	return s.update(func(tx *bolt.Tx) (int64, error) {
		b, in := tx.Bucket(bucketEntries), tx.Bucket(bucketIntents)
		if v := b.Get([]byte(from)); v != nil {
			if err := in.Put([]byte(to), append([]byte(nil), v...)); err != nil {
				return 0, err
			}
		}
		prefix := []byte(from + "/")
		c := b.Cursor()
		var keys, vals [][]byte
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			keys = append(keys, []byte(to+string(k[len(from):])))
			vals = append(vals, append([]byte(nil), v...))
		}
		for i, k := range keys {
			if err := in.Put(k, vals[i]); err != nil {
				return 0, err
			}
		}
		return 0, nil
	})
}

// Intended returns the version a batch cut short meant path to have.
func (s *Store) Intended(path string) (Record, bool) {
	var r Record
	var ok bool
	_ = s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketIntents).Get([]byte(path)); v != nil {
			r, ok = decode(v)
		}
		return nil
	})
	return r, ok
}

// ForgetIntents drops every intent: a complete comparison has recorded
// what both sides hold since.
func (s *Store) ForgetIntents() error {
	if !s.hasIntents() {
		return nil
	}
	return s.update(func(tx *bolt.Tx) (int64, error) {
		if err := tx.DeleteBucket(bucketIntents); err != nil {
			return 0, err
		}
		_, err := tx.CreateBucket(bucketIntents)
		return 0, err
	})
}

// Update records puts and removes dels (each with everything below it) in
// one transaction: either all of it is on disk or none. The intents of
// those paths go in the same transaction: what landed is recorded now.
// (Other intents stay: they may belong to an enclosing batch still
// running. One that never landed is harmless: a peer holding exactly the
// intended version shares it with this side.)
func (s *Store) Update(puts map[string]Record, dels []string) error {
	return s.Write(nil, puts, dels)
}

// A Rename is a directory rename both sides made (see Move).
type Rename struct{ From, To string }

// Write applies, in one transaction (one sync to disk, whatever it
// holds), the renames in their order (as Move does), then removes dels
// and records puts (as Update does): what a batch that replayed renames
// and then landed paths below the new names learnt, in the order it
// learnt it.
func (s *Store) Write(renames []Rename, puts map[string]Record, dels []string) error {
	if len(renames) == 0 && len(puts) == 0 && len(dels) == 0 {
		return nil
	}
	return s.update(func(tx *bolt.Tx) (added int64, err error) {
		b := tx.Bucket(bucketEntries)
		for _, rn := range renames {
			n, err := move(b, rn.From, rn.To)
			if err != nil {
				return 0, err
			}
			added += n
		}
		// Without intents (the rule outside a batch's few seconds) there
		// is nothing to clear: a first pass of 100k paths would otherwise
		// pay a seek per path for nothing.
		if in := tx.Bucket(bucketIntents); !empty(in) {
			for p := range puts {
				if err := in.Delete([]byte(p)); err != nil {
					return 0, err
				}
			}
			for _, d := range dels {
				if _, err := deleteTree(in, d); err != nil {
					return 0, err
				}
			}
		}
		for _, d := range dels {
			n, err := deleteTree(b, d)
			if err != nil {
				return 0, err
			}
			added -= n
		}
		// In key order: bbolt inserts into sorted pages, and the random
		// order of a map makes every put shift the tail of a page (most of
		// the CPU of a 100k-file first pass went into that memmove).
		keys := slices.Sorted(maps.Keys(puts))
		for _, p := range keys {
			k := []byte(p)
			if b.Get(k) == nil {
				added++
			}
			if err := b.Put(k, encode(puts[p])); err != nil {
				return 0, err
			}
		}
		s.readDone(tx, len(puts)+len(dels))
		return added, nil
	})
}

func empty(b *bolt.Bucket) bool {
	k, _ := b.Cursor().First()
	return k == nil
}

// Move renames the records of from and everything below it to to (what
// was recorded under to is dropped first), in one transaction: a rename
// replayed on the target keeps the merge base of what it moved.
func (s *Store) Move(from, to string) error {
	if from == to || from == "" || to == "" {
		return nil
	}
	return s.Write([]Rename{{From: from, To: to}}, nil, nil)
}

// move is Move within a transaction; added is the change in the number
// of paths recorded (what was under to, dropped).
func move(b *bolt.Bucket, from, to string) (added int64, err error) {
	if from == to || from == "" || to == "" {
		return 0, nil
	}
	under := func(p string) (keys, vals [][]byte) {
		if v := b.Get([]byte(p)); v != nil {
			keys, vals = append(keys, []byte(p)), append(vals, append([]byte(nil), v...))
		}
		prefix := []byte(p + "/")
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			keys, vals = append(keys, append([]byte(nil), k...)), append(vals, append([]byte(nil), v...))
		}
		return keys, vals
	}
	old, _ := under(to)
	for _, k := range old {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
	}
	keys, vals := under(from)
	for i, k := range keys {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
		if err := b.Put([]byte(to+strings.TrimPrefix(string(k), from)), vals[i]); err != nil {
			return 0, err
		}
	}
	return -int64(len(old)), nil
}

// deleteTree deletes key p and every key below it and says how many
// there were.
func deleteTree(b *bolt.Bucket, p string) (deleted int64, err error) {
	if b.Get([]byte(p)) != nil {
		if err := b.Delete([]byte(p)); err != nil {
			return 0, err
		}
		deleted++
	}
	c := b.Cursor()
	prefix := []byte(p + "/")
	var below [][]byte
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		below = append(below, append([]byte(nil), k...))
	}
	for _, k := range below {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
	}
	return deleted + int64(len(below)), nil
}

func (s *Store) hasIntents() bool {
	n := false
	_ = s.db.View(func(tx *bolt.Tx) error {
		n = !empty(tx.Bucket(bucketIntents))
		return nil
	})
	return n
}

// Stats returns the number of paths recorded and the file's size. Only
// the first call after Open counts the records (see Store.entries).
func (s *Store) Stats() (entries int, size int64) {
	s.countMu.Lock()
	defer s.countMu.Unlock()
	_ = s.db.View(func(tx *bolt.Tx) error {
		if s.entries < 0 {
			s.entries = s.count(tx)
		}
		size = tx.Size()
		return nil
	})
	return int(max(s.entries, 0)), size
}

// keyEntries (in bucketMeta) records the number of paths recorded and
// the transaction that recorded it: every write transaction of a Store
// records it anew, so a file last written by an older lockstep that did
// not (whose transaction came later) is counted again instead of trusted.
var keyEntries = []byte("entries")

// update runs fn in a write transaction and, in the same transaction,
// records the number of paths it leaves (fn says how many it added).
func (s *Store) update(fn func(tx *bolt.Tx) (added int64, err error)) error {
	s.countMu.Lock()
	defer s.countMu.Unlock()
	after := s.entries
	err := s.db.Update(func(tx *bolt.Tx) error {
		added, err := fn(tx)
		if err != nil {
			return err
		}
		if after = -1; s.entries >= 0 {
			after = s.entries + added
		}
		return stampEntries(tx, after)
	})
	if err == nil {
		s.entries = after
	}
	return err
}

// stampEntries records n paths for the write transaction tx (n < 0:
// not known).
func stampEntries(tx *bolt.Tx, n int64) error {
	meta := tx.Bucket(bucketMeta)
	if n < 0 {
		return meta.Delete(keyEntries)
	}
	v := binary.BigEndian.AppendUint64(make([]byte, 0, 16), uint64(n))
	return meta.Put(keyEntries, binary.BigEndian.AppendUint64(v, uint64(tx.ID())))
}

// stampedEntries is the number of paths keyEntries records if the
// transaction that recorded it is the last one committed before the
// write transaction tx, -1 otherwise.
func stampedEntries(tx *bolt.Tx) int64 {
	v := tx.Bucket(bucketMeta).Get(keyEntries)
	if len(v) != 16 || binary.BigEndian.Uint64(v[8:]) != uint64(tx.ID()-1) {
		return -1
	}
	return int64(binary.BigEndian.Uint64(v))
}

// count counts the paths recorded, releasing the pages read as it goes
// (see readDone): bbolt's own Bucket.Stats maps every page at once.
func (s *Store) count(tx *bolt.Tx) int64 {
	var n int64
	c := tx.Bucket(bucketEntries).Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		n++
		s.readDone(tx, 1)
	}
	return n
}

// FileName is the state file of (job, target) under dir: names are
// escaped so that any job or target name maps to one file.
func FileName(dir, job, target string) string {
	esc := func(s string) string {
		return strings.NewReplacer("/", "%2F", "%", "%25").Replace(s)
	}
	return filepath.Join(dir, "sync", esc(job), esc(target)+".db")
}

// encode is a record in schema 2: mode, size, mtime, the link target
// (length first), then, when the owner is known, a 1, uid, gid, user
// and group (each length first).
func encode(r Record) []byte {
	b := make([]byte, 0, 4+8+8+2+len(r.Link)+1+8+4+len(r.Owner.User)+len(r.Owner.Group))
	b = binary.BigEndian.AppendUint32(b, r.Mode)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Size))
	b = binary.BigEndian.AppendUint64(b, uint64(r.MTimeNs))
	b = appendString(b, r.Link)
	if !r.Owner.Known {
		return b
	}
	b = append(b, 1)
	b = binary.BigEndian.AppendUint32(b, r.Owner.UID)
	b = binary.BigEndian.AppendUint32(b, r.Owner.GID)
	b = appendString(b, r.Owner.User)
	return appendString(b, r.Owner.Group)
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// decode reads a record of schema 2. A value it cannot read is no record:
// the path is then unknown, which is the safe reading.
func decode(v []byte) (Record, bool) {
	if len(v) < 20 {
		return Record{}, false
	}
	r := Record{
		Mode:    binary.BigEndian.Uint32(v),
		Size:    int64(binary.BigEndian.Uint64(v[4:])),
		MTimeNs: int64(binary.BigEndian.Uint64(v[12:])),
	}
	rest := v[20:]
	var ok bool
	if r.Link, rest, ok = readString(rest); !ok {
		return Record{}, false
	}
	if len(rest) == 0 {
		return r, true
	}
	if rest[0] != 1 || len(rest) < 9 {
		return Record{}, false
	}
	r.Owner = Owner{Known: true, UID: binary.BigEndian.Uint32(rest[1:]), GID: binary.BigEndian.Uint32(rest[5:])}
	rest = rest[9:]
	if r.Owner.User, rest, ok = readString(rest); !ok {
		return Record{}, false
	}
	if r.Owner.Group, rest, ok = readString(rest); !ok || len(rest) != 0 {
		return Record{}, false
	}
	return r, true
}

func readString(b []byte) (string, []byte, bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return "", nil, false
	}
	return string(b[k : k+int(n)]), b[k+int(n):], true
}

// decodeNoOwner reads a record of schema 1.
func decodeNoOwner(v []byte) (Record, bool) {
	if len(v) < 20 {
		return Record{}, false
	}
	return Record{
		Mode:    binary.BigEndian.Uint32(v),
		Size:    int64(binary.BigEndian.Uint64(v[4:])),
		MTimeNs: int64(binary.BigEndian.Uint64(v[12:])),
		Link:    string(v[20:]),
	}, true
}

// migrateNoOwner rewrites a state of schema 1 to the current schema, in
// the caller's transaction (all of it or none): every record and intent
// keeps what it says, its owner unknown, so that no owner change is ever
// inferred from a record that never held one. A value schema 1 could not
// read either is dropped (the path is then unknown, as it was).
func migrateNoOwner(tx *bolt.Tx, meta *bolt.Bucket) error {
	for _, name := range [][]byte{bucketEntries, bucketIntents} {
		b := tx.Bucket(name)
		// In chunks: a cursor must not run over a bucket being written,
		// and a state of a million paths should not be copied to memory
		// whole.
		var after []byte
		for {
			c := b.Cursor()
			k, v := c.First()
			if after != nil {
				k, v = c.Seek(after)
				if k != nil && bytes.Equal(k, after) {
					k, v = c.Next()
				}
			}
			var keys, vals [][]byte
			for ; k != nil && len(keys) < 4096; k, v = c.Next() {
				keys = append(keys, append([]byte(nil), k...))
				if r, ok := decodeNoOwner(v); ok {
					vals = append(vals, encode(r))
				} else {
					vals = append(vals, nil)
				}
			}
			if len(keys) == 0 {
				break
			}
			for i, k := range keys {
				var err error
				if vals[i] == nil {
					err = b.Delete(k)
				} else {
					err = b.Put(k, vals[i])
				}
				if err != nil {
					return err
				}
			}
			after = keys[len(keys)-1]
		}
	}
	return meta.Put(keySchema, binary.BigEndian.AppendUint32(nil, SchemaVersion))
}

// Children calls fn, in name order, for every path recorded directly
// below dir ("" for the root), with its last path component. Deeper paths
// are skipped with one seek per child, so listing a directory costs its
// children, not its subtree: a walk that compares the tree with the
// state directory by directory reads each record once.
func (s *Store) Children(dir string, fn func(name string, r Record) error) error {
	prefix := []byte(dir + "/")
	if dir == "" {
		prefix = nil
	}
	return s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEntries).Cursor()
		// Counted here and told in slices: one shared counter per
		// record costs the parallel walkers of a restart 3% of their CPU.
		read := 0
		defer func() { s.readDone(tx, read) }()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); {
			if read++; read >= 1024 { // a directory may hold a million names
				s.readDone(tx, read)
				read = 0
			}
			name := k[len(prefix):]
			if i := bytes.IndexByte(name, '/'); i >= 0 {
				// Below a child (whose own key sorts before this one, or
				// is missing): skip its subtree, '0' being '/'+1.
				next := append(append([]byte(nil), k[:len(prefix)+i]...), '0')
				k, v = c.Seek(next)
				// Counted as the records of the 64 KiB the kernel maps
				// around the page it lands on (fault-around): a root of
				// 174 subdirectories mapped 11 MiB of a 300k-path state.
				read += seekCost
				continue
			}
			r, ok := decode(v)
			if ok {
				if err := fn(string(name), r); err != nil {
					return err
				}
			}
			k, v = c.Next()
		}
		return nil
	})
}

var (
	keyComplete = []byte("complete")
	keyInUse    = []byte("in-use")
)

// SetInUse records that a run is using the state (set when a run opens
// it) or that it ended cleanly (cleared when it closes it). A run killed
// mid-batch leaves it set: what that batch was doing on the target (an
// upload's temp file, a rename half done) is known only to a listing of
// the target, so the next start must not trust the state without one.
func (s *Store) SetInUse(on bool) error {
	return s.update(func(tx *bolt.Tx) (int64, error) {
		meta := tx.Bucket(bucketMeta)
		if !on {
			return 0, meta.Delete(keyInUse)
		}
		return 0, meta.Put(keyInUse, []byte{1})
	})
}

// InUse reports what SetInUse last recorded: true after a run that did
// not end cleanly.
func (s *Store) InUse() bool {
	var on bool
	_ = s.db.View(func(tx *bolt.Tx) error {
		on = tx.Bucket(bucketMeta).Get(keyInUse) != nil
		return nil
	})
	return on
}

// SetComplete records whether the state covers the whole target: set
// after a full comparison left both trees identical, cleared when one
// could not (deletions held, paths failed). Only a complete state may
// stand in for listing the target.
func (s *Store) SetComplete(ok bool) error {
	return s.update(func(tx *bolt.Tx) (int64, error) {
		meta := tx.Bucket(bucketMeta)
		if !ok {
			return 0, meta.Delete(keyComplete)
		}
		return 0, meta.Put(keyComplete, []byte{1})
	})
}

// Complete reports what SetComplete last recorded.
func (s *Store) Complete() bool {
	var ok bool
	_ = s.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketMeta).Get(keyComplete) != nil
		return nil
	})
	return ok
}
