package lsync

import (
	"context"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"time"
)

// deliveries remembers the files a two-way peer delivered into this tree
// (renamed into place from a TempPrefix name) and that nothing here has
// touched since. Such a file is the peer's version, not a new one of
// ours: when the merge has no base for it and the peer has since deleted,
// moved or changed it, pushing it back would resurrect what the peer's
// user removed. Memory only: after a restart or a lost event (a queue
// overflow) nothing is known and the classic rule applies.
type deliveries struct {
	mu sync.Mutex
	m  map[string]time.Time
	// movedDir is the last directory renamed away (the watcher reports
	// a rename as the old name, then the new one with the same inode):
	// the deliveries below it move along.
	movedDir   string
	movedInode uint64
}

// deliveryTTL bounds how long a delivery is remembered, and
// maxDeliveries how many: past either, a path is simply not known as
// delivered (the conservative answer).
const (
	deliveryTTL   = 10 * time.Minute
	maxDeliveries = 100_000
)

func (d *deliveries) note(ev Event) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ev.IsDir && ev.Inode != 0 {
		switch {
		case ev.Op == OpRename:
			d.movedDir, d.movedInode = ev.Path, ev.Inode
		case ev.Op == OpCreate && ev.Inode == d.movedInode && d.movedDir != "":
			from := d.movedDir + "/"
			moved := map[string]time.Time{}
			for p, at := range d.m {
				if strings.HasPrefix(p, from) {
					delete(d.m, p)
					moved[ev.Path+"/"+p[len(from):]] = at
				}
			}
			maps.Copy(d.m, moved)
			d.movedDir, d.movedInode = "", 0
		}
	}
	if !ev.Delivered {
		// An attribute change (the sender's own chown after landing, a
		// chmod) leaves the content the peer's; anything else makes it
		// ours.
		if ev.Op != OpChmod {
			delete(d.m, ev.Path)
		}
		return
	}
	now := time.Now()
	if d.m == nil {
		d.m = map[string]time.Time{}
	}
	if len(d.m) >= maxDeliveries {
		for p, at := range d.m {
			if now.Sub(at) > deliveryTTL {
				delete(d.m, p)
			}
		}
		if len(d.m) >= maxDeliveries {
			clear(d.m)
		}
	}
	d.m[ev.Path] = now
}

func (d *deliveries) forget() {
	d.mu.Lock()
	clear(d.m)
	d.mu.Unlock()
}

// has reports whether rel was delivered by the peer and not changed here
// since.
func (d *deliveries) has(rel string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	at, ok := d.m[rel]
	return ok && time.Since(at) < deliveryTTL
}

// deliverySink notes deliveries on their way from the watcher to the
// batcher.
type deliverySink struct {
	sink
	d      *deliveries
	logger *slog.Logger
}

func (s deliverySink) event(ctx context.Context, ev Event) {
	if s.logger != nil && s.logger.Enabled(ctx, slog.LevelDebug) {
		had := s.d.has(ev.Path)
		s.d.note(ev)
		switch has := s.d.has(ev.Path); {
		case ev.Delivered:
			s.logger.Debug("delivered by the peer", "path", ev.Path)
		case had && !has:
			s.logger.Debug("delivery tag cleared by a local change", "path", ev.Path, "op", ev.Op)
		}
	} else {
		s.d.note(ev)
	}
	s.sink.event(ctx, ev)
}

func (s deliverySink) rescan(ctx context.Context, reason string) {
	s.d.forget() // events were lost: a local change may hide among them
	s.sink.rescan(ctx, reason)
}
