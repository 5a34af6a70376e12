package syncstate

import bolt "go.etcd.io/bbolt"

// bbolt reads the state through a shared, read-only mapping of the file,
// and every page a reader touches stays in this process's RSS until the
// mapping goes: a pass that reads the whole state (a trusted restart
// compares every directory with it) would hold all of it, 11 MiB for
// 110k paths, 100 MiB for a million. The kernel caches those pages either
// way; dropping them from this process's mapping now and then keeps its
// memory from growing with the tree.

// releaseEvery is the number of records read or written between two
// releases: about 1.5 MiB of pages mapped at most. Releasing costs a
// little (BenchmarkChildrenWalk: 26 ms for 110k paths read once, 29 ms
// with a release every 8192, 32-48 ms every 4096): a page dropped is
// faulted in again, and the kernel's fault-around maps neighbours a
// release may drop before they are read.
const releaseEvery = 8192

// seekCost is what a cursor's seek to a far key counts for in readDone:
// about the number of records in the 64 KiB the kernel maps around a
// page it faults in (fault_around_bytes).
const seekCost = 512

// readDone counts n records read or written and, every releaseEvery,
// releases the mapped pages. tx must still be open: it keeps bbolt from
// remapping the file meanwhile (a reader holds the mapping's read lock;
// a writer is the only one that remaps, at its commit).
func (s *Store) readDone(tx *bolt.Tx, n int) {
	if n <= 0 {
		return
	}
	if after := s.reads.Add(int64(n)); after/releaseEvery != (after-int64(n))/releaseEvery {
		release(s.db, tx.Size())
	}
}
