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
	f, err := s.openFile(rel)
	if err != nil {
		return false
	}
	defer f.Close()
	buf := make([]byte, 128+len(rel))
	n, err := unix.Fgetxattr(int(f.Fd()), DeliveredXattr, buf)
	if err != nil {
		return false
	}
	return deliveredAs(buf[:n], rel, e, time.Now())
}

// MarkDelivered puts the delivery mark on the open file fd landing as rel
// (see DeliveredXattr). A filesystem without user xattrs only loses the
// mark's help, so its errors are ignored.
func MarkDelivered(fd int, rel string, size int64, mtime time.Time) {
	_ = unix.Fsetxattr(fd, DeliveredXattr, DeliveryMark(rel, size, mtime, time.Now()), 0)
}
