//go:build linux

package lsync

import (
	"time"

	"golang.org/x/sys/unix"
)

// markedDelivered reports that the regular file rel carries the delivery
// mark of exactly e (see DeliveredXattr). Read through the file opened
// without following symlinks.
func (s *Source) markedDelivered(rel string, e Entry) bool {
	if !e.Mode.IsRegular() {
		return false
	}
	mark, ok := s.mark(rel)
	return ok && deliveredAs(mark, rel, e, time.Now())
}

// landedAs reports that the file at rel was landed here by a peer as the
// version of size and mtime mtimeNs, however long ago, whatever it holds
// now (see torn).
func (s *Source) landedAs(rel string, size, mtimeNs int64) bool {
	mark, ok := s.mark(rel)
	if !ok {
		return false
	}
	msize, mmtime, _, ok := parseMark(mark, rel)
	return ok && msize == size && mmtime == mtimeNs
}

// mark reads rel's delivery mark.
func (s *Source) mark(rel string) ([]byte, bool) {
	f, err := s.openFile(rel)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	buf := make([]byte, 128+len(rel))
	n, err := unix.Fgetxattr(int(f.Fd()), DeliveredXattr, buf)
	if err != nil {
		return nil, false
	}
	return buf[:n], true
}

// MarkDelivered puts the delivery mark on the open file fd landing as rel
// (see DeliveredXattr). A filesystem without user xattrs only loses the
// mark's help, so its errors are ignored.
func MarkDelivered(fd int, rel string, size int64, mtime time.Time) {
	_ = unix.Fsetxattr(fd, DeliveredXattr, DeliveryMark(rel, size, mtime, time.Now()), 0)
}
