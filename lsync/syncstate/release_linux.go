package syncstate

import (
	"os"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// release drops the first size bytes of db's mapping from this process
// (MADV_DONTNEED on a shared file mapping: the next read faults the page
// back in from the page cache; nothing is lost, bbolt never writes
// through the mapping). Only pages within the file can be mapped, so size
// is the file's.
func release(db *bolt.DB, size int64) {
	page := int64(os.Getpagesize())
	n := (size + page - 1) &^ (page - 1)
	if n > 0 {
		_, _, _ = unix.Syscall(unix.SYS_MADVISE, db.Info().Data, uintptr(n), unix.MADV_DONTNEED)
	}
}
