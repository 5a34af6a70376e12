package lsync

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultMaxDelete is the mass-deletion guard's default: a pass or batch
// may delete at most half of the target's entries.
const DefaultMaxDelete = "50%"

// The percentage rule only applies above a floor. A full pass (startup,
// verification, reconnect, a replaced root) sees the whole source at once
// and a half-mounted or half-deployed source looks like a mass deletion:
// it is held from a small number on. A live batch carries deletions that
// inotify saw happen, one by one: routine work (a `git checkout`, a cache
// rebuild) may delete many entries of a small tree, so only a batch past
// a thousand entries (an `rm -rf` of a big docroot) is held.
const (
	massDeleteFloor     = 16
	massDeleteFloorLive = 1000
)

// MaxDelete is the parsed `max_delete` setting: a count, a percentage of
// the target's entries, or off.
type MaxDelete struct {
	Count   int // > 0: at most this many entries
	Percent int // 1..100: at most this share of the target's entries
	Off     bool
}

// ParseMaxDelete reads "N", "N%" or "off".
func ParseMaxDelete(s string) (MaxDelete, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		s = DefaultMaxDelete
	case s == "off":
		return MaxDelete{Off: true}, nil
	}
	if p, ok := strings.CutSuffix(s, "%"); ok {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 || n > 100 {
			return MaxDelete{}, fmt.Errorf("%q: a percentage must be 1%%..100%%", s)
		}
		return MaxDelete{Percent: n}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return MaxDelete{}, fmt.Errorf("%q: want a count (e.g. 1000), a percentage of the target's entries (e.g. 50%%) or off", s)
	}
	return MaxDelete{Count: n}, nil
}

func (m MaxDelete) String() string {
	switch {
	case m.Off:
		return "off"
	case m.Count > 0:
		return strconv.Itoa(m.Count)
	default:
		return strconv.Itoa(m.Percent) + "%"
	}
}

// ErrSourceMissing means the source root does not exist (an unmounted
// volume, the instant between the two renames of a deploy): the job holds,
// deletes nothing, and retries.
var ErrSourceMissing = errors.New("source root missing")

// deletionHold decides whether a pass or batch may delete n of the
// target's total entries. The answer is a reason to hold, "" to go ahead.
// An empty source never deletes: that is what an unmounted volume or a
// half-done deploy looks like, and the target is then the only copy.
func deletionHold(limit MaxDelete, n, total int, sourceEmpty bool, floor int) string {
	switch {
	case n == 0:
		return ""
	case sourceEmpty:
		return fmt.Sprintf("the source root is empty; refusing to delete %d entries on the target (an unmounted volume?)", n)
	case limit.Off:
		return ""
	case limit.Count > 0 && n > limit.Count:
		return fmt.Sprintf("%d deletions exceed max_delete %d", n, limit.Count)
	case limit.Percent > 0 && n > floor && n*100 > limit.Percent*max(total, 1):
		return fmt.Sprintf("%d deletions of %d target entries exceed max_delete %d%%", n, total, limit.Percent)
	}
	return ""
}

// liveDeleteWindow is how long applied live deletions keep counting
// against the guard. `rm -rf` of 100,000 files takes seconds and spans
// many batches (max_delay bounds each one); every batch alone is below the
// limit, the storm is not. Entries created meanwhile count against the
// deletions: a `git checkout` or a cache rebuild replaces what it deletes,
// and what the guard watches is the tree shrinking.
const liveDeleteWindow = time.Minute

// deleteWindow is a sliding count of the target's net shrinking:
// deletions applied recently minus entries created, per second.
type deleteWindow struct {
	mu      sync.Mutex
	buckets []deleteBucket
}

type deleteBucket struct {
	sec int64 // Unix second
	n   int   // deletions - creations
}

// add counts n deletions (negative: creations) at now.
func (w *deleteWindow) add(now time.Time, n int) {
	if n == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	sec := now.Unix()
	if k := len(w.buckets); k > 0 && w.buckets[k-1].sec == sec {
		w.buckets[k-1].n += n
		return
	}
	w.buckets = append(w.buckets, deleteBucket{sec, n})
}

// sum is the net shrinking within the window before now (never below
// zero); older counts are forgotten.
func (w *deleteWindow) sum(now time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	cut := now.Add(-liveDeleteWindow).Unix()
	i := 0
	for i < len(w.buckets) && w.buckets[i].sec <= cut {
		i++
	}
	w.buckets = w.buckets[i:]
	n := 0
	for _, b := range w.buckets {
		n += b.n
	}
	return max(n, 0)
}
