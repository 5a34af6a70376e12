package receiver

import (
	"errors"
	"io/fs"
	"path"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/lockstep-ha/lockstep/internal/unixmode"
	"github.com/lockstep-ha/lockstep/lsync"
)

// How an unnamed file (O_TMPFILE) gets its name: linkat(AT_EMPTY_PATH)
// needs CAP_DAC_READ_SEARCH on kernels before 6.10 and fails with ENOENT
// without it; linking the /proc/self/fd magic link works for any user
// where /proc is mounted. Root.anonLink starts at linkEmptyPath and only
// moves down.
const (
	linkEmptyPath int32 = iota
	linkProcFD
	linkNone
)

// putNew lands a putmany file as an unnamed file in dfd (O_TMPFILE) that
// is given its final name by linkat once it is complete: content, owner,
// mode, delivery mark and mtime are all set through the descriptor
// before the file has a name. Against a temp name, rename and the checks
// around them, a new file costs three system calls and two name lookups
// fewer on the peer (most of an initial sync's files), and a write cut
// short leaves nothing behind, not even a temp file. linkat never
// replaces: where the name exists, the file is linked in under a temp
// name and renamed over it, as the classic path does.
//
// done is false when the filesystem or kernel cannot do this (no
// O_TMPFILE, no way to link it): the caller then takes the classic
// path, which also names the errors of a directory it cannot write.
func (r *Root) putNew(dfd int, name string, f putFile, born *birth) (res putResult, done bool) {
	if r.anonLink.Load() == linkNone {
		return res, false
	}
	// Born with its permission bits: an unnamed file is out of everyone's
	// reach until it is linked, so it need not start private.
	perm := unixmode.ToUnix(f.mode)
	var fd int
	err := retryEINTR(func() (err error) {
		fd, err = unix.Openat(dfd, ".", unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, perm&0o777)
		return err
	})
	if err != nil {
		return res, false
	}
	defer unix.Close(fd)
	shown := r.show(f.rel)
	if err := pwriteAll(fd, f.data, 0); err != nil {
		res.err = r.spaceHint(dfd, &fs.PathError{Op: "write", Path: shown, Err: err})
		return res, true
	}
	if !born.asked(fd, perm, f.own) {
		if f.own != nil {
			// Before the chmod, which sets the set-ID bits a chown clears.
			if err := unix.Fchown(fd, f.own.uid, f.own.gid); err != nil {
				res.ownErr = &fs.PathError{Op: "chown", Path: shown, Err: err}
			}
		}
		if err := unix.Fchmod(fd, perm); err != nil {
			res.err = &fs.PathError{Op: "chmod", Path: shown, Err: err}
			return res, true
		}
	}
	if !r.noMarks.Load() {
		lsync.MarkDelivered(fd, f.rel, int64(len(f.data)), f.mtime)
	}
	if err := futimens(fd, f.mtime.UnixNano()); err != nil {
		res.err = &fs.PathError{Op: "chtimes", Path: shown, Err: err}
		return res, true
	}
	err = r.linkAnon(fd, dfd, name)
	switch {
	case err == nil:
		return res, true
	case errors.Is(err, unix.EEXIST):
		res.err = r.linkOver(fd, dfd, name, f.rel)
		return res, true
	case r.anonLink.Load() == linkNone:
		// Neither way of linking works here: the classic path writes the
		// file again, and every later one.
		return putResult{}, false
	default:
		res.err = r.spaceHint(dfd, &fs.PathError{Op: "link", Path: shown, Err: err})
		return res, true
	}
}

// birth is what the new files of one directory are born with, learnt
// from the first one of a putmany request (one fstat): its permission
// bits (the umask, a default ACL and the file system have had their say)
// and owner (the receiver's, or the directory's group where it is
// set-group-ID). A file asking for exactly that needs no fchown and no
// fchmod, which would change nothing: two system calls of the five
// that land a new small file, on most files of an initial sync.
type birth struct {
	known    bool
	perm     uint32 // asked for by the file learnt from
	same     bool   // it was born with perm and its owner
	uid, gid int
}

// asked reports whether the unnamed file fd, asking for perm and own (nil:
// the receiver's owner, whatever it is), was born with them.
func (b *birth) asked(fd int, perm uint32, own *fileOwner) bool {
	if !b.known {
		var st unix.Stat_t
		if unix.Fstat(fd, &st) != nil {
			return false
		}
		// Set-ID and sticky bits are never born (the file is created
		// with perm&0o777): a request for them is never the same.
		*b = birth{known: true, perm: perm, same: st.Mode&0o7777 == perm, uid: int(st.Uid), gid: int(st.Gid)}
	}
	return b.same && b.perm == perm && (own == nil || own.uid == b.uid && own.gid == b.gid)
}

// linkAnon gives the unnamed file fd the name name in dfd; linkat never
// follows or replaces what is at name (EEXIST).
func (r *Root) linkAnon(fd, dfd int, name string) error {
	if r.anonLink.Load() == linkEmptyPath {
		err := unix.Linkat(fd, "", dfd, name, unix.AT_EMPTY_PATH)
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EPERM) {
			return err
		}
		// ENOENT is also a directory removed meanwhile: the /proc way
		// then fails the same, and only the capability probe is lost.
		r.anonLink.CompareAndSwap(linkEmptyPath, linkProcFD)
	}
	proc := "/proc/self/fd/" + strconv.Itoa(fd)
	err := unix.Linkat(unix.AT_FDCWD, proc, dfd, name, unix.AT_SYMLINK_FOLLOW)
	if errors.Is(err, unix.ENOENT) {
		var st unix.Stat_t
		if unix.Lstat(proc, &st) != nil {
			r.anonLink.Store(linkNone) // no /proc: no way to link
		}
	}
	return err
}

// linkOver publishes the unnamed file fd over the existing name: linked
// in under a temp name, then renamed over name if the temp name still
// names fd's file (see publish).
func (r *Root) linkOver(fd, dfd int, name, rel string) error {
	tmp := tempName(name)
	tmpShown := r.show(path.Join(path.Dir(rel), tmp))
	if err := r.linkAnon(fd, dfd, tmp); err != nil {
		return r.spaceHint(dfd, &fs.PathError{Op: "link", Path: tmpShown, Err: err})
	}
	var held unix.Stat_t
	if err := unix.Fstat(fd, &held); err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return &fs.PathError{Op: "fstat", Path: tmpShown, Err: err}
	}
	if err := r.swapIn(dfd, tmp, name, rel, &held, tmpShown); err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return err
	}
	return nil
}

// futimens sets the access and modification times of the open file fd
// (utimensat with a NULL path, which x/sys/unix does not wrap): through
// the descriptor, never a name.
func futimens(fd int, ns int64) error {
	ts := [2]unix.Timespec{unix.NsecToTimespec(ns), unix.NsecToTimespec(ns)}
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}
