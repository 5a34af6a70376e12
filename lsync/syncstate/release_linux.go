package syncstate

import (
	"bytes"
	"os"
	"strconv"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// release drops the first size bytes of db's mapping from this process
// (MADV_DONTNEED on a shared file mapping: the next read faults the page
// back in from the page cache; nothing is lost, bbolt never writes
// through the mapping). size is the database's as a transaction sees it:
// never beyond the mapping, which is at least that large while the
// transaction is open (what fault-around maps past it is at most 60 KiB).
func release(db *bolt.DB, size int64) {
	page := int64(os.Getpagesize())
	n := (size + page - 1) &^ (page - 1)
	if n > 0 {
		_, _, _ = unix.Syscall(unix.SYS_MADVISE, db.Info().Data, uintptr(n), unix.MADV_DONTNEED)
	}
}

// residentShared is this process's resident file-backed and shared
// memory in bytes (the third field of /proc/self/statm): the state's
// mapped pages and the binary's text. ok is false without /proc.
func residentShared() (n int64, ok bool) {
	var buf [128]byte
	fd, err := unix.Open("/proc/self/statm", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	defer unix.Close(fd)
	k, err := unix.Read(fd, buf[:])
	if err != nil || k <= 0 {
		return 0, false
	}
	f := bytes.Fields(buf[:k])
	if len(f) < 3 {
		return 0, false
	}
	pages, err := strconv.ParseInt(string(f[2]), 10, 64)
	if err != nil {
		return 0, false
	}
	return pages * int64(os.Getpagesize()), true
}
