package receiver

import (
	"context"
	"errors"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/lsync"
)

var timeZero = time.Unix(1_600_000_000, 0)

// fakeIDs is a peer's user database: names with the ids they have there.
type fakeIDs struct{ users, groups map[string]uint32 }

func (f fakeIDs) UserID(n string) (uint32, bool)  { id, ok := f.users[n]; return id, ok }
func (f fakeIDs) GroupID(n string) (uint32, bool) { id, ok := f.groups[n]; return id, ok }

// peer has "www-data" as 4301:4302, unlike the source's 33:33, and no
// "deploy" at all.
var peer = fakeIDs{
	users:  map[string]uint32{"www-data": 4301, "root": 0},
	groups: map[string]uint32{"www-data": 4302, "root": 0},
}

// hookedConn runs a server with hooks on root and says hello in
// version; a hello the server does not take is returned as the error
// (the server has then exited).
func hookedConn(t *testing.T, root string, hooks serveHooks, version uint32) (*Client, error) {
	t.Helper()
	cr, sw := io.Pipe()
	sr, cw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		err := serve(ctx, sr, sw, root, nil, hooks)
		_ = sw.CloseWithError(io.EOF)
		served <- err
	}()
	if _, err := Hello(cr, cw, version); err != nil {
		_ = cw.Close()
		<-served
		cancel()
		return nil, err
	}
	c := NewClient(cr, cw, version)
	t.Cleanup(func() {
		_ = cw.Close()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
		<-c.Done()
		cancel()
	})
	return c, nil
}

func ownerOf(t *testing.T, p string) (uint32, uint32) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid, st.Gid
}

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
}

// TestOwnerNamesMapped: a chown in version 3 gives each name the id it
// has on the peer, the number where the peer does not know the name or
// none was sent; ownerids answers the same without changing anything.
func TestOwnerNamesMapped(t *testing.T) {
	needRoot(t)
	root := t.TempDir()
	c, err := hookedConn(t, root, serveHooks{ids: peer}, Version)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cases := []struct {
		name     string
		own      lsync.Owner
		uid, gid uint32
	}{
		{"both names known", lsync.Owner{UID: 33, GID: 33, User: "www-data", Group: "www-data"}, 4301, 4302},
		{"user unknown there", lsync.Owner{UID: 1500, GID: 33, User: "deploy", Group: "www-data"}, 1500, 4302},
		{"no names on the source", lsync.Owner{UID: 1501, GID: 1502}, 1501, 1502},
		{"group name only", lsync.Owner{UID: 1503, GID: 1504, Group: "root"}, 1503, 0},
	}
	for i, tc := range cases {
		rel := "f" + strconv.Itoa(i)
		if err := c.Put(ctx, rel, 0o644, timeZero, []byte("x")); err != nil {
			t.Fatal(err)
		}
		uid, gid, err := c.MapOwner(ctx, tc.own)
		if err != nil || uid != tc.uid || gid != tc.gid {
			t.Errorf("%s: MapOwner = %d:%d %v, want %d:%d", tc.name, uid, gid, err, tc.uid, tc.gid)
		}
		if err := c.Lchown(ctx, rel, tc.own); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if uid, gid := ownerOf(t, filepath.Join(root, rel)); uid != tc.uid || gid != tc.gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", tc.name, uid, gid, tc.uid, tc.gid)
		}
	}
	// A symlink's own owner, mapped alike (never its target's).
	if err := c.Symlink(ctx, "link", "f0"); err != nil {
		t.Fatal(err)
	}
	if err := c.Lchown(ctx, "link", lsync.Owner{UID: 1, GID: 1, User: "www-data", Group: "www-data"}); err != nil {
		t.Fatal(err)
	}
	if uid, gid := ownerOf(t, filepath.Join(root, "link")); uid != 4301 || gid != 4302 {
		t.Errorf("symlink owner %d:%d, want 4301:4302", uid, gid)
	}
}

// TestOwnerNamesInvalid: names no user database holds are refused as a
// malformed request, before any lookup or change.
func TestOwnerNamesInvalid(t *testing.T) {
	root := t.TempDir()
	c, err := hookedConn(t, root, serveHooks{ids: peer}, Version)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Put(ctx, "f", 0o644, timeZero, nil); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("a", maxOwnerName+1)
	for _, own := range []lsync.Owner{
		{User: "root:x"}, {Group: "a\nb"}, {User: "../etc"}, {User: "a\x00"}, {Group: long},
	} {
		if err := c.Lchown(ctx, "f", own); !malformed(err) {
			t.Errorf("chown with %.20q:%.20q: %v, want it refused as malformed", own.User, own.Group, err)
		}
		if _, _, err := c.MapOwner(ctx, own); !malformed(err) {
			t.Errorf("ownerids with %.20q:%.20q: %v, want it refused as malformed", own.User, own.Group, err)
		}
	}
}

// malformed reports a request the receiver refused as malformed.
func malformed(err error) bool {
	var re *Error
	return errors.As(err, &re) && re.Errno == 0 && !re.Refused
}

// TestOwnerNamesHostDB: the receiver's own lookup, against this host's
// /etc/passwd and /etc/group: root is 0:0, Debian's www-data 33:33, and
// an unknown name keeps the number.
func TestOwnerNamesHostDB(t *testing.T) {
	needRoot(t)
	wd, err := user.Lookup("www-data")
	if err != nil {
		t.Skip("no www-data user on this host")
	}
	wdUID, _ := strconv.Atoi(wd.Uid)
	wdGID, _ := strconv.Atoi(wd.Gid)
	root := t.TempDir()
	c, err := hookedConn(t, root, serveHooks{}, Version)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		own      lsync.Owner
		uid, gid uint32
	}{
		{lsync.Owner{UID: 4242, GID: 4243, User: "root", Group: "root"}, 0, 0},
		{lsync.Owner{UID: 4242, GID: 4243, User: "www-data", Group: "www-data"}, uint32(wdUID), uint32(wdGID)},
		{lsync.Owner{UID: 4242, GID: 4243, User: "no-such-user-lockstep", Group: "no-such-group-lockstep"}, 4242, 4243},
	} {
		if err := c.Put(ctx, "f", 0o644, timeZero, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Lchown(ctx, "f", tc.own); err != nil {
			t.Fatal(err)
		}
		if uid, gid := ownerOf(t, filepath.Join(root, "f")); uid != tc.uid || gid != tc.gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", tc.own, uid, gid, tc.uid, tc.gid)
		}
	}
}

// TestVersionNegotiation: a version 3 client before a version 2 receiver
// is told the receiver's version, says hello again in it and then sends
// numbers (names are not mapped); a version 2 client before a version 3
// receiver is served in version 2, its chown read as numbers, and the
// version 3 request refused.
func TestVersionNegotiation(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	t.Run("v3 client, v2 receiver", func(t *testing.T) {
		root := t.TempDir()
		old := serveHooks{ids: peer, version: 2}
		_, err := hookedConn(t, root, old, Version)
		var ve *VersionError
		if !errors.As(err, &ve) || ve.Server != 2 || !ve.Older() {
			t.Fatalf("hello v3 to a v2 receiver: %v, want a VersionError from an older server", err)
		}
		c, err := hookedConn(t, root, old, ve.Server)
		if err != nil {
			t.Fatal(err)
		}
		if c.MapsOwnerNames() || c.Version() != 2 {
			t.Fatalf("a v2 conversation maps names (version %d)", c.Version())
		}
		if err := c.Put(ctx, "f", 0o644, timeZero, nil); err != nil {
			t.Fatal(err)
		}
		own := lsync.Owner{UID: 33, GID: 34, User: "www-data", Group: "www-data"}
		if uid, gid, err := c.MapOwner(ctx, own); err != nil || uid != 33 || gid != 34 {
			t.Errorf("MapOwner in v2 = %d:%d %v, want the numbers", uid, gid, err)
		}
		if err := c.Lchown(ctx, "f", own); err != nil {
			t.Fatal(err)
		}
		if uid, gid := ownerOf(t, filepath.Join(root, "f")); uid != 33 || gid != 34 {
			t.Errorf("owner %d:%d, want the numbers 33:34", uid, gid)
		}
	})
	t.Run("v2 client, v3 receiver", func(t *testing.T) {
		root := t.TempDir()
		c, err := hookedConn(t, root, serveHooks{ids: peer}, 2)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Put(ctx, "f", 0o644, timeZero, nil); err != nil {
			t.Fatal(err)
		}
		// What a v2 client sends: rel, uid, gid.
		if err := c.Lchown(ctx, "f", lsync.Owner{UID: 33, GID: 34, User: "www-data", Group: "www-data"}); err != nil {
			t.Fatal(err)
		}
		if uid, gid := ownerOf(t, filepath.Join(root, "f")); uid != 33 || gid != 34 {
			t.Errorf("owner %d:%d, want the numbers 33:34", uid, gid)
		}
		var e enc
		e.u32(1)
		e.u32(1)
		e.str("www-data")
		e.str("www-data")
		if _, err := c.call(ctx, opOwnerIDs, e.b); !malformed(err) {
			t.Errorf("ownerids in v2: %v, want it refused", err)
		}
	})
	t.Run("v1 receiver", func(t *testing.T) {
		_, err := hookedConn(t, t.TempDir(), serveHooks{version: 1}, Version)
		var ve *VersionError
		if !errors.As(err, &ve) || ve.Older() {
			t.Fatalf("hello to a v1 receiver: %v, want a VersionError the client does not retry", err)
		}
	})
}
