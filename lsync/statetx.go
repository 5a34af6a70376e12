package lsync

import "github.com/lockstep-ha/lockstep/lsync/syncstate"

// stateFlushEvery bounds what a pass holds of what it learnt before
// writing it to the state: a first pass over a 100k-file tree would
// otherwise keep a record per path in memory until its end, so that the
// pass's memory grew with the tree.
const stateFlushEvery = 4096

// newStateTx starts collecting what a pass or batch learns; full
// collections are written early. Each record is a fact already true of
// both sides (an identical path, a landed upload, a done removal), so an
// early write keeps the state's promise: it may lag the trees, never run
// ahead of them.
func (r *Reconciler) newStateTx() *stateTx {
	return &stateTx{flush: func(renames []syncstate.Rename, puts map[string]syncstate.Record, dels []string) error {
		err := r.State.Write(renames, puts, dels)
		if err != nil {
			r.Logger.Warn("sync state not updated; the next pass compares what it would have skipped", "err", err)
		}
		return err
	}}
}

// flushIfFullLocked writes the collection once it is full. It runs with
// s.mu held, so that chunks reach the store in the order they were
// learnt (a removal after a put of the same path must land after it).
func (s *stateTx) flushIfFullLocked() {
	if s.flush == nil || len(s.puts)+len(s.dels) < stateFlushEvery {
		return
	}
	if s.flush(s.renames, s.puts, s.dels) != nil {
		s.failed = true
	}
	// The map is reused (the store kept nothing of it): the next chunk
	// fills it again.
	s.renames, s.dels = nil, nil
	clear(s.puts)
}
