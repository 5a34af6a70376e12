package lsync

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

// PathError is a failure about one path; it is retried.
type PathError struct {
	Path string
	Op   string
	Err  error
}

func (e *PathError) Error() string { return e.Op + " " + e.Path + ": " + e.Err.Error() }
func (e *PathError) Unwrap() error { return e.Err }

// Report summarises a reconciliation pass or a batch for one target.
type Report struct {
	Target    string
	Files     int   // files uploaded
	Bytes     int64 // bytes uploaded
	Dirs      int   // directories created
	Links     int   // symlinks written
	Attrs     int   // modes or mtimes fixed
	Deleted   int
	Renamed   int // directory renames replayed
	Conflicts int // two-way: entries left alone because the peer's copy wins
	Kept      int // two-way: entries only on the target, left for the peer to push
	// Changes lists the actions (or, in a dry run, the differences),
	// capped at maxReportedChanges.
	Changes []string
	Errors  []*PathError
	// Refused lists operations the target refused because they would
	// leave its root or go through a symlink there (ErrRefused). They are
	// not retried before the next full pass: the peer's tree must change
	// first.
	Refused []*PathError
	Retry   []string // paths that changed while being copied
	// Held counts the entries the mass-deletion guard kept from being
	// deleted (HeldReason says why; HeldPaths are the removals not done).
	Held       int
	HeldReason string
	HeldPaths  []string
	// Unlisted counts the paths a full pass changed although the pass was
	// not told they had changed: on a periodic verification, drift that
	// the live sync missed. UnlistedPaths names the first of them.
	Unlisted      int
	UnlistedPaths []string
	// state collects what the pass learnt about identical paths; written
	// to the Reconciler's State at the end.
	state *stateTx
	// inPass marks the pieces of a full pass applied piecewise (a
	// streamed pass): what they create is not live work.
	inPass   bool
	Duration time.Duration
	// Entries is the size of the larger tree listing a full pass built
	// (0 for a live batch); the job uses it to return memory afterwards.
	Entries int
	// Trusted marks a pass that compared the source with the sync state
	// instead of listing the target (see TrustedCatchUp); Compared is the
	// number of source entries it compared.
	Trusted  bool
	Compared int
	// Watched marks a verification made by watching the source during
	// the pass (see passWatch): nothing changed, no second walk.
	Watched bool
}

const maxReportedChanges = 100

// Actions is the number of changes made (or needed, in a dry run).
func (r *Report) Actions() int { return r.Files + r.Dirs + r.Links + r.Attrs + r.Deleted + r.Renamed }

// InSync reports whether the target matched (dry run) or now matches.
func (r *Report) InSync() bool {
	return len(r.Errors) == 0 && len(r.Retry) == 0 && len(r.Refused) == 0 && r.Held == 0
}

// Matches reports, for a dry run, that nothing differs.
func (r *Report) Matches() bool {
	return r.InSync() && r.Actions() == 0 && r.Kept == 0 && r.Conflicts == 0
}

// wantsNote reports whether note would keep another change, so that
// callers can skip formatting one (a 100k-file initial pass would
// otherwise build 100k strings only to drop them).
func (r *Report) wantsNote() bool { return len(r.Changes) <= maxReportedChanges }

func (r *Report) unlisted(p string) {
	r.Unlisted++
	if len(r.UnlistedPaths) < 10 {
		r.UnlistedPaths = append(r.UnlistedPaths, p)
	}
}

func (r *Report) note(s string) {
	if len(r.Changes) < maxReportedChanges {
		r.Changes = append(r.Changes, s)
	} else if len(r.Changes) == maxReportedChanges {
		r.Changes = append(r.Changes, "...")
	}
}

// Reconciler brings one target in line with the source.
type Reconciler struct {
	Source   *Source
	Target   string // name, for logs and reports
	Delete   bool
	Checksum bool
	// TwoWay enables the conflict rule for two nodes pushing to each
	// other: the newer mtime wins, a tie goes to the node whose name sorts
	// first; a full pass never deletes (a file only on the peer is the
	// peer's to push), only live deletions propagate.
	TwoWay      bool
	Node        string
	Concurrency int
	// State is the merge base of two-way sync and a record of what was
	// last identical (nil: none kept, the classic rules apply).
	State StateStore
	// Owner carries the owner and group (rsync -a as root): by name
	// (OwnerNames, numeric where a name is unknown), by number
	// (OwnerNumeric) or not at all (OwnerOff, and ""); after every
	// write, and as a chown where only they differ. A peer user that may
	// not chown is reported once, and the rest goes on without ownership.
	Owner    OwnerMode
	chownOff atomic.Bool
	// OwnerNames names the source's ids (nil: this host's user
	// database, cached).
	OwnerNames OwnerNamer
	// Delivered tells the paths a two-way peer delivered here and that
	// were not changed here since (nil: none known).
	Delivered func(rel string) bool
	// MaxDelete guards against mass deletion (see deletionHold);
	// AllowMassDelete is the operator's confirmation for one run.
	MaxDelete       MaxDelete
	AllowMassDelete bool
	// targetEntries is the size of the target's tree at the last full
	// pass, the base of the guard's percentage for live batches.
	targetEntries atomic.Int64
	// recentDeletes remembers the live deletions applied lately: an
	// `rm -rf` of a big tree arrives in many batches, and the guard must
	// see the storm, not each batch alone.
	recentDeletes deleteWindow
	Logger        *slog.Logger // carries the target name (the job adds it)
	// VerifyRate bounds the periodic verification's listing of the
	// target, in entries per second (0: unbounded).
	VerifyRate int
	// ProgressEvery logs progress of large passes; 0 means 10s.
	ProgressEvery time.Duration
	// Progress is the running full pass's progress (status, metrics,
	// the progress bar of `sync --once`).
	Progress Progress
	// OnTransfer is called after every file landed (metrics).
	OnTransfer func(bytes int64)
	// OnRefused is called for every operation the target refused
	// (ErrRefused), logged or not (metrics).
	OnRefused func()

	refusedMu sync.Mutex
	// refusedLogged holds the paths whose refusal was logged, so that a
	// hostile tree retried by every full pass logs each path once.
	refusedLogged map[string]bool

	// trusted is set once the state is complete enough for trusted
	// passes (see canTrust).
	trusted atomic.Bool
	// countAhead is the source count CountAhead started for the next
	// full pass's estimate (nil: none).
	countAhead atomic.Pointer[entryCount]

	landedMu sync.Mutex
	// landed maps a path to the source version last landed or verified
	// on the target, in two generations: when the young one is full it
	// becomes the old one, so the most recent landings always survive.
	landed, landedOld map[string]landedVersion
}

// Reconcile compares the whole trees and, unless dry, pushes what differs.
// The returned error is non-nil only when the session broke (it then
// wraps ErrDisconnected) or the walk itself failed; per-path failures are
// in the report.
//
// Files are compared by size and mtime; over SFTP the target's mtime has
// whole seconds only, so a same-size rewrite within the second of the
// target's copy is invisible to this pass (use `checksum: true`, or rely
// on the live events, which CatchUp carries across disconnects).
func (r *Reconciler) Reconcile(ctx context.Context, t Target, dry bool) (*Report, error) {
	return r.reconcile(ctx, t, pass{dry: dry})
}

// CatchUp is the full pass of a rescan batch (after a reconnect, a queue
// overflow or for verification). The batch's paths had events that were
// not applied yet, and files changed at or after b.ChangedSince (minus
// SuspectSlack) may have lost theirs: for both, when size and mtime match
// only at whole-second granularity, the content decides.
func (r *Reconciler) CatchUp(ctx context.Context, t Target, b Batch) (*Report, error) {
	pending := make(map[string]bool, len(b.Paths))
	for _, p := range b.Paths {
		pending[p] = true
	}
	since := b.ChangedSince
	if !since.IsZero() {
		since = since.Add(-SuspectSlack)
	}
	rate := 0
	if b.Reason == verifyReason {
		// In the background of a running sync: the peer is read at a
		// bounded rate.
		rate = r.VerifyRate
	}
	return r.reconcile(ctx, t, pass{
		pace: rate,
		suspect: func(e Entry) bool {
			return pending[e.Path] || !since.IsZero() && !e.ModTime.Before(since)
		},
		listed: func(p string) bool {
			for ; p != ""; p = parentOf(p) {
				if pending[p] {
					return true
				}
			}
			return false
		},
	})
}

// pass tunes a comparison of the trees.
type pass struct {
	sub string // compare below this directory only ("" for the whole trees)
	dry bool   // report, change nothing
	// suspect tells which files to content-check when size and mtime
	// match only at whole-second granularity.
	suspect func(Entry) bool
	// listed tells which paths were known to have changed; changes to
	// others are reported in Report.Unlisted.
	listed func(string) bool
	// pace bounds the target's listing, in entries per second (0: none).
	pace int
	// state, when set, collects what the pass learns for its caller (a
	// batch comparing subtrees), which writes it; otherwise the pass
	// writes its own at its end.
	state *stateTx
}

// reconcile compares the trees below p.sub ("" for the whole trees; sub
// itself is left to the caller) and, unless p.dry, pushes what differs.
func (r *Reconciler) reconcile(ctx context.Context, t Target, p pass) (_ *Report, err error) {
	if r.canStream(t, p) {
		return r.streamPass(ctx, t, p)
	}
	sub, dry, suspect := p.sub, p.dry, p.suspect
	start := time.Now()
	rep := &Report{Target: r.Target}
	if r.State != nil && !dry && p.state != nil {
		rep.state = p.state
	} else if r.State != nil && !dry {
		rep.state = r.newStateTx()
		defer func() {
			r.commit(rep)
			if sub == "" && err == nil && len(rep.Errors) == 0 {
				// Everything was compared and recorded: no batch of
				// the past is left half-done.
				if ferr := r.State.ForgetIntents(); ferr != nil {
					r.Logger.Warn("sync state: old intents not cleared", "err", ferr)
				}
			}
		}()
	}
	if err := r.Source.checkRoot(); err != nil {
		return rep, err
	}
	dst := map[string]Entry{}
	var temps []string
	// Directories either side could not list: their contents are
	// unknown, so nothing below them is deleted or assumed missing.
	var unlistedMu sync.Mutex
	srcUnlisted, dstUnlisted := map[string]bool{}, map[string]bool{}
	err = t.Walk(ctx, sub, paced(ctx, p.pace, func(e Entry) error {
		if strings.HasPrefix(path.Base(e.Path), TempPrefix) {
			temps = append(temps, e.Path)
			return nil
		}
		if r.Source.excluder.Excluded(e.Path, e.Mode.IsDir()) {
			// Not ours on either side (lost+found on a mounted volume):
			// not even listed.
			if e.Mode.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if e.ListErr != nil {
			dstUnlisted[e.Path] = true
			rep.Errors = append(rep.Errors, &PathError{Path: e.Path, Op: "list target directory", Err: e.ListErr})
		}
		dst[e.Path] = e
		return nil
	}))
	if err != nil {
		return rep, fmt.Errorf("walk target %s: %w", r.Target, err)
	}
	var ops []op
	for _, tmp := range temps {
		ops = append(ops, op{kind: opRemove, path: tmp, reason: "leftover temp file"})
	}
	// The source is planned as it is walked, never listed whole: a pass
	// over a big tree then holds one listing (the target's) instead of two.
	var mu sync.Mutex // guards dst, ops, dirTimes and rep
	var dirTimes []Entry
	dstEntries := len(dst)
	planOne := func(ctx context.Context, s Entry) error {
		if s.ListErr != nil {
			unlistedMu.Lock()
			srcUnlisted[s.Path] = true
			unlistedMu.Unlock()
			mu.Lock()
			rep.Errors = append(rep.Errors, &PathError{Path: s.Path, Op: "list source directory", Err: s.ListErr})
			mu.Unlock()
		}
		if underAny(s.Path, dstUnlisted) {
			return nil // the target's copy of its directory is unknown
		}
		mu.Lock()
		var d *Entry
		if e, ok := dst[s.Path]; ok {
			d = &e
			// Struck out as it is seen: what is left of dst at the end
			// is what the source lacks.
			delete(dst, s.Path)
		}
		mu.Unlock()
		o, need, err := r.plan(ctx, t, &s, d, false, suspect != nil && suspect(s), rep.state)
		mu.Lock()
		defer mu.Unlock()
		if errors.Is(err, errConflict) {
			rep.Conflicts++
			return nil
		}
		if err != nil {
			if errors.Is(err, ErrDisconnected) {
				return err
			}
			rep.Errors = append(rep.Errors, &PathError{Path: s.Path, Op: "compare", Err: err})
			return nil
		}
		if need {
			ops = append(ops, o)
			if p.listed != nil && !p.listed(s.Path) {
				rep.unlisted(s.Path)
			}
		}
		if s.Mode.IsDir() && (d == nil || !d.Mode.IsDir() || !sameMTime(s.ModTime, d.ModTime)) {
			if d == nil || !d.Mode.IsDir() || !r.TwoWay || s.ModTime.After(d.ModTime) {
				dirTimes = append(dirTimes, s)
			}
		}
		return nil
	}
	g, gctx := errgroup.WithContext(ctx)
	feed := make(chan Entry, 256)
	for range max(r.Concurrency, 1) {
		g.Go(func() error {
			for s := range feed {
				if err := gctx.Err(); err != nil {
					return err
				}
				if err := planOne(gctx, s); err != nil {
					return err
				}
			}
			return nil
		})
	}
	srcEntries := 0
	walkErr := r.Source.Walk(gctx, sub, func(e Entry) error {
		if e.Path == sub {
			return nil // not a directory: the caller's to plan
		}
		srcEntries++
		select {
		case feed <- e:
			return nil
		case <-gctx.Done():
			return gctx.Err()
		}
	})
	close(feed)
	// A planner's failure (a lost session) cancels the walk: report it
	// rather than the cancellation it caused.
	if err := g.Wait(); err != nil {
		return rep, err
	}
	if walkErr != nil {
		return rep, fmt.Errorf("walk source %s: %w", r.Source.Dir, walkErr)
	}
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	rep.Entries = max(srcEntries, dstEntries)
	// Extraneous target entries, topmost only (RemoveAll takes the rest).
	var extra []string
	for p := range dst {
		extra = append(extra, p)
	}
	sort.Strings(extra)
	var lastRemoved string
	removing, doomed := false, 0 // doomed: entries the removals take with them
	for _, x := range extra {
		if lastRemoved != "" && strings.HasPrefix(x, lastRemoved+"/") {
			if removing {
				doomed++
			}
			continue
		}
		removing = false
		if r.Source.excluder.Excluded(x, dst[x].Mode.IsDir()) {
			continue // excluded on the target too: never ours to delete
		}
		if underAny(x, srcUnlisted) {
			continue // the source's copy is unknown: never delete on a guess
		}
		if !r.Delete {
			continue
		}
		merged := false
		if r.TwoWay {
			d := dst[x]
			switch r.merge(x, nil, &d) {
			case vPush:
				// Deleted here since both sides last held it, unchanged
				// there: the deletion (made during an outage, say)
				// propagates.
				merged = true
			default:
				rep.Kept++
				rep.note("only on target " + x + " (two_way: left for the peer to push)")
				lastRemoved = x
				continue
			}
		}
		ops = append(ops, op{kind: opRemove, path: x, reason: reasonNotInSource, merged: merged})
		if p.listed != nil && !p.listed(x) {
			rep.unlisted(x)
		}
		lastRemoved, removing = x, true
		doomed++
	}
	if sub == "" {
		r.targetEntries.Store(int64(dstEntries))
	}
	total := dstEntries
	if sub != "" {
		total = int(r.targetEntries.Load()) // the guard is about the whole tree
	}
	if hold := r.deletionHold(doomed, total, sub == "" && srcEntries == 0); hold != "" {
		ops = r.holdRemovals(ops, doomed, hold, rep)
	}
	sort.Slice(dirTimes, func(i, j int) bool { return dirTimes[i].Path < dirTimes[j].Path })
	if dry {
		for _, o := range ops {
			rep.count(o, o.src.Size)
			if rep.wantsNote() {
				rep.note(o.String())
			}
		}
		rep.Duration = time.Since(start)
		return rep, nil
	}
	dst = nil
	err = r.execute(ctx, t, ops, dirTimes, rep, true)
	rep.Duration = time.Since(start)
	if sub == "" && r.State != nil {
		// In sync, every path of both trees is now recorded as it is on
		// both: later passes may trust the state (see canTrust).
		r.stateComplete(err == nil && rep.InSync())
	}
	return rep, err
}

// underAny reports whether p lies strictly below one of dirs.
func underAny(p string, dirs map[string]bool) bool {
	if len(dirs) == 0 {
		return false
	}
	for d := parentOf(p); d != ""; d = parentOf(d) {
		if dirs[d] {
			return true
		}
	}
	return false
}

// moveState moves the merge base with a rename both sides have made:
// they now hold under the new name what they held under the old one.
func (r *Reconciler) moveState(rn Rename) {
	if r.State == nil {
		return
	}
	if err := r.State.Move(rn.From, rn.To); err != nil {
		r.Logger.Warn("sync state not updated for a rename; the new names are compared without a base", "from", rn.From, "to", rn.To, "err", err)
	}
}

// errNotReplayed stands for a rename that was not replayed on a two-way
// peer (see replayableRename).
var errNotReplayed = errors.New("not replayed: the peer's names hold other versions")

// reasonNotInSource marks the removals the mass-deletion guard counts
// (leftover temp files are ours and always go).
const reasonNotInSource = "not in source"

// deletionHold applies the mass-deletion guard to n removals.
func (r *Reconciler) deletionHold(n, total int, sourceEmpty bool) string {
	if r.AllowMassDelete {
		return "" // the operator confirmed, for this run
	}
	return deletionHold(r.MaxDelete, n, total, sourceEmpty, massDeleteFloor)
}

// holdRemovals takes the guarded removals out of ops and records them in
// rep; everything else (uploads, links, modes) still goes ahead.
func (r *Reconciler) holdRemovals(ops []op, n int, why string, rep *Report) []op {
	kept := ops[:0]
	for _, o := range ops {
		if o.kind == opRemove && o.reason == reasonNotInSource {
			rep.HeldPaths = append(rep.HeldPaths, o.path)
			continue
		}
		kept = append(kept, o)
	}
	rep.Held, rep.HeldReason = n, why
	return kept
}

func (rep *Report) count(o op, size int64) {
	switch o.kind {
	case opUpload:
		rep.Files++
		rep.Bytes += size
	case opMkdir:
		rep.Dirs++
	case opSymlink:
		rep.Links++
	case opChmod, opChtimes, opChown:
		rep.Attrs++
	case opRemove:
		rep.Deleted++
	}
}

// Apply brings the paths of a live batch in line, after replaying its
// directory renames.
func (r *Reconciler) Apply(ctx context.Context, t Target, b Batch) (*Report, error) {
	return r.apply(ctx, t, b, nil)
}

// apply is Apply; with tx set, what the batch learns goes to tx, for the
// caller to write (a batch applying what its renamed subtrees need).
func (r *Reconciler) apply(ctx context.Context, t Target, b Batch, tx *stateTx) (*Report, error) {
	start := time.Now()
	rep := &Report{Target: r.Target}
	if r.State != nil && tx != nil {
		rep.state = tx
	} else if r.State != nil {
		rep.state = r.newStateTx()
		defer r.commit(rep)
	}
	if err := r.Source.checkRoot(); err != nil {
		return rep, err
	}
	if r.Logger.Enabled(ctx, slog.LevelDebug) {
		r.Logger.Debug("applying batch", "paths", b.Paths, "renames", fmt.Sprint(b.Renames), "scan", b.Scan)
	}
	paths := map[string]bool{}
	for _, p := range b.Paths {
		paths[p] = true
	}
	// Old names of renames the target refused: deleted (where the source
	// lacks them) only after their new names landed, so that the content
	// is never missing from both names at once. Two-way full passes never
	// delete, so the deletion must happen here or not at all.
	oldNames := map[string]bool{}
	subtrees := append([]string(nil), b.Scan...)
	var renamed []string // renamed on the target, their records moved in the state
	for _, rn := range b.Renames {
		if r.Source.excluder.Excluded(rn.From, true) || r.Source.excluder.Excluded(rn.To, true) {
			continue // the per-path checks handle both names
		}
		how, err := r.replayableRename(ctx, t, rn)
		if err != nil {
			return rep, err
		}
		switch how {
		case replayRename:
			// Intents are the two-way merge's crash-recovery hint (see
			// intend): one-way, nothing reads them.
			if r.TwoWay && r.State != nil {
				if ierr := r.State.IntendMove(rn.From, rn.To); ierr != nil {
					r.Logger.Warn("sync state: rename intent not recorded; a crash during it leaves the new names without a base", "err", ierr)
				}
			}
			err = t.Rename(ctx, rn.From, rn.To)
		case replayDone:
			r.moveState(rn)
			err = errNotReplayed // the names are compared all the same
		default:
			err = errNotReplayed
		}
		if errors.Is(err, ErrDisconnected) {
			return rep, err
		}
		if err != nil {
			// The target did not have the old name (it was behind):
			// upload the new subtree instead.
			r.Logger.Debug("rename on target failed; uploading instead", "from", rn.From, "to", rn.To, "err", err)
		} else {
			rep.Renamed++
			rep.note("rename " + rn.From + " -> " + rn.To)
			r.moveLanded(rn.From, rn.To)
		}
		// One move of the state's records: when the state is trusted
		// (one-way), it is written with the batch's records, after the
		// renames it follows (see followRenameInState); moveState
		// otherwise.
		if err == nil && r.followRenameInState(rep.state, rn.From, rn.To) {
			// The state vouches for what the rename moved: the subtree
			// is compared with it, after the paths (see below).
			renamed = append(renamed, rn.To)
			paths[rn.To] = true
			continue
		}
		if err == nil {
			r.moveState(rn)
		}
		paths[rn.To] = true
		if err != nil {
			paths[rn.From] = true
			oldNames[rn.From] = true
		}
		// Compare the new subtree either way, after the paths: what the
		// rename moved on the target is what the target had under the
		// old name, and a batch applied before this one may have found
		// entries of it missing in the source (already moved there) and
		// deleted them on the target.
		subtrees = append(subtrees, rn.To)
	}
	for _, sub := range b.Scan {
		paths[sub] = true
	}

	list := make([]string, 0, len(paths))
	for p := range paths {
		list = append(list, p)
	}
	sort.Strings(list)
	var mu sync.Mutex
	var ops []op
	dirs := map[string]bool{}
	err := parallel(ctx, r.Concurrency, len(list), func(i int) error {
		rel := list[i]
		src, err := r.Source.Lstat(rel)
		if err != nil {
			mu.Lock()
			rep.Errors = append(rep.Errors, &PathError{Path: rel, Op: "stat source", Err: err})
			mu.Unlock()
			return nil
		}
		var dst *Entry
		d, err := t.Stat(ctx, rel)
		switch {
		case err == nil:
			dst = &d
		case errors.Is(err, ErrDisconnected):
			return err
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		default:
			mu.Lock()
			rep.Errors = append(rep.Errors, &PathError{Path: rel, Op: "stat target", Err: err})
			mu.Unlock()
			return nil
		}
		if src == nil && r.Source.excluder.Excluded(rel, dst != nil && dst.Mode.IsDir()) {
			return nil
		}
		o, need, err := r.plan(ctx, t, src, dst, true, true, rep.state)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case errors.Is(err, errConflict):
			rep.Conflicts++
		case errors.Is(err, ErrDisconnected):
			return err
		case err != nil:
			rep.Errors = append(rep.Errors, &PathError{Path: rel, Op: "compare", Err: err})
		case need:
			ops = append(ops, o)
		}
		if src != nil && src.Mode.IsDir() && dst != nil && dst.Mode.IsDir() && !sameMTime(src.ModTime, dst.ModTime) &&
			(!r.TwoWay || src.ModTime.After(dst.ModTime)) {
			dirs[rel] = true
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	var dirTimes []Entry
	for d := range dirs {
		if e, _ := r.Source.Lstat(d); e != nil && e.Mode.IsDir() {
			dirTimes = append(dirTimes, *e)
		}
	}
	if ops, err = r.guardBatch(ctx, t, ops, rep); err != nil {
		return rep, err
	}
	var late []op
	if len(oldNames) > 0 {
		now := ops[:0]
		for _, o := range ops {
			if o.kind == opRemove && (oldNames[o.path] || coveredBy(o.path, oldNames)) {
				late = append(late, o)
			} else {
				now = append(now, o)
			}
		}
		ops = now
	}
	err = r.execute(ctx, t, ops, dirTimes, rep, false)
	if err == nil {
		err = r.reconcileSubtrees(ctx, t, subtrees, paths, rep)
	}

	if err == nil && len(renamed) > 0 {
		// After the paths, like the listed subtrees: the state then
		// holds what this batch did below the new names. The records
		// of this batch (the renames first) are written first, so that
		// the comparison reads them.
		if r.commit(rep) {
			err = r.reconcileRenamed(ctx, t, renamed, rep)
		} else {
			// The state did not follow the renames: it cannot vouch
			// for the new subtrees, which are listed instead.
			r.stateComplete(false)
			err = r.reconcileSubtrees(ctx, t, renamed, paths, rep)
		}
	}
	if err == nil && len(late) > 0 {
		err = r.execute(ctx, t, late, nil, rep, false)
	}
	rep.Duration = time.Since(start)
	return rep, err
}

// errEnough stops a count that has reached what it needed to know.
var errEnough = errors.New("enough")

// guardBatch applies the mass-deletion guard to a live batch's removals.
// A removed directory counts with what it holds on the target, counted
// only as far as the guard's limit.
func (r *Reconciler) guardBatch(ctx context.Context, t Target, ops []op, rep *Report) ([]op, error) {
	if r.AllowMassDelete {
		return ops, nil
	}
	var removals []op
	for _, o := range ops {
		if o.kind == opRemove && o.reason == reasonNotInSource {
			removals = append(removals, o)
		}
	}
	if len(removals) == 0 {
		return ops, nil
	}
	empty, err := r.Source.Empty()
	if err != nil {
		return ops, err // missing now: hold everything, retry
	}
	if r.MaxDelete.Off && !empty {
		return ops, nil
	}
	// Deletions applied within the window count again, against the tree
	// as it was before them.
	now := time.Now()
	recent := r.recentDeletes.sum(now)
	total := int(r.targetEntries.Load()) + recent
	enough := massDeleteFloorLive + 1 + r.MaxDelete.Count + r.MaxDelete.Percent*max(total, 1)/100
	// A batch lists a deleted directory and what was in it: count each
	// entry once, through its topmost removal.
	sort.Slice(removals, func(i, j int) bool { return removals[i].path < removals[j].path })
	n := recent
	var top string
	var dirs []string
	for _, o := range removals {
		if top != "" && strings.HasPrefix(o.path, top+"/") {
			continue
		}
		top = o.path
		n++
		if !o.leaf {
			dirs = append(dirs, o.path)
		}
	}
	// What a removed directory holds on the target is listed; a file or
	// symlink holds nothing (under churn, most removals: a listing each,
	// one after the other, cost a round trip per deleted file). The
	// directories are listed side by side, since a listing is mostly
	// round trips, and only as far as the limit.
	var counted atomic.Int64
	counted.Store(int64(n))
	if n <= enough {
		err := parallel(ctx, min(r.Concurrency, 8), len(dirs), func(i int) error {
			err := t.Walk(ctx, dirs[i], func(Entry) error {
				if counted.Add(1) > int64(enough) {
					return errEnough
				}
				return nil
			})
			if errors.Is(err, ErrDisconnected) || errors.Is(err, errEnough) {
				return err
			}
			return nil
		})
		if errors.Is(err, ErrDisconnected) {
			return ops, err
		}
		if err != nil && !errors.Is(err, errEnough) {
			return ops, err
		}
	}
	n = int(counted.Load())
	if hold := deletionHold(r.MaxDelete, n, total, empty, massDeleteFloorLive); hold != "" {
		if recent > 0 {
			hold += fmt.Sprintf(" (%d of them applied in the last %s)", recent, liveDeleteWindow)
		}
		return r.holdRemovals(ops, n, hold, rep), nil
	}
	r.recentDeletes.add(now, n-recent)
	r.targetEntries.Add(-int64(min(n-recent, int(r.targetEntries.Load()))))
	return ops, nil
}

// reconcileSubtrees compares the trees below each of subs (the outermost
// ones; nested ones are covered) like a full pass does, and adds the
// outcome to rep. Entries listed in changed are content-checked when size
// and mtime cannot tell.
func (r *Reconciler) reconcileSubtrees(ctx context.Context, t Target, subs []string, changed map[string]bool, rep *Report) error {
	sort.Strings(subs)
	var outer []string
	for _, sub := range subs {
		if n := len(outer); n > 0 && (sub == outer[n-1] || strings.HasPrefix(sub, outer[n-1]+"/")) {
			continue
		}
		if !r.Source.excluder.Excluded(sub, true) {
			outer = append(outer, sub)
		}
	}
	// Disjoint subtrees: compared side by side, since each comparison is
	// mostly round trips (a listing per target directory).
	var mu sync.Mutex
	return parallel(ctx, min(r.Concurrency, 8), len(outer), func(i int) error {
		sr, err := r.reconcile(ctx, t, pass{sub: outer[i], suspect: func(e Entry) bool { return changed[e.Path] }, state: rep.state})
		mu.Lock()
		rep.add(sr)
		mu.Unlock()
		return err
	})
}

// add folds the counts of a sub-pass into rep.
func (rep *Report) add(o *Report) {
	rep.Files += o.Files
	rep.Bytes += o.Bytes
	rep.Dirs += o.Dirs
	rep.Links += o.Links
	rep.Attrs += o.Attrs
	rep.Deleted += o.Deleted
	rep.Renamed += o.Renamed
	rep.Kept += o.Kept
	rep.Conflicts += o.Conflicts
	rep.Errors = append(rep.Errors, o.Errors...)
	rep.Refused = append(rep.Refused, o.Refused...)
	rep.Retry = append(rep.Retry, o.Retry...)
	for _, c := range o.Changes {
		rep.note(c)
	}
}
