package lsync

import (
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// passWatch watches every directory a one-shot pass lists, from just
// before it is listed to the end of the pass, so that the pass's
// verification (does the source still match what the pass recorded?)
// need not walk the whole tree a second time when nothing changed.
//
// Why it can vouch: a directory is watched before its entries are read,
// so a change to it or to any entry in it is either seen by the pass
// (made before the listing) or queued as an event (made after). inotify
// does not see everything, so the watch vouches only where it can: every
// directory on a local filesystem (a network filesystem's other clients
// make no events here) and no regular file with more than one link (a
// write through a link outside the tree makes no event in it). Anything
// else spoils the watch, and the verification walks the tree as before.
//
// Only that a change happened matters, not which: the events are never
// read, only looked for at the end (an overflowed queue still holds its
// overflow event), so watching costs one inotify_add_watch and one
// fstatfs per directory and no goroutine.
type passWatch struct {
	fd      int
	watched atomic.Int64 // directories watched
	// spoiled is the first reason the watch cannot vouch (nil while it
	// can).
	spoiled atomic.Pointer[string]
}

// passWatchEvents are the changes that make the source differ from what
// a pass read: content, metadata and names (of entries or the directory
// itself). Reads, opens and closes after reading are left out: the pass
// makes those.
const passWatchEvents = unix.IN_MODIFY | unix.IN_ATTRIB | unix.IN_CLOSE_WRITE |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_CREATE | unix.IN_DELETE |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// newPassWatch starts a watch; nil when inotify is unavailable (nil
// methods are no-ops and vouch for nothing).
func newPassWatch() *passWatch {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil
	}
	return &passWatch{fd: fd}
}

// localFS are the filesystems whose every change is made through this
// kernel (f_type of statfs).
var localFS = map[int64]bool{
	unix.TMPFS_MAGIC:       true,
	unix.EXT4_SUPER_MAGIC:  true, // also ext2 and ext3
	unix.XFS_SUPER_MAGIC:   true,
	unix.BTRFS_SUPER_MAGIC: true,
	unix.F2FS_SUPER_MAGIC:  true,
	0x2fc12fc1:             true, // ZFS
}

// dir watches the directory open as dirfd, about to be listed.
func (w *passWatch) dir(dirfd int, rel string) {
	if w == nil || w.why() != "" {
		return
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(dirfd, &sfs); err != nil {
		w.spoil("statfs " + rel + ": " + err.Error())
		return
	}
	if !localFS[int64(sfs.Type)] {
		w.spoil(rel + " is on a filesystem whose changes may not all be seen here (type 0x" + strconv.FormatInt(int64(sfs.Type), 16) + ")")
		return
	}
	// The descriptor's magic link names the directory opened, whatever
	// its path has become since.
	if _, err := unix.InotifyAddWatch(w.fd, "/proc/self/fd/"+strconv.Itoa(dirfd), passWatchEvents); err != nil {
		w.spoil("watch " + rel + ": " + err.Error())
		return
	}
	w.watched.Add(1)
}

// linked notes a regular file with more than one link.
func (w *passWatch) linked(rel string) {
	w.spoil(rel + " has other hard links")
}

func (w *passWatch) spoil(why string) {
	if w != nil {
		w.spoiled.CompareAndSwap(nil, &why)
	}
}

func (w *passWatch) why() string {
	if p := w.spoiled.Load(); p != nil {
		return *p
	}
	return ""
}

// close ends the watch. quiet reports that every directory listed was
// watched and nothing changed in any of them; why says otherwise.
func (w *passWatch) close() (quiet bool, why string) {
	if w == nil {
		return false, "inotify is unavailable"
	}
	defer unix.Close(w.fd)
	if why := w.why(); why != "" {
		return false, why
	}
	if w.watched.Load() == 0 {
		return false, "the pass listed no directory through the watch"
	}
	buf := make([]byte, unix.SizeofInotifyEvent+unix.NAME_MAX+1)
	for {
		n, err := unix.Read(w.fd, buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return true, ""
		case err != nil:
			return false, "reading the watch: " + err.Error()
		case n > 0:
			return false, "the source changed during the pass"
		default:
			return false, "reading the watch: no event and no error"
		}
	}
}
