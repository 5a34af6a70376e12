package lsync

import (
	"testing"
	"time"
)

func TestDeletionHold(t *testing.T) {
	pct := MaxDelete{Percent: 50}
	cases := []struct {
		name        string
		limit       MaxDelete
		n, total    int
		sourceEmpty bool
		hold        bool
		live        bool
	}{
		{"nothing to delete", pct, 0, 100, true, false, false},
		{"empty source never deletes", MaxDelete{Off: true}, 1, 1, true, true, false},
		{"half is allowed", pct, 50, 100, false, false, false},
		{"more than half is held", pct, 51, 100, false, true, false},
		{"small trees are not held by a percentage", pct, 16, 20, false, false, false},
		{"but above the floor they are", pct, 17, 20, false, true, false},
		{"a count", MaxDelete{Count: 10}, 11, 100000, false, true, false},
		{"within the count", MaxDelete{Count: 10}, 10, 10, false, false, false},
		{"off", MaxDelete{Off: true}, 1000, 1000, false, false, false},
		{"a live batch deletes what inotify saw deleted", pct, 900, 1000, false, false, true},
		{"unless it is an rm -rf of a big tree", pct, 60000, 100000, false, true, true},
		{"or the source is now empty", pct, 5, 5, true, true, true},
	}
	for _, c := range cases {
		floor := massDeleteFloor
		if c.live {
			floor = massDeleteFloorLive
		}
		if got := deletionHold(c.limit, c.n, c.total, c.sourceEmpty, floor); (got != "") != c.hold {
			t.Errorf("%s: deletionHold = %q, want hold %v", c.name, got, c.hold)
		}
	}
}

func TestParseMaxDelete(t *testing.T) {
	for in, want := range map[string]MaxDelete{"": {Percent: 50}, "50%": {Percent: 50}, "1000": {Count: 1000}, "off": {Off: true}, " 5 % ": {Percent: 5}} {
		got, err := ParseMaxDelete(in)
		if err != nil || got != want {
			t.Errorf("ParseMaxDelete(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"0", "-1", "0%", "101%", "half", "1.5"} {
		if _, err := ParseMaxDelete(bad); err == nil {
			t.Errorf("ParseMaxDelete(%q): want an error", bad)
		}
	}
}

func TestDeleteWindowCountsNetShrinking(t *testing.T) {
	var w deleteWindow
	t0 := time.Unix(1_700_000_000, 0)
	w.add(t0, 400)
	w.add(t0.Add(30*time.Second), 300)
	w.add(t0.Add(30*time.Second), 0)
	if got := w.sum(t0.Add(59 * time.Second)); got != 700 {
		t.Fatalf("sum within the window = %d, want 700", got)
	}
	w.add(t0.Add(40*time.Second), -250) // a checkout recreating files
	if got := w.sum(t0.Add(59 * time.Second)); got != 450 {
		t.Fatalf("sum with creations = %d, want 450", got)
	}
	if got := w.sum(t0.Add(liveDeleteWindow)); got != 50 {
		t.Fatalf("sum once the first has aged out = %d, want 50", got)
	}
	w.add(t0.Add(61*time.Second), -1000)
	if got := w.sum(t0.Add(61 * time.Second)); got != 0 {
		t.Fatalf("a growing tree = %d, want 0", got)
	}
	if got := w.sum(t0.Add(3 * liveDeleteWindow)); got != 0 || len(w.buckets) != 0 {
		t.Fatalf("sum after the window = %d (%d kept), want 0", got, len(w.buckets))
	}
}
