package unixmode

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRoundTripThroughTheKernel(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, want := range []fs.FileMode{0o644, fs.ModeSetuid | 0o755, fs.ModeSetgid | 0o750, fs.ModeSticky | 0o777, 0o600} {
		if err := unix.Chmod(p, ToUnix(want)); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		if got := FromStat(st.Mode); got != want {
			t.Errorf("mode %v came back as %v", want, got)
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil || !FromStat(st.Mode).IsDir() {
		t.Errorf("a directory is not a directory: %v", err)
	}
}
