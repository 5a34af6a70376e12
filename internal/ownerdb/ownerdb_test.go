package ownerdb

import (
	"testing"
	"time"
)

func TestRoot(t *testing.T) {
	db := New(0)
	if n, ok := db.UserName(0); !ok || n != "root" {
		t.Errorf("UserName(0) = %q, %v", n, ok)
	}
	if n, ok := db.GroupName(0); !ok || n != "root" {
		t.Errorf("GroupName(0) = %q, %v", n, ok)
	}
	if id, ok := db.UserID("root"); !ok || id != 0 {
		t.Errorf("UserID(root) = %d, %v", id, ok)
	}
	if id, ok := db.GroupID("root"); !ok || id != 0 {
		t.Errorf("GroupID(root) = %d, %v", id, ok)
	}
	if _, ok := db.UserID("no-such-user-lockstep"); ok {
		t.Error("an unknown user resolved")
	}
	if _, ok := db.UserName(3999999999); ok {
		t.Error("an unused uid has a name")
	}
}

// TestCacheExpires: an answer is reused until the TTL, then asked again.
func TestCacheExpires(t *testing.T) {
	db := New(time.Minute)
	now := time.Unix(1000, 0)
	db.now = func() time.Time { return now }
	asked := 0
	look := func(k uint32) (string, bool) { asked++; return "n", true }
	for range 3 {
		cached(db, db.byUID, 7, look)
	}
	if asked != 1 {
		t.Fatalf("asked %d times within the TTL, want 1", asked)
	}
	now = now.Add(2 * time.Minute)
	cached(db, db.byUID, 7, look)
	if asked != 2 {
		t.Fatalf("asked %d times after the TTL, want 2", asked)
	}
}
