package lsync

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DirLister is implemented by targets that list one directory at a time
// (one round trip): the streaming full pass uses it.
type DirLister interface {
	// ReadDir returns the entries of rel ("" for the root), sorted by
	// name, paths relative to the root; a rel that is missing or not a
	// directory yields an error matching fs.ErrNotExist or ENOTDIR.
	ReadDir(ctx context.Context, rel string) ([]Entry, error)
}

// canStream reports whether a full pass can compare directory by
// directory (streamPass): one-way, the whole tree, a target that lists
// one directory at a time. Two-way passes keep the whole-tree comparison
// (their merge reads the target's state of every path).
func (r *Reconciler) canStream(t Target, p pass) bool {
	_, ok := t.(DirLister)
	return ok && !r.TwoWay && p.sub == ""
}

// streamPass is a full pass that compares and pushes one directory at a
// time: the source is walked directory by directory, each directory's
// target listing is read (one round trip; none for a directory the pass
// just created, or that the parent's listing lacked), the two are merged
// by name, and what differs is pushed at once, before the walk goes
// deeper. Memory is a few directories' listings, whatever the tree's
// size: the whole-tree listings and the list of operations of the
// classic pass held a 100k-file tree several times over.
//
// Two things wait for the end of the walk: removals, because the
// mass-deletion guard must see them all before any goes, and the mtimes
// of directories that lose entries to them.
func (r *Reconciler) streamPass(ctx context.Context, t Target, p pass) (*Report, error) {
	start := time.Now()
	rep := &Report{Target: r.Target}
	if r.State != nil && !p.dry {
		rep.state = r.newStateTx()
		defer r.commit(rep)
		// Until this pass ends in sync, the state is not to be trusted:
		// a crash halfway must not leave a complete mark behind.
		r.stateComplete(false)
	}
	if err := r.Source.checkRoot(); err != nil {
		return rep, err
	}
	dl := t.(DirLister)
	var (
		mu       sync.Mutex // guards everything below and rep
		removals []op
		// absent holds the directories the pass knows are not on the
		// target (created by it, or missing in their parent's
		// listing): their listing is skipped.
		absent = map[string]bool{}
		// dirTime holds directories whose mtime must be set once their
		// own entries are done (in their own visit).
		dirTime    = map[string]Entry{}
		srcEntries int
		dstEntries int
	)
	// The guard's base for live batches: what the target holds, counted
	// as it is listed (uploads of missing paths add to it as they land).
	r.targetEntries.Store(0)
	progress := r.startProgress(ctx, p.dry)
	defer progress.stop()
	visit := func(dir string, entries []Entry, listErr error) ([]string, error) {
		if listErr != nil {
			// Its contents are unknown: nothing below it is compared,
			// and nothing deleted on the strength of its absence.
			mu.Lock()
			rep.Errors = append(rep.Errors, &PathError{Path: dir, Op: "list source directory", Err: listErr})
			mu.Unlock()
			return nil, nil
		}
		progress.compared(len(entries))
		mu.Lock()
		known := absent[dir]
		delete(absent, dir)
		srcEntries += len(entries)
		mu.Unlock()
		var dst []Entry
		if !known {
			l, err := dl.ReadDir(ctx, dir)
			switch {
			case err == nil:
				dst = l
			case errors.Is(err, ErrDisconnected) || ctx.Err() != nil:
				return nil, err
			case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
				// Gone since the parent was listed: nothing there.
			default:
				mu.Lock()
				rep.Errors = append(rep.Errors, &PathError{Path: dir, Op: "list target directory", Err: err})
				mu.Unlock()
				return nil, nil // the target's copy is unknown: leave it
			}
		}
		var ops []op
		there := make(map[string]Entry, len(dst))
		for _, d := range dst {
			if strings.HasPrefix(path.Base(d.Path), TempPrefix) {
				ops = append(ops, op{kind: opRemove, path: d.Path, reason: "leftover temp file"})
				continue
			}
			if r.Source.excluder.Excluded(d.Path, d.Mode.IsDir()) {
				continue // not ours on either side
			}
			there[path.Base(d.Path)] = d
		}
		var descend []string
		var needTime []Entry
		var pmu sync.Mutex
		planOne := func(i int) error {
			s := entries[i]
			pmu.Lock()
			var d *Entry
			if e, ok := there[path.Base(s.Path)]; ok {
				d = &e
			}
			pmu.Unlock()
			o, need, err := r.plan(ctx, t, &s, d, false, p.suspect != nil && p.suspect(s), rep.state)
			pmu.Lock()
			defer pmu.Unlock()
			switch {
			case errors.Is(err, ErrDisconnected):
				return err
			case err != nil:
				mu.Lock()
				rep.Errors = append(rep.Errors, &PathError{Path: s.Path, Op: "compare", Err: err})
				mu.Unlock()
			case need:
				if ops == nil {
					ops = make([]op, 0, len(entries)) // an op is large: grow it once
				}
				ops = append(ops, o)
				if p.listed != nil && !p.listed(s.Path) {
					mu.Lock()
					rep.unlisted(s.Path)
					mu.Unlock()
				}
			}
			if s.Mode.IsDir() {
				descend = append(descend, s.Path)
				if d == nil || !d.Mode.IsDir() {
					mu.Lock()
					absent[s.Path] = true
					mu.Unlock()
				}
				if d == nil || !d.Mode.IsDir() || !sameMTime(s.ModTime, d.ModTime) {
					needTime = append(needTime, s)
				}
			}
			return nil
		}
		var err error
		if known {
			// Nothing there: planning is local work (no listing to
			// compare with, no round trip), done in this goroutine
			// rather than in one per entry.
			for i := range entries {
				if err = planOne(i); err != nil {
					break
				}
			}
		} else {
			err = parallel(ctx, r.Concurrency, len(entries), planOne)
		}
		if err != nil {
			return nil, err
		}
		for _, s := range entries {
			delete(there, path.Base(s.Path))
		}
		r.targetEntries.Add(int64(len(dst)))
		mu.Lock()
		dstEntries += len(dst)
		for _, e := range needTime {
			dirTime[e.Path] = e
		}
		own, timed := dirTime[dir]
		delete(dirTime, dir)
		if r.Delete {
			for _, x := range there {
				removals = append(removals, op{kind: opRemove, path: x.Path, src: x, reason: reasonNotInSource})
				if p.listed != nil && !p.listed(x.Path) {
					rep.unlisted(x.Path)
				}
			}
		}
		mu.Unlock()
		sort.Strings(descend) // parallel planning appended them in any order
		if p.dry {
			mu.Lock()
			for _, o := range ops {
				rep.count(o, o.src.Size)
				if rep.wantsNote() {
					rep.note(o.String())
				}
			}
			mu.Unlock()
			return descend, nil
		}
		var dirTimes []Entry
		if timed {
			dirTimes = append(dirTimes, own)
		}
		if len(ops) == 0 && len(dirTimes) == 0 {
			return descend, nil
		}
		sub := &Report{Target: r.Target, state: rep.state, inPass: true}
		err = r.execute(ctx, t, ops, dirTimes, sub, false)
		progress.add(sub)
		mu.Lock()
		rep.add(sub)
		mu.Unlock()
		if err != nil {
			return nil, err
		}
		return descend, nil
	}
	// Each directory's pushes wait for their replies before the walker
	// moves on: many directories in flight keep the connection busy.
	if err := r.Source.walkDirs(ctx, max(walkDirWorkers, r.Concurrency/2), visit); err != nil {
		if errors.Is(err, ErrDisconnected) || ctx.Err() != nil {
			return rep, err
		}
		return rep, fmt.Errorf("walk %s: %w", r.Source.Dir, err)
	}
	rep.Entries = max(srcEntries, dstEntries)
	// Removals last, all of them past the guard first. A removed
	// directory counts with what it holds, which the pass did not list:
	// the guard's figures are those of the whole-tree comparison.
	doomed := 0
	if len(removals) > 0 {
		sort.Slice(removals, func(i, j int) bool { return removals[i].path < removals[j].path })
		for _, o := range removals {
			doomed++
			if o.src.Mode.IsDir() {
				below := 0
				err := t.Walk(ctx, o.path, func(Entry) error {
					below++
					return nil
				})
				if errors.Is(err, ErrDisconnected) {
					return rep, err
				}
				doomed += below
				dstEntries += below
				r.targetEntries.Add(int64(below))
			}
		}
		if hold := r.deletionHold(doomed, dstEntries, srcEntries == 0); hold != "" {
			removals = r.holdRemovals(removals, doomed, hold, rep)
		}
	}
	if p.dry {
		for _, o := range removals {
			rep.count(o, 0)
			if rep.wantsNote() {
				rep.note(o.String())
			}
		}
	} else if len(removals) > 0 {
		sub := &Report{Target: r.Target, state: rep.state, inPass: true}
		err := r.execute(ctx, t, removals, nil, sub, false)
		progress.add(sub)
		rep.add(sub)
		if err != nil {
			return rep, err
		}
	}
	rep.Duration = time.Since(start)
	if !p.dry && r.State != nil {
		r.stateComplete(rep.InSync()) // see reconcile
	}
	return rep, nil
}
