package lsync

import (
	"testing"

	"github.com/lockstep-ha/lockstep/lsync/syncstate"
)

// TestDecideOwner is the two-way ownership rule: changed on one side only
// → that side's owner; on both → the content rule's winner; no base →
// nothing inferred; agreement → recorded.
func TestDecideOwner(t *testing.T) {
	alice, bob, carol := ids{1001, 1001}, ids{1002, 1002}, ids{1003, 1003}
	aliceGroupBob := ids{1001, 1002}
	for _, c := range []struct {
		name        string
		here, there ids
		base        *ids
		thisWins    bool
		want        ownVerdict
		both        bool
	}{
		{"same, base same", alice, alice, &alice, false, ownSame, false},
		{"same, both changed alike", bob, bob, &alice, false, ownSame, false},
		{"same, no base (recorded now)", alice, alice, nil, false, ownSame, false},
		{"changed here only", bob, alice, &alice, false, ownPush, false},
		{"changed here only, winner or not", bob, alice, &alice, true, ownPush, false},
		{"group changed here only", aliceGroupBob, alice, &alice, false, ownPush, false},
		{"changed on the peer only", alice, bob, &alice, true, ownLeave, false},
		{"group changed on the peer only", alice, aliceGroupBob, &alice, true, ownLeave, false},
		{"changed on both, this node wins", bob, carol, &alice, true, ownPush, true},
		{"changed on both, the peer wins", bob, carol, &alice, false, ownLeave, true},
		{"differ without a base (old state)", bob, alice, nil, true, ownUnknown, false},
		{"differ without a base, the peer would win", bob, alice, nil, false, ownUnknown, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, both := decideOwner(c.here, c.there, c.base, c.thisWins)
			if v != c.want || both != c.both {
				t.Errorf("decideOwner(%v, %v, %v, %v) = %v, %v; want %v, %v", c.here, c.there, c.base, c.thisWins, v, both, c.want, c.both)
			}
		})
	}
}

// TestOwnerMergeKeeps: what the state records for a path no operation
// gives one owner on both sides. A change still to come keeps the base
// (recording this side's owner would make the peer's change look like
// this side's next time, and revert it); without a base nothing is
// recorded.
func TestOwnerMergeKeeps(t *testing.T) {
	mine := ownerRecordOf(1001, "alice")
	base := ownerRecordOf(1000, "www")
	for v, want := range map[ownVerdict]bool{ownSame: true, ownPush: false, ownLeave: false, ownUnknown: false, ownOff: false} {
		m := ownerMerge{v: v}
		if v == ownPush || v == ownLeave {
			m.base = base
		}
		got := m.keep(mine)
		switch {
		case want && got != mine:
			t.Errorf("%v: keeps %+v, want this side's %+v", v, got, mine)
		case !want && (v == ownPush || v == ownLeave) && got != base:
			t.Errorf("%v: keeps %+v, want the base %+v", v, got, base)
		case !want && v != ownPush && v != ownLeave && got.Known:
			t.Errorf("%v: keeps %+v, want nothing", v, got)
		}
	}
}

func ownerRecordOf(id uint32, name string) syncstate.Owner {
	return syncstate.Owner{Known: true, UID: id, GID: id, User: name, Group: name}
}
