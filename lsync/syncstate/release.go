package syncstate

import (
	"sync"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"
)

// bbolt reads the state through a shared, read-only mapping of the file,
// and every page a reader touches stays in this process's RSS until the
// mapping goes: a pass that reads the whole state (a trusted restart
// compares every directory with it) would hold all of it, 11 MiB for
// 110k paths, 100 MiB for a million. The kernel caches those pages either
// way; dropping them from this process's mapping now and then keeps its
// memory from growing with the tree.

// mapping is how much of the state this process holds mapped, looked
// at every checkEvery units of reading (records read or written, seeks):
// a release costs a TLB flush on every core running a walker and faults
// for the pages still in use, so it is made only when the pages mapped
// since the last one exceed releaseAbove. (Releasing every 8192 records
// instead made a trusted restart of 300k files 35% slower once seeks
// counted too.)
type mapping struct {
	units   atomic.Int64
	checkMu sync.Mutex // one look at a time; the others go on reading
	base    int64      // resident shared bytes just after the last release
}

const (
	checkEvery   = 512
	releaseAbove = 4 << 20
	// seekCost is what a cursor's seek past a subtree counts for: the
	// kernel maps 64 KiB around the page it lands on (fault-around), and
	// the root listing of a 300k-path state, 174 seeks, mapped 11 MiB.
	seekCost = 16
)

// readDone counts n units of reading and, when it is time to look,
// releases the mapped pages if there are enough of them. tx must still
// be open: it keeps bbolt from remapping the file meanwhile (a reader
// holds the mapping's read lock; a writer is the only one that remaps,
// at its commit).
func (s *Store) readDone(tx *bolt.Tx, n int) {
	if n <= 0 {
		return
	}
	m := &s.mapped
	after := m.units.Add(int64(n))
	if after/checkEvery == (after-int64(n))/checkEvery || !m.checkMu.TryLock() {
		return
	}
	defer m.checkMu.Unlock()
	now, ok := residentShared()
	if ok && now-m.base < releaseAbove ||
		!ok && after/(16*checkEvery) == (after-int64(n))/(16*checkEvery) { // no /proc: a release every 8192
		return
	}
	release(s.db, tx.Size())
	if now, ok := residentShared(); ok {
		m.base = now
	}
}
