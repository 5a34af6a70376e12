package lsync

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"slices"
	"time"

	"github.com/lockstep-ha/lockstep/internal/unixmode"
	"golang.org/x/sys/unix"
)

// listDirBeneath lists dir with raw system calls: one openat2 for the
// directory, getdents, and one fstatat per entry. ok is false when
// openat2 is not available (the caller then uses os.Root).
func listDirBeneath(b *beneath, dir string, complete func(Entry) *Entry) (out []Entry, ok bool, err error) {
	if b == nil || b.unavailable.Load() {
		return nil, false, nil
	}
	name := dir
	if name == "" {
		name = "."
	}
	how := unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	var fd int
	for {
		fd, err = unix.Openat2(b.fd, name, &how)
		if !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN) {
			break
		}
	}
	if errors.Is(err, unix.ENOSYS) {
		b.unavailable.Store(true)
		return nil, false, nil
	}
	if err != nil {
		return nil, true, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	defer unix.Close(fd)
	var names []string
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.ReadDirent(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, true, &fs.PathError{Op: "readdirent", Path: name, Err: err}
		}
		if n <= 0 {
			break
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
	slices.Sort(names)
	out = make([]Entry, 0, len(names))
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // removed meanwhile
			}
			return nil, true, &fs.PathError{Op: "lstat", Path: joinRel(dir, n), Err: err}
		}
		e := Entry{Path: joinRel(dir, n), Mode: unixmode.FromStat(st.Mode), Size: st.Size, ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
			UID: st.Uid, GID: st.Gid, Owned: true}
		if e.Mode&fs.ModeSymlink != 0 {
			target, ok, err := readlinkat(fd, n)
			if err != nil {
				return nil, true, &fs.PathError{Op: "readlink", Path: e.Path, Err: err}
			}
			if !ok {
				continue // gone, or no longer a symlink: seen again next time
			}
			e.LinkTarget = target
		}
		if c := complete(e); c != nil {
			out = append(out, *c)
		}
	}
	return out, true, nil
}

// readlinkat reads the symlink name in dirfd; ok is false when it is
// gone or no longer a symlink.
func readlinkat(dirfd int, name string) (string, bool, error) {
	for size := 256; ; size *= 2 {
		b := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, b)
		switch {
		case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL):
			return "", false, nil
		case errors.Is(err, unix.EINTR):
			size /= 2
			continue
		case err != nil:
			return "", false, err
		case n < size:
			return string(b[:n]), true, nil
		}
	}
}

// countDirBeneath counts the entries of dir and names its subdirectories
// from getdents alone (its d_type), without an lstat per entry: the
// estimate of a progress bar must cost little next to the pass. ok is
// false when openat2 is not available.
func countDirBeneath(b *beneath, dir string) (n int, subdirs []string, ok bool, err error) {
	if b == nil || b.unavailable.Load() {
		return 0, nil, false, nil
	}
	name := dir
	if name == "" {
		name = "."
	}
	how := unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	fd, err := unix.Openat2(b.fd, name, &how)
	if errors.Is(err, unix.ENOSYS) {
		return 0, nil, false, nil
	}
	if err != nil {
		return 0, nil, true, err
	}
	defer unix.Close(fd)
	buf := make([]byte, 32<<10)
	for {
		k, err := unix.ReadDirent(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return n, subdirs, true, err
		}
		if k <= 0 {
			return n, subdirs, true, nil
		}
		// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
		for off := 0; off+19 <= k; {
			reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
			if reclen == 0 || off+reclen > k {
				break
			}
			typ := buf[off+18]
			nb := buf[off+19 : off+reclen]
			if i := bytes.IndexByte(nb, 0); i >= 0 {
				nb = nb[:i]
			}
			off += reclen
			if s := string(nb); s != "." && s != ".." {
				n++
				if typ == unix.DT_DIR {
					subdirs = append(subdirs, joinRel(dir, s))
				}
			}
		}
	}
}
