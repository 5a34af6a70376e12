package lsync

import (
	"context"
	"fmt"

	"github.com/lockstep-ha/lockstep/internal/ownerdb"
)

// OwnerMode is the parsed `owner` setting: how a file's owner and group
// reach a peer.
type OwnerMode string

const (
	// OwnerNames keeps ownership by user and group name, as rsync -a
	// does: the peer gives each name its own id there, and keeps the
	// number where the name is unknown on either side. The default.
	OwnerNames OwnerMode = "names"
	// OwnerNumeric keeps the numbers (rsync -a --numeric-ids): for
	// nodes whose users were created with the same ids.
	OwnerNumeric OwnerMode = "numeric"
	// OwnerOff leaves files with the peer's SSH user as owner.
	OwnerOff OwnerMode = "false"
)

// ParseOwner reads the `owner` setting: names, numeric or false; empty
// and true mean names (true was the setting before names were mapped:
// it meant "keep the owner", which names now does). The other YAML
// spellings of a boolean the field accepted when it was one (yes/no,
// on/off) keep working.
func ParseOwner(s string) (OwnerMode, error) {
	switch s {
	case "", string(OwnerNames), "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON", "y", "Y":
		return OwnerNames, nil
	case string(OwnerNumeric):
		return OwnerNumeric, nil
	case string(OwnerOff), "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF", "n", "N":
		return OwnerOff, nil
	}
	return "", fmt.Errorf("%q: want names (the default; true means names), numeric or false", s)
}

// Owner is the owner and group a path is to get on a target: the
// source's ids and, with owner: names, their names on the source (""
// where an id has no name there). A target that maps names gives each
// name its own id and keeps the number where it does not know the name;
// one that does not (SFTP, the local target) uses the numbers.
type Owner struct {
	UID, GID    uint32
	User, Group string
}

func (o Owner) String() string {
	u, g := o.User, o.Group
	if u == "" {
		u = fmt.Sprint(o.UID)
	}
	if g == "" {
		g = fmt.Sprint(o.GID)
	}
	return u + ":" + g
}

// OwnerNamer names the source's ids. A uid or gid without a name yields
// false, and goes by number.
type OwnerNamer interface {
	UserName(uid uint32) (string, bool)
	GroupName(gid uint32) (string, bool)
}

// hostOwners is this host's user database, shared by every job: all
// name the same few ids, and one cache serves them all.
var hostOwners = ownerdb.New(0)

// OwnerMapper is implemented by targets that can give an Owner's names
// their own ids on the peer (the lockstep receiver, protocol version 3).
// A comparison of the source's owner with the target's is made in the
// target's ids: without it, a name that has another id on the peer
// would look different on every pass and be chowned again and again.
type OwnerMapper interface {
	// MapsOwnerNames reports whether this session maps names (a
	// receiver of protocol version 2 does not; MapOwner then returns
	// the numbers).
	MapsOwnerNames() bool
	// MapOwner returns the ids own gets on the target: the id each name
	// has there, the number where the name is unknown there.
	MapOwner(ctx context.Context, own Owner) (uid, gid uint32, err error)
}

// ownerOf is the Owner the target is to give src's path.
func (r *Reconciler) ownerOf(src Entry) Owner {
	own := Owner{UID: src.UID, GID: src.GID}
	if r.Owner != OwnerNames {
		return own
	}
	names := r.OwnerNames
	if names == nil {
		names = hostOwners
	}
	own.User, _ = names.UserName(src.UID)
	own.Group, _ = names.GroupName(src.GID)
	return own
}

// targetIDs returns the ids own stands for on t: mapped by the target
// when it maps names, the numbers otherwise.
func targetIDs(ctx context.Context, t any, own Owner) (uid, gid uint32, err error) {
	m, ok := t.(OwnerMapper)
	if !ok || own.User == "" && own.Group == "" || !m.MapsOwnerNames() {
		return own.UID, own.GID, nil
	}
	return m.MapOwner(ctx, own)
}

// ownerNotMapped says why a target keeps owners by number although
// owner: names asks for names ("" when it maps them, or needs not: the
// local target is this host, where names and numbers agree).
func ownerNotMapped(t any) string {
	if m, ok := t.(OwnerMapper); ok && m.MapsOwnerNames() {
		return ""
	}
	pr, ok := t.(ProtocolReporter)
	if !ok {
		return ""
	}
	switch p := pr.Protocol(); p {
	case "local":
		return ""
	case "sftp":
		return "SFTP carries numeric ids only (use the lockstep receiver on the peer to map names)"
	default:
		return p + " carries numeric ids only (upgrade lockstep on the peer to map names)"
	}
}
