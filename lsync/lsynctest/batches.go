package lsynctest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// BatchRecorder is a slog handler that keeps the workers' "synced" lines
// (when each batch ended, how long it took, what it did), for the churn
// speed measurements: which batches ran between a burst's last change
// and an identical target.
type BatchRecorder struct {
	mu    sync.Mutex
	lines []batchLine
}

type batchLine struct {
	at  time.Time
	dur time.Duration
	msg string
}

// Reset forgets the lines kept so far.
func (r *BatchRecorder) Reset() { r.mu.Lock(); r.lines = nil; r.mu.Unlock() }

func (r *BatchRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *BatchRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *BatchRecorder) WithGroup(string) slog.Handler            { return r }

func (r *BatchRecorder) Handle(_ context.Context, rec slog.Record) error {
	if rec.Message != "synced" {
		return nil
	}
	l := batchLine{at: rec.Time}
	var b strings.Builder
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "duration" {
			l.dur = a.Value.Duration()
			return true
		}
		if a.Value.String() != "0" {
			fmt.Fprintf(&b, "%s=%s ", a.Key, a.Value)
		}
		return true
	})
	l.msg = strings.TrimSpace(b.String())
	r.mu.Lock()
	r.lines = append(r.lines, l)
	r.mu.Unlock()
	return nil
}

// Summary counts the batches that ended during [start, end] and lists
// those that ended after end, each with its offset from end.
func (r *BatchRecorder) Summary(start, end time.Time) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	var busy time.Duration
	var after []string
	for _, l := range r.lines {
		if !l.at.After(end) {
			n++
			busy += l.dur
			continue
		}
		after = append(after, fmt.Sprintf("\n    +%.3fs took %s %s", l.at.Sub(end).Seconds(), l.dur.Round(time.Millisecond), l.msg))
	}
	return fmt.Sprintf("%d batches during the burst (busy %s of %s)%s", n, busy.Round(time.Millisecond),
		end.Sub(start).Round(time.Millisecond), strings.Join(after, ""))
}

// SpeedDir is a fresh directory for a churn speed measurement: under
// LOCKSTEP_CHURN_SPEED_DIR when set (e.g. /dev/shm, where the bench keeps
// its trees and state), else t.TempDir().
func SpeedDir(t testing.TB) string {
	base := os.Getenv("LOCKSTEP_CHURN_SPEED_DIR")
	if base == "" {
		return t.TempDir()
	}
	d, err := os.MkdirTemp(base, "churnspeed")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
