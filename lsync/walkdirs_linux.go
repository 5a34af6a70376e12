package lsync

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/lockstep-ha/lockstep/internal/unixmode"
	"golang.org/x/sys/unix"
)

// dirLister holds what listing one directory needs: a getdents buffer,
// the directory's names (each NUL-terminated, as system calls take
// them) and a readlink buffer. A walk lists one directory per worker at
// a time, so a pool of them replaces 40 KiB of garbage per directory.
type dirLister struct {
	buf   []byte
	names []byte
	spans []nameSpan
	link  []byte
}

// nameSpan is a name in dirLister.names: [start, end), its NUL at end.
type nameSpan struct{ start, end int }

var dirListers = sync.Pool{New: func() any {
	return &dirLister{buf: make([]byte, 32<<10), link: make([]byte, 256)}
}}

// name is the i-th name, NUL included (name[:len(name)-1] is the name).
func (l *dirLister) name(i int) []byte { return l.names[l.spans[i].start : l.spans[i].end+1] }

// openDirBeneath opens dir below the root with openat2, never through a
// symlink. ok is false when openat2 is not available.
func openDirBeneath(b *beneath, dir string) (fd int, ok bool, err error) {
	if b == nil || b.unavailable.Load() {
		return -1, false, nil
	}
	how := unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	for {
		fd, err = unix.Openat2(b.fd, dotIfRoot(dir), &how)
		if !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN) {
			break
		}
	}
	if errors.Is(err, unix.ENOSYS) {
		b.unavailable.Store(true)
		return -1, false, nil
	}
	if err != nil {
		return -1, true, &fs.PathError{Op: "open", Path: dotIfRoot(dir), Err: err}
	}
	return fd, true, nil
}

func dotIfRoot(dir string) string {
	if dir == "" {
		return "."
	}
	return dir
}

// readDir calls fn with every name of the open directory fd ("." and
// ".." left out) and its d_type; name is only valid during the call.
func (l *dirLister) readDir(fd int, dir string, fn func(name []byte, typ byte)) error {
	for {
		n, err := unix.ReadDirent(fd, l.buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return &fs.PathError{Op: "readdirent", Path: dotIfRoot(dir), Err: err}
		}
		if n <= 0 {
			return nil
		}
		parseDirents(l.buf[:n], fn)
	}
}

// direntHeader is the size of struct linux_dirent64 before its name:
// ino u64, off s64, reclen u16, type u8.
const direntHeader = 19

// parseDirents calls fn for every record of a getdents64 buffer, "."
// and ".." left out. A record that would reach past the buffer, or is
// shorter than its header, ends the parse: a kernel does not write one,
// and a parser that trusts reclen would read out of bounds (or loop).
func parseDirents(buf []byte, fn func(name []byte, typ byte)) {
	for off := 0; off+direntHeader <= len(buf); {
		reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
		if reclen < direntHeader || reclen > len(buf)-off {
			return
		}
		typ := buf[off+18]
		name := buf[off+direntHeader : off+reclen]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		off += reclen
		if len(name) == 0 || string(name) == "." || string(name) == ".." {
			continue
		}
		fn(name, typ)
	}
}

// readNames reads the names of fd into l, sorted.
func (l *dirLister) readNames(fd int, dir string) error {
	l.names, l.spans = l.names[:0], l.spans[:0]
	err := l.readDir(fd, dir, func(name []byte, _ byte) {
		start := len(l.names)
		l.names = append(append(l.names, name...), 0)
		l.spans = append(l.spans, nameSpan{start, len(l.names) - 1})
	})
	slices.SortFunc(l.spans, func(a, b nameSpan) int {
		return bytes.Compare(l.names[a.start:a.end], l.names[b.start:b.end])
	})
	return err
}

// childPath is joinRel(dir, string(name)) with one allocation, not two.
func childPath(dir string, name []byte) string {
	if dir == "" {
		return string(name)
	}
	return dir + "/" + string(name)
}

// listDirBeneath lists dir with raw system calls: one openat2 for the
// directory, getdents, and one statx per entry. keep completes an entry
// and says whether it is listed. ok is false when openat2 is not
// available (the caller then uses os.Root).
func listDirBeneath(b *beneath, dir string, keep func(*Entry) bool, watch *passWatch) (out []Entry, ok bool, err error) {
	fd, ok, err := openDirBeneath(b, dir)
	if !ok || err != nil {
		return nil, ok, err
	}
	defer unix.Close(fd)
	watch.dir(fd, dotIfRoot(dir))
	l := dirListers.Get().(*dirLister)
	defer dirListers.Put(l)
	if err := l.readNames(fd, dir); err != nil {
		return nil, true, err
	}
	out = make([]Entry, 0, len(l.spans))
	for i := range l.spans {
		name := l.name(i)
		out = append(out, Entry{Path: childPath(dir, name[:len(name)-1])})
		e := &out[len(out)-1]
		listed, nlink, err := l.complete(fd, name, e, keep)
		if err != nil {
			return nil, true, err
		}
		if nlink > 1 && listed && e.Mode.IsRegular() {
			watch.linked(e.Path)
		}
		if !listed {
			out = out[:len(out)-1]
		}
	}
	return out, true, nil
}

// complete lstats name (NUL-terminated) in fd into e, reads its link
// target, and reports whether it is listed: not when it is gone, no
// longer a symlink, or keep drops it; nlink is its number of links.
func (l *dirLister) complete(fd int, name []byte, e *Entry, keep func(*Entry) bool) (listed bool, nlink uint32, err error) {
	nlink, err = lstatAt(fd, name, e)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, 0, nil // removed meanwhile
		}
		return false, 0, &fs.PathError{Op: "lstat", Path: e.Path, Err: err}
	}
	if !keep(e) {
		return false, nlink, nil
	}
	if e.Mode&fs.ModeSymlink == 0 {
		return true, nlink, nil
	}
	target, ok, err := l.readlinkat(fd, name)
	if err != nil {
		return false, nlink, &fs.PathError{Op: "readlink", Path: e.Path, Err: err}
	}
	e.LinkTarget = target
	return ok, nlink, nil // !ok: gone, or no longer a symlink: seen again next time
}

// noStatx is set once statx turned out to be missing (seccomp filters of
// old container runtimes): fstatat does the same, one allocation more.
var noStatx atomic.Bool

// statxWanted is what an Entry holds; AT_STATX_DONT_SYNC keeps a
// network file system from asking its server for the rest.
const (
	statxWanted = unix.STATX_TYPE | unix.STATX_MODE | unix.STATX_NLINK | unix.STATX_SIZE | unix.STATX_MTIME | unix.STATX_UID | unix.STATX_GID
	statxFlags  = unix.AT_SYMLINK_NOFOLLOW | unix.AT_STATX_DONT_SYNC
)

// lstatAt fills e's type, mode, size, mtime and owner from name
// (NUL-terminated) in dirfd, never following a symlink, and returns its
// number of links.
func lstatAt(dirfd int, name []byte, e *Entry) (nlink uint32, err error) {
	if !noStatx.Load() {
		var st unix.Statx_t
		err := statx(dirfd, name, &st)
		switch {
		case err == nil && st.Mask&statxWanted == statxWanted:
			e.Mode, e.Size = unixmode.FromStat(uint32(st.Mode)), int64(st.Size)
			e.ModTime = time.Unix(st.Mtime.Sec, int64(st.Mtime.Nsec))
			e.UID, e.GID, e.Owned = st.Uid, st.Gid, true
			return st.Nlink, nil
		case errors.Is(err, unix.ENOSYS):
			noStatx.Store(true)
		case err != nil:
			return 0, err
		}
		// A file system that leaves a field out: fstatat fills it in.
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, string(name[:len(name)-1]), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return 0, err
	}
	e.Mode, e.Size = unixmode.FromStat(st.Mode), st.Size
	e.ModTime = time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
	e.UID, e.GID, e.Owned = st.Uid, st.Gid, true
	return uint32(st.Nlink), nil
}

// statx is unix.Statx on a name that already ends in NUL: unix.Statx
// copies every name to add one.
func statx(dirfd int, name []byte, st *unix.Statx_t) error {
	for {
		_, _, errno := unix.Syscall6(unix.SYS_STATX, uintptr(dirfd), uintptr(unsafe.Pointer(&name[0])),
			statxFlags, statxWanted, uintptr(unsafe.Pointer(st)), 0)
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return errno
	}
}

// readlinkat reads the symlink name (NUL-terminated) in dirfd; ok is
// false when it is gone or no longer a symlink.
func (l *dirLister) readlinkat(dirfd int, name []byte) (string, bool, error) {
	for {
		n, _, errno := unix.Syscall6(unix.SYS_READLINKAT, uintptr(dirfd), uintptr(unsafe.Pointer(&name[0])),
			uintptr(unsafe.Pointer(&l.link[0])), uintptr(len(l.link)), 0, 0)
		switch {
		case errno == unix.ENOENT || errno == unix.EINVAL:
			return "", false, nil
		case errno == unix.EINTR:
			continue
		case errno != 0:
			return "", false, errno
		case int(n) < len(l.link):
			return string(l.link[:n]), true, nil
		}
		l.link = make([]byte, 2*len(l.link)) // possibly cut short
	}
}

// countDirBeneath counts the entries of dir and names its subdirectories
// from getdents alone (its d_type), without an lstat per entry: the
// estimate of a progress bar must cost little next to the pass. ok is
// false when openat2 is not available.
func countDirBeneath(b *beneath, dir string) (n int, subdirs []string, ok bool, err error) {
	fd, ok, err := openDirBeneath(b, dir)
	if !ok || err != nil {
		return 0, nil, ok, err
	}
	defer unix.Close(fd)
	l := dirListers.Get().(*dirLister)
	defer dirListers.Put(l)
	err = l.readDir(fd, dir, func(name []byte, typ byte) {
		n++
		if typ == unix.DT_DIR {
			subdirs = append(subdirs, childPath(dir, name))
		}
	})
	return n, subdirs, true, err
}
