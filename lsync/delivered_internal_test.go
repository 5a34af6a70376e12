package lsync

import (
	"context"
	"testing"
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
