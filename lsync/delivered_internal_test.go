package lsync

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockstep-ha/lockstep/lsync/syncstate"
)

func TestDeliveriesFollowRenamesAndLocalChanges(t *testing.T) {
	var d deliveries
	d.note(Event{Path: "up/a.jpg", Op: OpCreate, Delivered: true})
	d.note(Event{Path: "up/b.jpg", Op: OpCreate, Delivered: true})
	d.note(Event{Path: "up/c.jpg", Op: OpCreate, Delivered: true})
	// A local write makes it ours again; an attribute change (the
	// sender's chown after landing) does not.
	d.note(Event{Path: "up/b.jpg", Op: OpWrite})
	d.note(Event{Path: "up/c.jpg", Op: OpChmod})
	// The directory is renamed (old name, then new name, one inode).
	d.note(Event{Path: "up", Op: OpRename, IsDir: true, Inode: 42})
	d.note(Event{Path: "media", Op: OpCreate, IsDir: true, Inode: 42})
	for p, want := range map[string]bool{
		"media/a.jpg": true, "media/c.jpg": true, "media/b.jpg": false,
		"up/a.jpg": false, "up/b.jpg": false,
	} {
		if got := d.has(p); got != want {
			t.Errorf("has(%q) = %v, want %v", p, got, want)
		}
	}
	// Lost events: nothing is known any more.
	deliverySink{sink: nopSink{}, d: &d}.rescan(t.Context(), "overflow")
	if d.has("media/a.jpg") {
		t.Error("a delivery survived a rescan")
	}
}

type nopSink struct{}

func (nopSink) event(context.Context, Event)   {}
func (nopSink) rescan(context.Context, string) {}

// TestDeliveryMarkTellsThePeersFile: a file the receiver landed carries
// its mark. The two-way merge, which has no base for it and finds the
// peer without it, leaves it to the peer (which moved or deleted it) —
// even with no watcher tag, as for a file delivered into a directory
// before that directory was watched. A local edit, a rename or an old
// mark makes it this node's file again, pushed as before.
func TestDeliveryMarkTellsThePeersFile(t *testing.T) {
	dir := t.TempDir()
	src, err := OpenSource(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	store, err := syncstate.Open(filepath.Join(t.TempDir(), "state.db"), "a->b")
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	r := &Reconciler{Source: src, State: store, TwoWay: true, Node: "b", Target: "a", Logger: slog.New(slog.DiscardHandler)}
	mtime := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	land := func(rel, content string, mark func(f *os.File)) *Entry {
		t.Helper()
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(content); err != nil {
			t.Fatal(err)
		}
		mark(f)
		f.Close()
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		e, err := src.Lstat(rel)
		if err != nil || e == nil {
			t.Fatalf("lstat %s: %v", rel, err)
		}
		return e
	}
	marked := func(rel string, size int64) func(*os.File) {
		return func(f *os.File) { MarkDelivered(int(f.Fd()), rel, size, mtime) }
	}
	probe, err := os.CreateTemp(dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fsetxattr(int(probe.Fd()), "user.probe", []byte("1"), 0); err != nil {
		t.Skipf("no user xattrs here: %v", err)
	}
	probe.Close()
	os.Remove(probe.Name())

	cases := []struct {
		name string
		rel  string
		mark func(*os.File)
		want verdict
	}{
		{"delivered, untouched", "new/f.html", marked("new/f.html", 5), vLeave},
		{"no mark: made here", "mine/f.html", func(*os.File) {}, vPush},
		{"edited here since (size)", "edited/f.html", marked("edited/f.html", 4), vPush},
		{"renamed here since", "moved/f.html", marked("elsewhere/f.html", 5), vPush},
		{"an old delivery", "old/f.html", func(f *os.File) {
			_ = unix.Fsetxattr(int(f.Fd()), DeliveredXattr, DeliveryMark("old/f.html", 5, mtime, time.Now().Add(-time.Hour)), 0)
		}, vPush},
	}
	for _, c := range cases {
		e := land(c.rel, "12345", c.mark)
		if got := r.merge(c.rel, e, nil); got != c.want {
			t.Errorf("%s: merge = %v, want %v", c.name, got, c.want)
		}
	}
}
