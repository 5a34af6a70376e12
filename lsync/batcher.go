package lsync

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Rename is a directory rename to replay on the target instead of
// re-uploading the tree.
type Rename struct{ From, To string }

// Batch is what the batcher hands to the targets: the paths to bring in
// line with the source (what to do is decided from the source's state at
// apply time, so stale event details cannot mislead), directory renames
// to replay first, or a request for a full rescan.
type Batch struct {
	Paths   []string
	Renames []Rename
	// Scan lists subtrees whose every source entry is to be checked: the
	// events under them cannot be trusted to name everything (a directory
	// created and renamed within the batch).
	Scan   []string
	Rescan bool
	Reason string    // why a rescan was requested
	Oldest time.Time // first event of the batch, for lag
	// ChangedSince is set on a rescan that replaced events (a queue
	// overflow): changes seen from then on are no longer listed, so the
	// full pass content-checks files modified since (see CatchUp).
	ChangedSince time.Time
}

// Empty reports whether there is nothing to do.
func (b Batch) Empty() bool {
	return len(b.Paths) == 0 && len(b.Renames) == 0 && len(b.Scan) == 0 && !b.Rescan
}

type pathState struct {
	created bool // the first event in this batch created the path
}

// batchState is the collapsing logic, kept apart from timing so that its
// rules can be tested directly.
type batchState struct {
	paths      map[string]*pathState
	renames    []Rename
	scan       map[string]bool
	renamedDir map[uint64]string // inode → old name, awaiting the new name
	// renamedPrev holds the old names the previous batch left unpaired:
	// a batch can end between a directory rename's two events.
	renamedPrev map[uint64]string
	rescan      bool
	reason      string
	oldest      time.Time
	dropped     time.Time // events dropped by an escalation were seen at or after this
	maxPaths    int
}

func newBatchState(maxPaths int) *batchState {
	return &batchState{paths: map[string]*pathState{}, scan: map[string]bool{}, renamedDir: map[uint64]string{}, maxPaths: maxPaths}
}

func (s *batchState) empty() bool {
	return len(s.paths) == 0 && len(s.renames) == 0 && len(s.scan) == 0 && !s.rescan && len(s.renamedDir) == 0
}

func (s *batchState) add(ev Event, now time.Time) {
	if s.oldest.IsZero() {
		s.oldest = now
	}
	if s.rescan {
		return // a rescan covers everything
	}
	ps := s.paths[ev.Path]
	if ps == nil {
		ps = &pathState{created: ev.Op == OpCreate}
		s.paths[ev.Path] = ps
	}
	if ev.IsDir && ev.Inode != 0 {
		switch ev.Op {
		case OpRename:
			s.renamedDir[ev.Inode] = ev.Path
		case OpCreate:
			from, ok := s.renamedDir[ev.Inode]
			carried := false
			if !ok {
				// The batch before ended between this rename's two
				// events: it took the old name as a path and deletes it
				// on the target (gone from the source), and the watcher
				// reports nothing below the new name (it keeps the
				// moved directory's watches). Without the old name, the
				// new one would be a bare mkdir: files under renamed
				// directories stayed missing (TestChurnConverges).
				from, ok = s.renamedPrev[ev.Inode]
				carried = ok
			}
			if ok && from != ev.Path {
				delete(s.renamedDir, ev.Inode)
				delete(s.renamedPrev, ev.Inode)
				followRename(s.paths, from, ev.Path, func(p *pathState) *pathState { c := *p; return &c })
				followRename(s.scan, from, ev.Path, keep)
				if s.scan[from] {
					s.scan[ev.Path] = true
				}
				if fs := s.paths[from]; fs != nil && !fs.created && !carried {
					s.renames = append(s.renames, Rename{From: from, To: ev.Path})
					// The new name exists on the target once the rename
					// is replayed, so a later rename of it is replayable.
					ps.created = false
				} else {
					// A directory born in this very batch does not exist
					// on the target yet (nor, renamed across the batch
					// edge, under its old name): its new name is
					// uploaded instead, all of it, whatever events said.
					s.scan[ev.Path] = true
				}
			}
		}
	}
	if s.maxPaths > 0 && len(s.paths) > s.maxPaths {
		s.escalate("more than " + strconv.Itoa(s.maxPaths) + " pending paths")
	}
}

// followRename lists, under the new name of a directory rename, the paths
// of m that lie under its old name (m maps path → what is known of it).
// The rename is replayed on the target before any path is applied, so a
// change under the old name (a write, a file moved in or out) would
// otherwise be looked for under a name that no longer exists on either
// side, and the target would keep the renamed directory's old content.
// The old names stay listed: they may exist on the target after all.
func keep[V any](v V) V { return v }

func followRename[V any](m map[string]V, from, to string, dup func(V) V) {
	prefix := from + "/"
	for p, v := range m {
		if strings.HasPrefix(p, prefix) {
			np := to + p[len(from):]
			if _, ok := m[np]; !ok {
				m[np] = dup(v)
			}
		}
	}
}

func (s *batchState) escalate(reason string) {
	if !s.rescan {
		s.dropped = s.oldest
	}
	s.rescan = true
	s.reason = reason
	s.paths = map[string]*pathState{}
	s.renames = nil
	s.scan = map[string]bool{}
	s.renamedDir = map[uint64]string{}
	s.renamedPrev = nil
}

func (s *batchState) take() Batch {
	b := Batch{Renames: s.renames, Rescan: s.rescan, Reason: s.reason, Oldest: s.oldest, ChangedSince: s.dropped}
	for p := range s.paths {
		// A path created and deleted within the batch is still listed:
		// applying it costs a Stat and sends nothing when the target does
		// not have it, but the target may have it after all (a peer just
		// delivered it, or a reconciliation pass copied it meanwhile),
		// and dropping it would leave it there for good.
		b.Paths = append(b.Paths, p)
	}
	sort.Strings(b.Paths)
	for p := range s.scan {
		b.Scan = append(b.Scan, p)
	}
	sort.Strings(b.Scan)
	s.paths = map[string]*pathState{}
	s.renames = nil
	s.scan = map[string]bool{}
	// Unpaired old names wait one more batch for their new names (and
	// no longer: a directory moved out of the tree has none).
	s.renamedPrev = nil
	if len(s.renamedDir) > 0 && !s.rescan {
		s.renamedPrev = s.renamedDir
	}
	s.renamedDir = map[uint64]string{}
	s.rescan = false
	s.reason = ""
	s.oldest = time.Time{}
	s.dropped = time.Time{}
	return b
}

// Batcher collects events and emits a batch once the tree has been quiet
// for delay, or at the latest maxDelay after the batch's first event.
// A single goroutine (Run) owns the state; producers talk to it through a
// channel, so that no lock is held while a burst is being collapsed.
type Batcher struct {
	delay, maxDelay time.Duration
	in              chan Event
	rescanReq       chan string
	state           *batchState
	emit            func(Batch)
}

// DefaultMaxPendingPaths bounds a batch; beyond it the batch escalates to a
// full rescan, which costs one tree walk instead of unbounded memory.
const DefaultMaxPendingPaths = 200000

// NewBatcher returns a batcher calling emit (which must not block for
// long) for every batch.
func NewBatcher(delay, maxDelay time.Duration, maxPaths int, emit func(Batch)) *Batcher {
	return &Batcher{
		delay: delay, maxDelay: maxDelay,
		in:        make(chan Event, 4096),
		rescanReq: make(chan string, 1),
		state:     newBatchState(maxPaths),
		emit:      emit,
	}
}

func (b *Batcher) event(ctx context.Context, ev Event) {
	select {
	case b.in <- ev:
	case <-ctx.Done():
	}
}

func (b *Batcher) rescan(ctx context.Context, reason string) {
	select {
	case b.rescanReq <- reason:
	case <-ctx.Done():
	default: // one pending rescan request is enough
	}
}

// Run owns the batching state until ctx is done.
func (b *Batcher) Run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var quiet, hard time.Time
	arm := func(now time.Time) {
		if hard.IsZero() {
			hard = now.Add(b.maxDelay)
		}
		quiet = now.Add(b.delay)
		due := quiet
		if hard.Before(due) {
			due = hard
		}
		timer.Reset(time.Until(due))
	}
	flush := func() {
		hard, quiet = time.Time{}, time.Time{}
		if b.state.empty() {
			return
		}
		if batch := b.state.take(); !batch.Empty() {
			b.emit(batch)
		}
	}
	for {
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case ev := <-b.in:
			now := time.Now()
			b.state.add(ev, now)
			arm(now)
		case reason := <-b.rescanReq:
			now := time.Now()
			if b.state.oldest.IsZero() {
				b.state.oldest = now
			}
			b.state.escalate(reason)
			arm(now)
		case <-timer.C:
			flush()
		}
	}
}
