package lsync

import (
	"strings"
	"testing"
)

func TestExcluder(t *testing.T) {
	ex, err := NewExcluder([]string{".git/", "*.swp", "cache/**", "/top.txt", "logs/*.log", "**/node_modules/", "[ab].tmp"})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path  string
		isDir bool
		want  bool
	}{
		{".git", true, true},
		{".git/config", false, true},
		{"sub/.git", true, true},
		{"sub/.git/objects/ab", false, true},
		{".git", false, false}, // a file named .git (worktree link) is not a directory
		{"a.swp", false, true},
		{"deep/dir/.index.html.swp", false, true},
		{"swp", false, false},
		{"cache/x", false, true},
		{"cache/x/y/z", false, true},
		{"cache", true, false}, // rsync semantics: the directory itself stays
		{"sub/cache/x", false, false},
		{"top.txt", false, true},
		{"sub/top.txt", false, false},
		{"logs/a.log", false, true},
		{"logs/sub/a.log", false, false},
		{"node_modules", true, true},
		{"a/b/node_modules/x.js", false, true},
		{"a.tmp", false, true},
		{"c.tmp", false, false},
		{"index.html", false, false},
		{TempPrefix + "x-123", false, true},
		{"sub/" + TempPrefix + "x", false, true},
	}
	for _, c := range cases {
		if got := ex.Excluded(c.path, c.isDir); got != c.want {
			t.Errorf("Excluded(%q, dir=%v) = %v, want %v", c.path, c.isDir, got, c.want)
		}
	}
	var nilEx *Excluder
	if !nilEx.Excluded(TempPrefix+"x", false) || nilEx.Excluded("x", false) {
		t.Error("nil excluder must only exclude temp names")
	}
}

func TestExcluderBadPattern(t *testing.T) {
	for _, p := range []string{"[abc", "  "} {
		_, err := NewExcluder([]string{"ok", p})
		if err == nil || !strings.Contains(err.Error(), "exclude[1]") {
			t.Errorf("pattern %q: want error naming exclude[1], got %v", p, err)
		}
	}
}
