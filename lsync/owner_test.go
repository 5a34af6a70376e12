package lsync_test

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/localtarget"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// names is a user database: ids with their names, and back.
type names struct{ users, groups map[uint32]string }

func (n names) UserName(uid uint32) (string, bool)  { s, ok := n.users[uid]; return s, ok }
func (n names) GroupName(gid uint32) (string, bool) { s, ok := n.groups[gid]; return s, ok }

func (n names) id(m map[uint32]string, name string) (uint32, bool) {
	for id, s := range m {
		if s == name {
			return id, true
		}
	}
	return 0, false
}

// mappingTarget is a local target that maps owner names as a version 3
// receiver does, against its own user database (the peer's).
type mappingTarget struct {
	*localtarget.Target
	peer   names
	chowns atomic.Int32
}

func (m *mappingTarget) MapsOwnerNames() bool { return true }

func (m *mappingTarget) MapOwner(_ context.Context, own lsync.Owner) (uint32, uint32, error) {
	uid, gid := own.UID, own.GID
	if id, ok := m.peer.id(m.peer.users, own.User); ok && own.User != "" {
		uid = id
	}
	if id, ok := m.peer.id(m.peer.groups, own.Group); ok && own.Group != "" {
		gid = id
	}
	return uid, gid, nil
}

func (m *mappingTarget) Lchown(ctx context.Context, rel string, own lsync.Owner) error {
	m.chowns.Add(1)
	uid, gid, _ := m.MapOwner(ctx, own)
	return m.Target.Lchown(ctx, rel, lsync.Owner{UID: uid, GID: gid})
}

func owner(t *testing.T, p string) (uint32, uint32) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid, st.Gid
}

// TestOwnerByName: with owner: names a file owned by a user the peer
// knows under another id lands with the peer's id, one whose name the
// peer does not know (or that has no name) with its number, and the next
// pass finds nothing to change: the comparison is made in the peer's
// ids. With owner: numeric the numbers go.
func TestOwnerByName(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	source := names{
		users:  map[uint32]string{4242: "web", 4244: "ghost"},
		groups: map[uint32]string{4243: "web", 4245: "ghost"},
	}
	peer := names{users: map[uint32]string{4301: "web"}, groups: map[uint32]string{4302: "web"}}
	for _, tc := range []struct {
		mode             lsync.OwnerMode
		web, ghost, bare [2]uint32
	}{
		{lsync.OwnerNames, [2]uint32{4301, 4302}, [2]uint32{4244, 4245}, [2]uint32{4246, 4247}},
		{lsync.OwnerNumeric, [2]uint32{4242, 4243}, [2]uint32{4244, 4245}, [2]uint32{4246, 4247}},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			src, dst := t.TempDir(), t.TempDir()
			for name, id := range map[string][2]uint32{"web/a.txt": {4242, 4243}, "ghost.txt": {4244, 4245}, "bare.txt": {4246, 4247}} {
				mustWrite(t, src, name, name)
				if err := os.Lchown(filepath.Join(src, name), int(id[0]), int(id[1])); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Lchown(filepath.Join(src, "web"), 4242, 4243); err != nil {
				t.Fatal(err)
			}
			s, err := lsync.OpenSource(src, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			lt, err := localtarget.Open(dst)
			if err != nil {
				t.Fatal(err)
			}
			defer lt.Close()
			mt := &mappingTarget{Target: lt, peer: peer}
			r := &lsync.Reconciler{Source: s, Target: "t", Delete: true, Concurrency: 2, Logger: lsynctest.TestLogger(t),
				Owner: tc.mode, OwnerNames: source}
			ctx := context.Background()
			if _, err := r.Reconcile(ctx, mt, false); err != nil {
				t.Fatal(err)
			}
			for p, want := range map[string][2]uint32{"web": tc.web, "web/a.txt": tc.web, "ghost.txt": tc.ghost, "bare.txt": tc.bare} {
				if uid, gid := owner(t, filepath.Join(dst, p)); uid != want[0] || gid != want[1] {
					t.Errorf("%s: owner %d:%d, want %d:%d", p, uid, gid, want[0], want[1])
				}
			}
			mt.chowns.Store(0)
			rep, err := r.Reconcile(ctx, mt, false)
			if err != nil {
				t.Fatal(err)
			}
			if mt.chowns.Load() != 0 || len(rep.Changes) != 0 {
				t.Errorf("second pass changed %v (%d chowns), want nothing", rep.Changes, mt.chowns.Load())
			}
			// A chown alone on the source follows, by name.
			if err := os.Lchown(filepath.Join(src, "bare.txt"), 4242, 4243); err != nil {
				t.Fatal(err)
			}
			if _, err := r.Reconcile(ctx, mt, false); err != nil {
				t.Fatal(err)
			}
			if uid, gid := owner(t, filepath.Join(dst, "bare.txt")); uid != tc.web[0] || gid != tc.web[1] {
				t.Errorf("bare.txt after chown: owner %d:%d, want %d:%d", uid, gid, tc.web[0], tc.web[1])
			}
		})
	}
}
