package lsync

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Progress is how far the running full pass of a target has got; the
// job's status, metrics and log lines and `sync --once`'s progress bar
// all read it. The zero value is idle.
type Progress struct {
	running   atomic.Bool
	started   atomic.Int64 // unix nanoseconds
	compared  atomic.Int64 // source entries compared
	total     atomic.Int64 // source entries expected (0: not known yet)
	files     atomic.Int64 // files pushed
	bytes     atomic.Int64 // bytes pushed
	dirs      atomic.Int64 // directories created
	deletions atomic.Int64
}

// ProgressSnapshot is a Progress at one moment.
type ProgressSnapshot struct {
	Running  bool
	Started  time.Time
	Compared int64 // source entries compared
	Total    int64 // source entries expected; 0 while unknown
	Files    int64 // files pushed
	Bytes    int64 // bytes pushed
	Dirs     int64
	Deleted  int64
	Elapsed  time.Duration
	// Rate is entries compared per second; ETA the time left at that
	// rate (0 while the total is unknown).
	Rate float64
	ETA  time.Duration
}

// Snapshot reads p.
func (p *Progress) Snapshot() ProgressSnapshot {
	s := ProgressSnapshot{
		Running: p.running.Load(), Compared: p.compared.Load(), Total: p.total.Load(),
		Files: p.files.Load(), Bytes: p.bytes.Load(), Dirs: p.dirs.Load(), Deleted: p.deletions.Load(),
	}
	if ns := p.started.Load(); ns != 0 {
		s.Started = time.Unix(0, ns)
		s.Elapsed = time.Since(s.Started)
	}
	if sec := s.Elapsed.Seconds(); sec > 0 {
		s.Rate = float64(s.Compared) / sec
	}
	if s.Total > s.Compared && s.Rate > 0 {
		s.ETA = time.Duration(float64(s.Total-s.Compared) / s.Rate * float64(time.Second))
	}
	return s
}

// passProgress feeds r.Progress during one pass and logs it every
// ProgressEvery.
type passProgress struct {
	p    *Progress
	stop func()
}

func (pp *passProgress) add(rep *Report) {
	if pp == nil {
		return
	}
	pp.p.dirs.Add(int64(rep.Dirs))
	pp.p.deletions.Add(int64(rep.Deleted))
}

func (pp *passProgress) compared(n int) {
	if pp != nil {
		pp.p.compared.Add(int64(n))
	}
}

// startProgress resets r.Progress for a new full pass, estimates the
// number of source entries (from the sync state when it has them,
// otherwise by counting the source alongside the pass: an ETA needs a
// total) and logs progress lines until stopped.
func (r *Reconciler) startProgress(ctx context.Context, dry bool) *passProgress {
	p := &r.Progress
	for _, v := range []*atomic.Int64{&p.compared, &p.total, &p.files, &p.bytes, &p.dirs, &p.deletions} {
		v.Store(0)
	}
	p.started.Store(time.Now().UnixNano())
	p.running.Store(true)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	if n := r.stateEntries(); n > 0 {
		p.total.Store(int64(n))
	} else if c := r.countAhead.Swap(nil); c != nil {
		wg.Go(func() {
			select {
			case <-c.done:
				if c.err == nil {
					p.total.Store(c.n)
				}
			case <-ctx.Done():
			}
		})
	} else {
		wg.Go(func() {
			if n, err := r.Source.countEntries(ctx); err == nil {
				p.total.Store(n)
			}
		})
	}
	every := r.ProgressEvery
	if every == 0 {
		every = 10 * time.Second
	}
	wg.Go(func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				s := p.Snapshot()
				attrs := []any{"compared", s.Compared, "files", s.Files, "bytes", s.Bytes,
					"rate_per_s", int64(s.Rate), "elapsed", s.Elapsed.Round(time.Second)}
				if s.Total > 0 {
					attrs = append(attrs, "total", s.Total, "eta", s.ETA.Round(time.Second))
				}
				if dry {
					attrs = append(attrs, "dry_run", true)
				}
				r.Logger.Info("reconcile progress", attrs...)
			}
		}
	})
	return &passProgress{p: p, stop: func() {
		cancel()
		wg.Wait()
		p.running.Store(false)
	}}
}

// entryCount is a count of the source's entries started ahead of the
// pass whose estimate it is (see CountAhead).
type entryCount struct {
	done chan struct{}
	n    int64
	err  error
}

// CountAhead starts counting the source's entries for the next full
// pass's estimate while the caller waits on something else: `sync --once`
// dials the peer and starts its receiver meanwhile, about a third of a
// second in which this side is idle. Counted beside the pass instead, the
// walk of every directory competes with the pass for the same cores. It
// does nothing when the sync state gives the total, and for two-way jobs,
// whose passes have no estimate. stop abandons the count (if the pass has
// not taken it) and waits for it to end.
func (r *Reconciler) CountAhead(ctx context.Context) (stop func()) {
	if r.TwoWay || r.stateEntries() > 0 {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	c := &entryCount{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.n, c.err = r.Source.countEntries(ctx)
	}()
	r.countAhead.Store(c)
	return func() {
		r.countAhead.CompareAndSwap(c, nil)
		cancel()
		<-c.done
	}
}

// stateEntries is the number of paths the sync state records, when it
// can tell (0 otherwise).
func (r *Reconciler) stateEntries() int {
	if s, ok := r.State.(interface{ Stats() (int, int64) }); ok && r.trusted.Load() {
		n, _ := s.Stats()
		return n
	}
	return 0
}

// transferred counts a landed file as it lands (not when its directory is
// done): a directory of large files takes a while.
func (p *Progress) transferred(n int64) {
	if p.running.Load() {
		p.files.Add(1)
		p.bytes.Add(n)
	}
}
