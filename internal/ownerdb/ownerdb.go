// Package ownerdb answers "which name has this uid/gid" and "which id has
// this user/group name" on this host, through os/user (/etc/passwd and
// /etc/group, or NSS when built with cgo), and caches the answers.
//
// Ownership is kept by name the way rsync -a keeps it: the sending side
// names the source's ids, the receiving side maps each name to its own id.
// Both sides ask about the same few owners again and again (every file of
// a docroot belongs to one or two users), so one lookup per name and
// minute is plenty, and a user added or renamed while the daemon runs is
// seen within that minute instead of after a restart.
package ownerdb

import (
	"os/user"
	"strconv"
	"sync"
	"time"
)

// DefaultTTL is how long an answer (a name, an id, or "unknown") is kept.
const DefaultTTL = time.Minute

// DB is a cached view of this host's user and group database. It is safe
// for concurrent use.
type DB struct {
	ttl time.Duration
	now func() time.Time

	mu     sync.Mutex
	byUID  map[uint32]answer[string]
	byGID  map[uint32]answer[string]
	byUser map[string]answer[uint32]
	byGrp  map[string]answer[uint32]
}

type answer[T any] struct {
	v     T
	ok    bool
	until time.Time
}

// New returns a DB keeping answers for ttl (DefaultTTL when 0).
func New(ttl time.Duration) *DB {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	return &DB{
		ttl: ttl, now: time.Now,
		byUID: map[uint32]answer[string]{}, byGID: map[uint32]answer[string]{},
		byUser: map[string]answer[uint32]{}, byGrp: map[string]answer[uint32]{},
	}
}

// cached returns m[k] if still fresh, and otherwise asks look and keeps
// its answer. A failed lookup (unknown, or the database unreadable) is
// kept as "unknown" too: the caller falls back to the number, and asking
// again for every file would not make it known sooner than the TTL.
func cached[K comparable, V any](db *DB, m map[K]answer[V], k K, look func(K) (V, bool)) (V, bool) {
	db.mu.Lock()
	a, hit := m[k]
	db.mu.Unlock()
	now := db.now()
	if hit && now.Before(a.until) {
		return a.v, a.ok
	}
	// Looked up outside the lock: NSS may be slow, and two callers asking
	// for the same name at once merely both ask.
	v, ok := look(k)
	db.mu.Lock()
	m[k] = answer[V]{v: v, ok: ok, until: now.Add(db.ttl)}
	db.mu.Unlock()
	return v, ok
}

// UserName returns the name of uid, false when it has none.
func (db *DB) UserName(uid uint32) (string, bool) {
	return cached(db, db.byUID, uid, func(uid uint32) (string, bool) {
		u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
		if err != nil {
			return "", false
		}
		return u.Username, true
	})
}

// GroupName returns the name of gid, false when it has none.
func (db *DB) GroupName(gid uint32) (string, bool) {
	return cached(db, db.byGID, gid, func(gid uint32) (string, bool) {
		g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10))
		if err != nil {
			return "", false
		}
		return g.Name, true
	})
}

// UserID returns the uid of the user called name, false when there is
// no such user.
func (db *DB) UserID(name string) (uint32, bool) {
	return cached(db, db.byUser, name, func(name string) (uint32, bool) {
		u, err := user.Lookup(name)
		if err != nil {
			return 0, false
		}
		return parseID(u.Uid)
	})
}

// GroupID returns the gid of the group called name, false when there is
// no such group.
func (db *DB) GroupID(name string) (uint32, bool) {
	return cached(db, db.byGrp, name, func(name string) (uint32, bool) {
		g, err := user.LookupGroup(name)
		if err != nil {
			return 0, false
		}
		return parseID(g.Gid)
	})
}

func parseID(s string) (uint32, bool) {
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err == nil
}
