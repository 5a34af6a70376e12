package lsync

import (
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lockstep-ha/lockstep/internal/unixmode"
)

// beneath opens files of the source tree with openat2(2), which resolves
// the whole path in one system call and refuses any symlink on the way
// (RESOLVE_NO_SYMLINKS) or an escape from the root (RESOLVE_BENEATH).
// os.Root gives the same guarantee by opening every path component in
// turn: five system calls instead of one for a file two levels down.
type beneath struct {
	fd          int         // the source root, O_PATH
	unavailable atomic.Bool // kernel older than 5.6, or openat2 filtered by seccomp
}

func openBeneath(dir string) (*beneath, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return &beneath{fd: fd}, nil
}

// openFile opens rel for reading without following any symlink. ok is
// false when openat2 is not available; the caller then uses os.Root.
func (b *beneath) openFile(dir, rel string) (f *os.File, ok bool, err error) {
	if b == nil || b.unavailable.Load() {
		return nil, false, nil
	}
	how := unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	for {
		fd, err := unix.Openat2(b.fd, rel, &how)
		switch {
		case err == nil:
			return os.NewFile(uintptr(fd), filepath.Join(dir, rel)), true, nil
		case errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN):
			continue
		case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) && !b.works(dir):
			b.unavailable.Store(true)
			return nil, false, nil
		default:
			return nil, true, &os.PathError{Op: "open", Path: filepath.Join(dir, rel), Err: err}
		}
	}
}

// realDir reports whether dir resolves below the root through real
// directories only. ok is false when openat2 is not available.
func (b *beneath) realDir(dir string) (real, ok bool) {
	if b == nil || b.unavailable.Load() {
		return false, false
	}
	how := unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	for {
		fd, err := unix.Openat2(b.fd, dir, &how)
		switch {
		case err == nil:
			_ = unix.Close(fd)
			return true, true
		case errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN):
			continue
		case errors.Is(err, unix.ENOSYS):
			b.unavailable.Store(true)
			return false, false
		case errors.Is(err, unix.EPERM):
			return false, false // seccomp, or no search permission: let the caller look
		default:
			return false, true // ELOOP, ENOTDIR, ENOENT, EXDEV
		}
	}
}

// look resolves dir through real directories only and looks name up in
// that very directory, so that "absent" is one observation of one
// directory (a directory swapped for a symlink between two checks cannot
// pass for a real directory missing the file). ok is false when openat2
// is not available.
func (b *beneath) look(dir, name string) (res lookup, ok bool) {
	if b == nil || b.unavailable.Load() {
		return 0, false
	}
	how := unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	for {
		fd, err := unix.Openat2(b.fd, dir, &how)
		switch {
		case err == nil:
			defer unix.Close(fd)
			var st unix.Stat_t
			if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); errors.Is(err, unix.ENOENT) {
				return lookAbsent, true
			}
			return lookPresent, true // or unreadable: not known absent
		case errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN):
			continue
		case errors.Is(err, unix.ENOENT):
			return lookNoDir, true
		case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM):
			return 0, false
		default:
			return lookNotReal, true // ELOOP, ENOTDIR, EXDEV
		}
	}
}

// works tells a seccomp filter that answers EPERM to openat2 from a real
// permission error on one file: opening the root itself must succeed.
func (b *beneath) works(dir string) bool {
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH}
	fd, err := unix.Openat2(b.fd, ".", &how)
	if err != nil {
		return false
	}
	_ = unix.Close(fd)
	return true
}

func (b *beneath) close() error {
	if b == nil {
		return nil
	}
	return unix.Close(b.fd)
}

// readWhole reads the file rel, expected to hold size bytes, with raw
// system calls: openat2 (as openFile), one read of size+1 bytes, fstat,
// close. An os.File would add an fcntl and a cleanup to track per file,
// and the caller's fstat before the read is replaced by the walk's lstat
// (see Reconciler.readSmall). The returned mode, size and mtime are the
// fstat's, after the read. ok is false when openat2 is not available.
func (b *beneath) readWhole(dir, rel string, size int64) (data []byte, st fileStat, ok bool, err error) {
	if b == nil || b.unavailable.Load() {
		return nil, st, false, nil
	}
	how := unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	var fd int
	for {
		fd, err = unix.Openat2(b.fd, rel, &how)
		if !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN) {
			break
		}
	}
	if err != nil {
		// ENOSYS and the like too: the caller's os.File path sorts it out.
		return nil, st, true, &os.PathError{Op: "open", Path: filepath.Join(dir, rel), Err: err}
	}
	defer unix.Close(fd)
	data = make([]byte, size+1)
	var n int
	for {
		n, err = unix.Read(fd, data)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return nil, st, true, &os.PathError{Op: "read", Path: filepath.Join(dir, rel), Err: err}
	}
	var s unix.Stat_t
	if err := unix.Fstat(fd, &s); err != nil {
		return nil, st, true, &os.PathError{Op: "fstat", Path: filepath.Join(dir, rel), Err: err}
	}
	return data[:n], fileStat{mode: unixmode.FromStat(s.Mode), size: s.Size, mtime: time.Unix(s.Mtim.Sec, s.Mtim.Nsec)}, true, nil
}
