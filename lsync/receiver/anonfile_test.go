package receiver

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// createdNames watches dir for names created in it (IN_CREATE, IN_MOVED_TO)
// and returns a function that reports them, in order, once f has run.
func createdNames(t *testing.T, dir string) func() []string {
	t.Helper()
	ifd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Close(ifd) })
	if _, err := unix.InotifyAddWatch(ifd, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		t.Fatal(err)
	}
	return func() []string {
		var names []string
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(ifd, buf)
			if err != nil || n <= 0 {
				return names
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
				names = append(names, string(bytes.TrimRight(name, "\x00")))
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}
}

// TestPutManyNewFilesHaveNoTempName: a putmany file that is new on the
// peer is written as an unnamed file and appears under its final name
// only, complete (content, mode, mtime, delivery mark): nothing on the
// peer (a two-way node's watcher, a web server listing the directory)
// ever sees a temp name or a half-written file. A file that exists, or a
// symlink in its place, is still replaced atomically by a rename, and
// the symlink's target outside the root is never written. Each way of
// linking is forced in turn; without any (no O_TMPFILE or /proc), the
// classic temp-name path lands the same files.
func TestPutManyNewFilesHaveNoTempName(t *testing.T) {
	for _, tc := range []struct {
		name      string
		link      int32
		tempNames bool // new files may show a temp name
	}{
		{"linkat-empty-path", linkEmptyPath, false},
		{"proc-fd", linkProcFD, false},
		{"no-link", linkNone, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			dir, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
			lsynctest.WriteFile(t, outside, "victim.txt", "keep me", 0o644, time.Time{})
			lsynctest.WriteFile(t, dir, "d/old.txt", "old content", 0o600, time.Time{})
			if err := os.Symlink(filepath.Join(outside, "victim.txt"), filepath.Join(dir, "d", "link.txt")); err != nil {
				t.Fatal(err)
			}
			r, err := OpenRoot(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			r.anonLink.Store(tc.link)
			if tc.link == linkEmptyPath && os.Geteuid() != 0 {
				t.Log("not root: linkat(AT_EMPTY_PATH) may fall back to /proc")
			}
			created := createdNames(t, filepath.Join(dir, "d"))
			mtime := time.Date(2025, 3, 4, 5, 6, 7, 891011121, time.UTC)
			files := []putFile{
				{rel: "d/new.txt", mode: 0o640, mtime: mtime, data: []byte("new content")},
				{rel: "d/empty", mode: 0o600, mtime: mtime, data: nil},
				{rel: "d/old.txt", mode: 0o644, mtime: mtime, data: []byte("replaced")},
				{rel: "d/link.txt", mode: 0o644, mtime: mtime, data: []byte("not through the link")},
			}
			for i, res := range r.putMany(files) {
				if res.err != nil || res.ownErr != nil {
					t.Fatalf("%s: %v / %v", files[i].rel, res.err, res.ownErr)
				}
			}
			for _, f := range files {
				p := filepath.Join(dir, f.rel)
				st, err := os.Lstat(p)
				if err != nil {
					t.Fatal(err)
				}
				if !st.Mode().IsRegular() || st.Mode().Perm() != f.mode.Perm() || !st.ModTime().Equal(mtime) {
					t.Errorf("%s: mode %v mtime %v, want a file of %v with mtime %v", f.rel, st.Mode(), st.ModTime(), f.mode, mtime)
				}
				if b, _ := os.ReadFile(p); !bytes.Equal(b, f.data) {
					t.Errorf("%s holds %q, want %q", f.rel, b, f.data)
				}
				buf := make([]byte, 256)
				n, err := unix.Getxattr(p, lsync.DeliveredXattr, buf)
				if err != nil {
					t.Errorf("%s: no delivery mark: %v", f.rel, err)
				} else if got, want := strings.SplitN(string(buf[:n]), " ", 5), strings.SplitN(string(lsync.DeliveryMark(f.rel, int64(len(f.data)), mtime, time.Now())), " ", 5); len(got) != 5 || got[1] != want[1] || got[2] != want[2] || got[4] != want[4] {
					t.Errorf("%s: delivery mark %q, want one like %q", f.rel, buf[:n], strings.Join(want, " "))
				}
			}
			if b, _ := os.ReadFile(filepath.Join(outside, "victim.txt")); string(b) != "keep me" {
				t.Fatalf("the file outside the root was written: %q", b)
			}
			names := created()
			var temps []string
			for _, n := range names {
				if strings.HasPrefix(n, lsync.TempPrefix) {
					temps = append(temps, n)
				}
			}
			// The two replaced names go through a temp name each, in every mode.
			if tc.tempNames && len(temps) != 4 || !tc.tempNames && len(temps) != 2 {
				t.Errorf("names created: %q: want %d temp names", names, map[bool]int{true: 4, false: 2}[tc.tempNames])
			}
			if !tc.tempNames && !strings.HasPrefix(strings.Join(names, " "), "new.txt empty ") {
				t.Errorf("names created: %q: the new files should appear first, under their own names", names)
			}
			ents, err := os.ReadDir(filepath.Join(dir, "d"))
			if err != nil {
				t.Fatal(err)
			}
			if len(ents) != 4 {
				t.Errorf("directory holds %d names, want 4 (no temp file left)", len(ents))
			}
		})
	}
}

// BenchmarkPutManyNew lands a putmany of 100 new 256-byte files (one
// directory of an initial sync) per op, as unnamed files linked in and
// by the classic temp name and rename, side by side.
func BenchmarkPutManyNew(b *testing.B) {
	for _, bc := range []struct {
		name string
		link int32
	}{{"unnamed", linkEmptyPath}, {"temp-name", linkNone}} {
		b.Run(bc.name, func(b *testing.B) {
			r, err := OpenRoot(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			r.anonLink.Store(bc.link)
			data := bytes.Repeat([]byte("x"), 256)
			files := make([]putFile, 100)
			mtime := time.Now()
			var ru0, ru1 unix.Rusage
			_ = unix.Getrusage(unix.RUSAGE_SELF, &ru0)
			for i := 0; b.Loop(); i++ {
				for j := range files {
					files[j] = putFile{rel: fmt.Sprintf("d%d/f%03d", i, j), mode: 0o644, mtime: mtime, data: data}
				}
				for _, res := range r.putMany(files) {
					if res.err != nil {
						b.Fatal(res.err)
					}
				}
			}
			_ = unix.Getrusage(unix.RUSAGE_SELF, &ru1)
			cpu := time.Duration(unix.TimevalToNsec(ru1.Utime) - unix.TimevalToNsec(ru0.Utime) + unix.TimevalToNsec(ru1.Stime) - unix.TimevalToNsec(ru0.Stime))
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*len(files)), "cpu-µs/file")
		})
	}
}

// TestDeliveryMarksOption: a version 5 client of a one-way job asks the
// receiver to land files without the delivery mark, and they land
// without it, whichever way they are written (putmany of a new file and
// of an existing one, put, streamed create/commit); without the request,
// and for a version 4 client (which cannot ask), every file gets the
// mark. Bits the server does not know are not reported as applied.
func TestDeliveryMarksOption(t *testing.T) {
	ctx := context.Background()
	mtime := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, tc := range []struct {
		name    string
		version uint32
		ask     uint32
		applied uint32
		marked  bool
	}{
		{"v5-unmarked", Version, OptNoDeliveryMarks | 1<<7, OptNoDeliveryMarks, false},
		{"v5-default", Version, 0, 0, true},
		{"v4-cannot-ask", 4, OptNoDeliveryMarks, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			lsynctest.WriteFile(t, root, "d/existing", "old", 0o644, time.Time{})
			c, err := hookedConn(t, root, serveHooks{}, tc.version)
			if err != nil {
				t.Fatal(err)
			}
			if tc.ask != 0 {
				applied, err := c.SetOptions(ctx, tc.ask)
				if err != nil || applied != tc.applied {
					t.Fatalf("SetOptions(%#x) = %#x, %v; want %#x", tc.ask, applied, err, tc.applied)
				}
			}
			errs, err := c.PutMany(ctx, []PutFile{
				{Rel: "d/new", Mode: 0o644, MTime: mtime, Data: []byte("new")},
				{Rel: "d/existing", Mode: 0o644, MTime: mtime, Data: []byte("replaced")},
			})
			if err != nil || errs[0] != nil || errs[1] != nil {
				t.Fatalf("putmany: %v %v", err, errs)
			}
			must(t, c.Put(ctx, "d/put", 0o644, mtime, []byte("put")))
			w, err := c.Create(ctx, "d/streamed")
			must(t, err)
			must(t, c.Write(ctx, w, 0, []byte("streamed")))
			must(t, c.Commit(ctx, w, 0o644, mtime))
			for _, rel := range []string{"d/new", "d/existing", "d/put", "d/streamed"} {
				_, err := unix.Getxattr(filepath.Join(root, rel), lsync.DeliveredXattr, make([]byte, 256))
				if marked := err == nil; marked != tc.marked {
					t.Errorf("%s: delivery mark present %v (%v), want %v", rel, marked, err, tc.marked)
				}
			}
		})
	}
}

// TestPutManyNewFilesGetTheModeAndOwnerAsked: a new file skips fchown and
// fchmod only when the first new file of its directory was born with
// exactly what it asks for; wherever the umask, a default ACL, a
// set-group-ID directory, set-ID bits or another owner make a file's
// birth differ from its request, it still lands with the mode and owner
// asked, in a batch of files asking for different things.
func TestPutManyNewFilesGetTheModeAndOwnerAsked(t *testing.T) {
	root := os.Geteuid() == 0
	mtime := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string) // the directory the files land in
		umask int
	}{
		{name: "plain"},
		{name: "umask 027", umask: 0o027},
		{name: "umask 077", umask: 0o077},
		{name: "default ACL", setup: func(t *testing.T, dir string) {
			// user::rwx group::--- other::--- (version 2, then tag, perm, id).
			acl := []byte{2, 0, 0, 0}
			for _, e := range [][2]uint16{{0x01, 7}, {0x04, 0}, {0x20, 0}} {
				acl = append(acl, byte(e[0]), byte(e[0]>>8), byte(e[1]), byte(e[1]>>8), 0xff, 0xff, 0xff, 0xff)
			}
			if err := unix.Setxattr(dir, "system.posix_acl_default", acl, 0); err != nil {
				t.Skip("no POSIX ACLs here:", err)
			}
		}},
		{name: "set-group-ID directory", setup: func(t *testing.T, dir string) {
			if !root {
				t.Skip("needs root to give the directory another group")
			}
			if err := os.Chown(dir, 0, 4242); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, 0o2775); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			if err := os.MkdirAll(filepath.Join(base, "d"), 0o755); err != nil {
				t.Fatal(err)
			}
			if tc.setup != nil {
				tc.setup(t, filepath.Join(base, "d"))
			}
			r, err := OpenRoot(base)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if tc.umask != 0 {
				old := unix.Umask(tc.umask)
				defer unix.Umask(old)
			}
			me := &fileOwner{uid: os.Geteuid(), gid: os.Getegid()}
			other := &fileOwner{uid: 1234, gid: 1234}
			files := []putFile{
				{rel: "d/a", mode: 0o644, own: me},
				{rel: "d/b", mode: 0o644, own: me},
				{rel: "d/c", mode: 0o600, own: me},
				{rel: "d/d", mode: 0o755, own: me},
				{rel: "d/e", mode: 0o644},
				{rel: "d/f", mode: 0o755 | os.ModeSetuid, own: me},
				{rel: "d/g", mode: 0o664, own: me},
			}
			if root {
				files = append(files, putFile{rel: "d/h", mode: 0o644, own: other}, putFile{rel: "d/i", mode: 0o644, own: me})
			}
			for i := range files {
				files[i].mtime, files[i].data = mtime, []byte(files[i].rel)
			}
			for i, res := range r.putMany(files) {
				if res.err != nil || res.ownErr != nil {
					t.Fatalf("%s: %v / %v", files[i].rel, res.err, res.ownErr)
				}
			}
			for _, f := range files {
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(base, f.rel), &st); err != nil {
					t.Fatal(err)
				}
				if got, want := st.Mode&0o7777, unixModeOf(f.mode); got != want {
					t.Errorf("%s: mode %#o, want %#o", f.rel, got, want)
				}
				if f.own != nil && (int(st.Uid) != f.own.uid || int(st.Gid) != f.own.gid) {
					t.Errorf("%s: owner %d:%d, want %d:%d", f.rel, st.Uid, st.Gid, f.own.uid, f.own.gid)
				}
			}
		})
	}
}

func unixModeOf(m os.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		u |= unix.S_ISUID
	}
	return u
}
