package lsync

import (
	"context"
	"fmt"

	"github.com/lockstep-ha/lockstep/lsync/syncstate"
)

// Ownership in the two-way merge
//
// A chown changes neither content, mode nor mtime, so the content merge
// (merge) cannot see it: the owner is merged on its own, against the
// owner both sides last agreed on (syncstate.Record.Owner). Observe
// (observeOwner: this side's owner, the peer's, the base, all in the
// peer's ids) → decide (decideOwner, a pure function) → act (plan turns
// the verdict into a chown, or into the owner an upload gives the file).
//
// The base is recorded as this node names it (user and group names under
// owner: names, the numbers where an id has none; the numbers under
// owner: numeric) and mapped to the peer's ids at each comparison, as
// this node's owner is: two nodes whose users have different ids then
// agree on one owner, and a change on either side shows in the peer's
// ids, where the peer's own owner is.

// ownVerdict is what the two-way merge makes of a path's owner.
type ownVerdict uint8

const (
	ownOff     ownVerdict = iota // not merged: one-way, owner: false, a peer that may not chown, no owners known
	ownSame                      // both sides agree: record it
	ownUnknown                   // they differ and no base is known: left alone, nothing recorded
	ownPush                      // changed here only (or on both sides, this node winning): chown the peer
	ownLeave                     // changed on the peer only (or on both, the peer winning): the peer's job pushes it
)

var ownVerdictNames = [...]string{ownOff: "off", ownSame: "same", ownUnknown: "unknown", ownPush: "push", ownLeave: "leave"}

func (v ownVerdict) String() string { return ownVerdictNames[v] }

// ids is an owner and group in the peer's numbers.
type ids struct{ uid, gid uint32 }

// decideOwner merges a path's owner: here is this side's owner and there
// the peer's, base what both last agreed on (nil: unknown), all in the
// peer's ids; thisWins is the content rule's winner (newer mtime, a tie
// going to the node name sorting first), which both nodes compute alike.
// Without a base nothing is inferred: a state from before owners were
// recorded, or a path both sides created, must never make one node's
// owner overwrite the other's. both reports a change on both sides.
func decideOwner(here, there ids, base *ids, thisWins bool) (v ownVerdict, both bool) {
	switch {
	case here == there:
		return ownSame, false
	case base == nil:
		return ownUnknown, false
	case there == *base:
		return ownPush, false
	case here == *base:
		return ownLeave, false
	case thisWins:
		return ownPush, true
	}
	return ownLeave, true
}

// ownerMerge is what observeOwner found and decided.
type ownerMerge struct {
	v    ownVerdict
	both bool
	// base is the recorded owner (not Known: none).
	base syncstate.Owner
	// peer is the peer's owner, by number: what an upload replacing the
	// peer's file gives it when the peer's owner is to stay (ownLeave).
	peer Owner
}

// keep is the owner the state is to keep for the path when the operation
// planned does not give both sides one owner (none planned, a chmod, a
// chown the peer refused): the base while a change is still to come from
// either side, mine once they agree, nothing without a base.
func (m ownerMerge) keep(mine syncstate.Owner) syncstate.Owner {
	switch m.v {
	case ownSame:
		return mine
	case ownPush, ownLeave:
		return m.base
	}
	return syncstate.Owner{}
}

// observeOwner reads what the owner merge needs for a path present on
// both sides, and decides.
func (r *Reconciler) observeOwner(ctx context.Context, t Target, src, dst *Entry) (ownerMerge, error) {
	if !r.TwoWay || r.State == nil || !r.keepsOwner() || src == nil || dst == nil || !src.Owned || !dst.Owned {
		return ownerMerge{}, nil
	}
	m := ownerMerge{peer: Owner{UID: dst.UID, GID: dst.GID}}
	uid, gid, err := targetIDs(ctx, t, r.ownerOf(*src))
	if err != nil {
		return ownerMerge{}, err
	}
	here := ids{uid, gid}
	var base *ids
	if rec, ok := r.State.Get(src.Path); ok && rec.Owner.Known {
		m.base = rec.Owner
		uid, gid, err := targetIDs(ctx, t, r.recordedOwner(rec.Owner))
		if err != nil {
			return ownerMerge{}, err
		}
		base = &ids{uid, gid}
	}
	m.v, m.both = decideOwner(here, ids{dst.UID, dst.GID}, base, r.newerOrFirst(*src, *dst))
	return m, nil
}

// ownerRecord is what the state keeps of the owner src's path is to get
// on the peer.
func (r *Reconciler) ownerRecord(src Entry) syncstate.Owner {
	o := r.ownerOf(src)
	return syncstate.Owner{Known: true, UID: o.UID, GID: o.GID, User: o.User, Group: o.Group}
}

// recordedOwner is a recorded owner as the target is to map it: by
// number alone under owner: numeric, even when it was recorded by name.
func (r *Reconciler) recordedOwner(o syncstate.Owner) Owner {
	own := Owner{UID: o.UID, GID: o.GID}
	if r.Owner == OwnerNames {
		own.User, own.Group = o.User, o.Group
	}
	return own
}

// withOwner applies the owner merge m to o, the operation the content
// merge planned for src (need false: none). An owner changed here goes
// with it (a chown alone when nothing else is to be done); one changed on
// the peer only stays, even through an upload that replaces the peer's
// file; the state records the owner both sides end with.
func (r *Reconciler) withOwner(src, dst *Entry, m ownerMerge, o op, need bool) (op, bool) {
	if m.v == ownOff {
		return o, need
	}
	if m.both && m.v == ownPush {
		r.Logger.Info("two-way owner conflict: both nodes changed the owner; this node's wins",
			"path", src.Path, "owner", r.ownerOf(*src).String(), "peer_owner", fmt.Sprintf("%d:%d", dst.UID, dst.GID),
			"rule", "the content rule's winner: newer mtime, a tie going to the node name sorting first")
	}
	o.ownKeep = m.keep(r.ownerRecord(*src))
	if !need {
		if m.v != ownPush {
			return o, false
		}
		d := *dst
		return op{kind: opChown, path: src.Path, src: *src, reason: fmt.Sprintf("owner %s changed here (two-way), %d:%d on the peer", r.ownerOf(*src), dst.UID, dst.GID),
			ownKeep: o.ownKeep, guard: true, expect: &d}, true
	}
	switch {
	case m.v == ownLeave && o.kind != opChmod && o.kind != opChtimes:
		// The upload, mkdir or symlink replaces the peer's entry: it
		// gets the peer's owner back, which the peer's job merges.
		peer := m.peer
		o.own = &peer
	case m.v == ownPush && (o.kind == opChmod || o.kind == opChtimes):
		o.alsoChown = true
	}
	return o, true
}

// chownsPath reports whether o gives its path an owner when it runs.
func (o op) chownsPath() bool {
	return o.kind == opUpload || o.kind == opSymlink || o.kind == opChown || o.kind == opMkdir || o.alsoChown
}

// ownerFor is the owner o gives its path.
func (r *Reconciler) ownerFor(o op) Owner {
	if o.own != nil {
		return *o.own
	}
	return r.ownerOf(o.src)
}

// recordOfOp is what the state keeps once o ran: in two-way mode with its
// owner, when o gave both sides one (ownSet), else the owner the merge
// said to keep.
func (r *Reconciler) recordOfOp(o op) syncstate.Record {
	rec := recordOf(o.src)
	if !r.TwoWay {
		return rec
	}
	if o.ownSet && o.own == nil {
		rec.Owner = r.ownerRecord(o.src)
	} else {
		rec.Owner = o.ownKeep
	}
	return rec
}
