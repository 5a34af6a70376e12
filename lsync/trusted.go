package lsync

import (
	"context"
	"io/fs"
	"path"
	"sort"
	"sync"

	"github.com/lockstep-ha/lockstep/lsync/syncstate"
)

// stateLister is a StateStore that can list a directory's records
// (syncstate.Store): what a trusted pass compares the source with.
type stateLister interface {
	Children(dir string, fn func(name string, r syncstate.Record) error) error
}

// Trusted passes
//
// A full pass lists the target: 10,000 round trips for a tree of 10,000
// directories, and most of a restart's time. The sync state already
// records, for every path, the version last made identical on both
// sides; a one-way target changes only through this job. A trusted pass
// therefore compares the source with the state alone, directory by
// directory, and asks the target only about what differs: a path whose
// version changed, appeared or disappeared is applied like a live batch
// (stat, compare, push), and a directory the state knows nothing of is
// compared whole, by listing that subtree only.
//
// What a trusted pass cannot see is a change made on the target behind
// lockstep's back (or a state lost with a crash between an upload and its
// record, which leaves the target ahead, never behind). The periodic
// verification still lists the whole target, at a bounded rate, repairs
// such drift and counts it in lockstep_sync_verify_repairs_total.

// canTrust reports whether a pass may trust the sync state: one-way only
// (two-way targets change on their own), and only once a full pass has
// filled the state (a state that started empty knows nothing).
func (r *Reconciler) canTrust() bool {
	if r.TwoWay || r.State == nil || !r.trusted.Load() {
		return false
	}
	_, ok := r.State.(stateLister)
	return ok
}

// TrustState says whether the state is complete enough for trusted
// passes (the job sets it from the state's completeness mark).
func (r *Reconciler) TrustState(ok bool) { r.trusted.Store(ok) }

// completeMarker is a state that remembers whether it covers the whole
// target (syncstate.Store).
type completeMarker interface {
	SetComplete(bool) error
	Complete() bool
	// SetInUse and InUse tell a run that ended cleanly from one that
	// died (see syncstate.Store.SetInUse).
	SetInUse(bool) error
	InUse() bool
}

// stateComplete records, after a full pass, whether the state now covers
// the whole target: only then may later passes trust it. A pass that left
// anything undone (a held deletion leaves entries on the target that the
// state does not know) withdraws the trust until a full pass succeeds.
func (r *Reconciler) stateComplete(ok bool) {
	r.trusted.Store(ok)
	if m, is := r.State.(completeMarker); is {
		if err := m.SetComplete(ok); err != nil {
			r.Logger.Warn("sync state: cannot record whether it is complete; the next start lists the target", "err", err)
		}
	}
}

// trustedDiff is what a trusted comparison found.
type trustedDiff struct {
	paths  []string // differ from the state: applied like a live batch
	scan   []string // directories the state knows nothing of: compared whole
	errors []*PathError
	// entries is the number of source entries compared.
	entries int
}

func (d *trustedDiff) empty() bool { return len(d.paths) == 0 && len(d.scan) == 0 }

// trustedDiff compares the source with the state, directory by directory;
// it reads nothing of the target. Memory is a directory's listing (and
// its records) per walker plus what differs, whatever the tree's size.
// onDiff, when not nil, is called as soon as something differs (from a
// walker goroutine, maybe more than once): a restart dials the peer only
// then.
func (r *Reconciler) trustedDiff(ctx context.Context, onDiff func()) (*trustedDiff, error) {
	return r.trustedDiffFrom(ctx, "", onDiff)
}

// trustedDiffFrom is trustedDiff below the directory start.
func (r *Reconciler) trustedDiffFrom(ctx context.Context, start string, onDiff func()) (*trustedDiff, error) {
	st := r.State.(stateLister)
	var mu sync.Mutex
	d := &trustedDiff{}
	err := r.Source.walkDirsFrom(ctx, start, walkDirWorkers, func(dir string, entries []Entry, listErr error) ([]string, error) {
		if listErr != nil {
			// Its contents are unknown: nothing below it is compared,
			// and nothing deleted on the strength of its absence.
			mu.Lock()
			d.errors = append(d.errors, &PathError{Path: dir, Op: "list source directory", Err: listErr})
			mu.Unlock()
			if onDiff != nil {
				onDiff()
			}
			return nil, nil
		}
		// Both sides come sorted by name, byte-wise (the walk sorts its
		// names; the state's keys sort so within a directory): one
		// merge, no map of the directory's records.
		var paths, scan, descend []string
		compare := func(e Entry, rec syncstate.Record, known bool) {
			switch {
			case known && matches(e, rec):
				if e.Mode.IsDir() {
					descend = append(descend, e.Path)
				}
			case e.Mode.IsDir() && (!known || !isDirRecord(rec)):
				// New here, or was something else: the state knows
				// nothing below it, the target may hold anything.
				scan = append(scan, e.Path)
			default:
				paths = append(paths, e.Path)
				if e.Mode.IsDir() {
					descend = append(descend, e.Path) // a mode change: the contents are known
				}
			}
		}
		i := 0
		if err := st.Children(dir, func(name string, rec syncstate.Record) error {
			for ; i < len(entries) && path.Base(entries[i].Path) < name; i++ {
				compare(entries[i], syncstate.Record{}, false)
			}
			if i < len(entries) && path.Base(entries[i].Path) == name {
				compare(entries[i], rec, true)
				i++
				return nil
			}
			paths = append(paths, joinRel(dir, name)) // gone from the source
			return nil
		}); err != nil {
			return nil, err
		}
		for ; i < len(entries); i++ {
			compare(entries[i], syncstate.Record{}, false)
		}
		mu.Lock()
		d.entries += len(entries)
		d.paths = append(d.paths, paths...)
		d.scan = append(d.scan, scan...)
		mu.Unlock()
		if onDiff != nil && len(paths)+len(scan) > 0 {
			onDiff()
		}
		return descend, nil
	})
	sort.Strings(d.paths)
	sort.Strings(d.scan)
	return d, err
}

func isDirRecord(rec syncstate.Record) bool { return fs.FileMode(rec.Mode).IsDir() }

// TrustedCatchUp brings the target in line trusting the sync state (see
// canTrust): the source is compared with the state, and only what
// differs, plus b's pending paths, is applied, like a live batch. ok is
// false when the state cannot be trusted; the caller runs a full pass.
func (r *Reconciler) TrustedCatchUp(ctx context.Context, t Target, b Batch) (rep *Report, ok bool, err error) {
	d, ok, err := r.trustedPrepare(ctx, nil)
	if !ok || err != nil {
		return nil, ok, err
	}
	return r.applyTrusted(ctx, t, d, b.Paths)
}

// trustedPrepare runs the comparison with the state when it can be
// trusted (onDiff as in trustedDiff).
func (r *Reconciler) trustedPrepare(ctx context.Context, onDiff func()) (*trustedDiff, bool, error) {
	if !r.canTrust() {
		return nil, false, nil
	}
	if err := r.Source.checkRoot(); err != nil {
		return nil, true, err
	}
	d, err := r.trustedDiff(ctx, onDiff)
	return d, true, err
}

// applyTrusted applies what a trusted comparison found (and extra, paths
// known to have changed) to t.
func (r *Reconciler) applyTrusted(ctx context.Context, t Target, d *trustedDiff, extra []string) (*Report, bool, error) {
	b := Batch{Paths: append(d.paths, extra...), Scan: d.scan}
	var rep *Report
	var err error
	if b.Empty() {
		rep = &Report{Target: r.Target}
	} else {
		rep, err = r.Apply(ctx, t, b)
	}
	rep.Errors = append(rep.Errors, d.errors...)
	rep.Trusted, rep.Compared = true, d.entries
	return rep, true, err
}

// trustedVerify is the dry check after a pass, against the state: it
// reports what differs from what the state says the target holds (a
// source that changed during the pass), without reading the target.
func (r *Reconciler) trustedVerify(ctx context.Context) (*Report, bool, error) {
	d, ok, err := r.trustedPrepare(ctx, nil)
	if !ok || err != nil {
		return nil, ok, err
	}
	rep := &Report{Target: r.Target, Trusted: true, Compared: d.entries, Errors: d.errors}
	for _, p := range d.paths {
		rep.Files++
		rep.note("differs from the sync state " + p)
	}
	for _, p := range d.scan {
		rep.Files++
		rep.note("not in the sync state " + p)
	}
	return rep, true, nil
}

// followRenameInState has the records of a directory renamed on the
// target follow it, so that the state keeps saying what the target holds
// under each name: the move is added to tx, and written with the batch's
// records (renames first), in the batch's one transaction. It reports
// false when the state cannot vouch for the renamed subtree (not
// trusted): the subtree is then compared by listing it.
func (r *Reconciler) followRenameInState(tx *stateTx, from, to string) bool {
	if tx == nil || !r.canTrust() {
		return false
	}
	tx.rename(from, to)
	return true
}

// reconcileRenamed compares directories renamed on the target with the
// source through the state, which followed the renames: a rename costs
// its one request and the local walk of the tree, not a listing of the
// tree on the peer. What differs (an entry an earlier batch deleted on the
// target, a file changed since) is applied like a live batch; a directory
// the state knows nothing of is compared by listing it.
func (r *Reconciler) reconcileRenamed(ctx context.Context, t Target, subs []string, rep *Report) error {
	var paths, scan []string
	for _, sub := range subs {
		d, err := r.trustedDiffFrom(ctx, sub, nil)
		if err != nil {
			return err
		}
		paths = append(paths, d.paths...)
		scan = append(scan, d.scan...)
		rep.Errors = append(rep.Errors, d.errors...)
	}
	if len(paths) == 0 && len(scan) == 0 {
		return nil
	}
	// In rep's transaction: written with the rest of the batch.
	sr, err := r.apply(ctx, t, Batch{Paths: paths, Scan: scan}, rep.state)
	rep.add(sr)
	return err
}
