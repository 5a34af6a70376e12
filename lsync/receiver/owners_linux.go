package receiver

import (
	"fmt"
	"strings"

	"github.com/lockstep-ha/lockstep/internal/ownerdb"
)

// idLookup gives user and group names this host's ids; false for a name
// unknown here. ownerdb.DB in production; tests map names of their own.
type idLookup interface {
	UserID(name string) (uint32, bool)
	GroupID(name string) (uint32, bool)
}

// hostIDs is this host's user database. One receiver process serves one
// connection; the cache still spares a lookup per file of the same owner.
var hostIDs = ownerdb.New(0)

// localIDs returns the ids an owner sent by the client has here: the id
// of each name known here, the client's number for a name unknown here
// or not sent (the source has no name for that id, or the client maps
// by number). Mapping only ever picks among ids the client could have
// sent as numbers: it does not widen what a client may do.
func localIDs(ids idLookup, uid, gid uint32, user, group string) (uint32, uint32) {
	if user != "" {
		if id, ok := ids.UserID(user); ok {
			uid = id
		}
	}
	if group != "" {
		if id, ok := ids.GroupID(group); ok {
			gid = id
		}
	}
	return uid, gid
}

// checkOwnerNames refuses names no user database holds, before any
// lookup: a lookup of "" or of a name with a colon or a newline could
// only ever fail, or (with NSS backends) mean something else.
func checkOwnerNames(names ...string) error {
	for _, n := range names {
		if len(n) > maxOwnerName {
			return &invalid{why: fmt.Sprintf("owner name of %d bytes (at most %d)", len(n), maxOwnerName)}
		}
		if strings.ContainsAny(n, ":/\n\x00") {
			return &invalid{why: fmt.Sprintf("owner name %q has a character no user or group name has", n)}
		}
	}
	return nil
}
