package lsync

import (
	"context"
	"reflect"
	"sync"
	"testing"
	"time"
)

func TestBatchCollapsing(t *testing.T) {
	now := time.Now()
	cases := []struct {
		name    string
		events  []Event
		paths   []string
		renames []Rename
		rescan  bool
		scan    []string
	}{
		{"many writes become one path", []Event{{Path: "a", Op: OpWrite}, {Path: "a", Op: OpWrite}, {Path: "a", Op: OpWrite}}, []string{"a"}, nil, false, nil},
		// Created then deleted: listed once, so that apply checks the
		// target (a Stat) and sends nothing; see TestJobCreateThenDeleteSendsNothing.
		{"create then delete collapses to one check", []Event{{Path: "a", Op: OpCreate}, {Path: "a", Op: OpWrite}, {Path: "a", Op: OpRemove}}, []string{"a"}, nil, false, nil},
		{"editor temp renamed over", []Event{{Path: "tmp", Op: OpCreate}, {Path: "tmp", Op: OpWrite}, {Path: "tmp", Op: OpRename}, {Path: "f", Op: OpCreate}}, []string{"f", "tmp"}, nil, false, nil},
		{"delete then create uploads", []Event{{Path: "a", Op: OpRemove}, {Path: "a", Op: OpCreate}}, []string{"a"}, nil, false, nil},
		{"delete stays a delete", []Event{{Path: "a", Op: OpWrite}, {Path: "a", Op: OpRemove}}, []string{"a"}, nil, false, nil},
		{"create delete create uploads", []Event{{Path: "a", Op: OpCreate}, {Path: "a", Op: OpRemove}, {Path: "a", Op: OpCreate}}, []string{"a"}, nil, false, nil},
		{"directory rename paired by inode", []Event{{Path: "d", Op: OpRename, IsDir: true, Inode: 7}, {Path: "e", Op: OpCreate, IsDir: true, Inode: 7}, {Path: "e/x", Op: OpCreate}},
			[]string{"d", "e", "e/x"}, []Rename{{From: "d", To: "e"}}, false, nil},
		{"rename chain keeps order", []Event{{Path: "d", Op: OpRename, IsDir: true, Inode: 7}, {Path: "e", Op: OpCreate, IsDir: true, Inode: 7}, {Path: "e", Op: OpRename, IsDir: true, Inode: 7}, {Path: "f", Op: OpCreate, IsDir: true, Inode: 7}},
			[]string{"d", "e", "f"}, []Rename{{From: "d", To: "e"}, {From: "e", To: "f"}}, false, nil},
		{"different inode is not a rename", []Event{{Path: "d", Op: OpRename, IsDir: true, Inode: 7}, {Path: "e", Op: OpCreate, IsDir: true, Inode: 8}}, []string{"d", "e"}, nil, false, nil},
		{"rename of a directory created in the batch is an upload of its whole subtree", []Event{{Path: "d", Op: OpCreate, IsDir: true, Inode: 7}, {Path: "d", Op: OpRename, IsDir: true, Inode: 7}, {Path: "e", Op: OpCreate, IsDir: true, Inode: 7}}, []string{"d", "e"}, nil, false, []string{"e"}},
		// The rename is replayed before any path: a change made under the
		// old name must be looked at under the new one.
		{"changes under a renamed directory follow it", []Event{{Path: "d/x", Op: OpWrite}, {Path: "d", Op: OpRename, IsDir: true, Inode: 7}, {Path: "e", Op: OpCreate, IsDir: true, Inode: 7}},
			[]string{"d", "d/x", "e", "e/x"}, []Rename{{From: "d", To: "e"}}, false, nil},
		{"overflow escalates to rescan", []Event{{Path: "a", Op: OpWrite}, {Path: "b", Op: OpWrite}, {Path: "c", Op: OpWrite}, {Path: "d", Op: OpWrite}, {Path: "e", Op: OpWrite}}, nil, nil, true, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newBatchState(4)
			for _, ev := range tc.events {
				s.add(ev, now)
			}
			b := s.take()
			if !reflect.DeepEqual(b.Paths, tc.paths) || !reflect.DeepEqual(b.Renames, tc.renames) || b.Rescan != tc.rescan || !reflect.DeepEqual(b.Scan, tc.scan) {
				t.Fatalf("got paths %v renames %v rescan %v scan %v; want %v %v %v %v", b.Paths, b.Renames, b.Rescan, b.Scan, tc.paths, tc.renames, tc.rescan, tc.scan)
			}
			if !s.empty() {
				t.Fatal("state not empty after take")
			}
		})
	}
}

// TestBatchEdgeBetweenRenameEvents: a batch can end between the two
// events of one directory rename (the old name, then the new one). The
// first batch takes the old name as a path (gone from the source: deleted
// on the target); the watcher reports nothing below the new name, so the
// second batch must compare the new name's whole subtree, or the files
// that moved with the directory never reach the target. Before the fix,
// the new name was a bare mkdir: churn left files under renamed
// directories missing (TestChurnConverges, 1 run in a few under load).
func TestBatchEdgeBetweenRenameEvents(t *testing.T) {
	now := time.Now()
	s := newBatchState(0)
	s.add(Event{Path: "a/d", Op: OpRename, IsDir: true, Inode: 7}, now)
	if b := s.take(); !reflect.DeepEqual(b.Paths, []string{"a/d"}) || b.Renames != nil || b.Scan != nil {
		t.Fatalf("first batch: paths %v renames %v scan %v", b.Paths, b.Renames, b.Scan)
	}
	if !s.empty() {
		t.Fatal("state not empty after take: an unpaired old name alone must not make a batch")
	}
	s.add(Event{Path: "b/e", Op: OpCreate, IsDir: true, Inode: 7}, now)
	b := s.take()
	if !reflect.DeepEqual(b.Scan, []string{"b/e"}) || b.Renames != nil {
		t.Fatalf("second batch: paths %v renames %v scan %v; want b/e scanned whole, no rename replayed", b.Paths, b.Renames, b.Scan)
	}
	// An old name waits one batch only: a directory moved out of the
	// tree never gets its new name, and its inode may come back.
	s.add(Event{Path: "x", Op: OpRename, IsDir: true, Inode: 9}, now)
	s.take()
	s.add(Event{Path: "y", Op: OpWrite}, now)
	s.take()
	s.add(Event{Path: "z", Op: OpCreate, IsDir: true, Inode: 9}, now)
	if b := s.take(); b.Scan != nil || b.Renames != nil {
		t.Fatalf("an old name two batches back: renames %v scan %v; want none", b.Renames, b.Scan)
	}
}

func TestBatcherTiming(t *testing.T) {
	var mu sync.Mutex
	var got []Batch
	b := NewBatcher(30*time.Millisecond, 200*time.Millisecond, 1000, func(x Batch) {
		mu.Lock()
		got = append(got, x)
		mu.Unlock()
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// Events every 10ms for 600ms never leave a quiet period of 30ms, so
	// only the hard cap (200ms) can flush: expect several batches, each
	// well below the total.
	start := time.Now()
	for i := 0; time.Since(start) < 600*time.Millisecond; i++ {
		b.event(ctx, Event{Path: "f" + string(rune('a'+i%26)), Op: OpWrite})
		time.Sleep(10 * time.Millisecond)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) < 2 {
		t.Fatalf("max_delay did not cut the stream into batches: %d batch(es)", len(got))
	}
	b.rescan(ctx, "test")
}
