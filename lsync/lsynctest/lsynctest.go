// Package lsynctest holds helpers shared by the lsync tests, the SFTP
// target tests and the integration tests: a byte-for-byte tree comparison
// and a way to run a job for the duration of a test.
package lsynctest

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/localtarget"
)

// Option tunes a tree comparison.
type Option func(*options)

type options struct {
	ignore      func(rel string) bool
	dirModTimes bool
	noModTimes  bool
	mtimeSlack  time.Duration
}

// Ignore skips paths (slash-separated, relative to the roots) for which fn
// returns true, and everything below them.
func Ignore(fn func(rel string) bool) Option { return func(o *options) { o.ignore = fn } }

// DirModTimes also compares the mtimes of directories (off by default: a
// live tree's directories change whenever an entry is added).
func DirModTimes() Option { return func(o *options) { o.dirModTimes = true } }

// SecondModTimes compares file mtimes at one-second granularity, for
// transports (SFTP v3) that carry whole seconds only.
func SecondModTimes() Option { return func(o *options) { o.mtimeSlack = time.Second } }

// NoModTimes skips mtime comparison altogether.
func NoModTimes() Option { return func(o *options) { o.noModTimes = true } }

// DiffTrees compares the trees rooted at a and b and returns one line per
// difference: type, permission bits, content, symlink target and mtime
// (files; directories with DirModTimes). Symlinks are never followed.
func DiffTrees(a, b string, opts ...Option) ([]string, error) {
	var o options
	for _, fn := range opts {
		fn(&o)
	}
	ea, err := listTree(a, o)
	if err != nil {
		return nil, err
	}
	eb, err := listTree(b, o)
	if err != nil {
		return nil, err
	}
	var diffs []string
	names := map[string]bool{}
	for n := range ea {
		names[n] = true
	}
	for n := range eb {
		names[n] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	for _, rel := range sorted {
		x, inA := ea[rel]
		y, inB := eb[rel]
		switch {
		case !inA:
			diffs = append(diffs, fmt.Sprintf("%s: only in %s", rel, b))
			continue
		case !inB:
			diffs = append(diffs, fmt.Sprintf("%s: only in %s", rel, a))
			continue
		}
		if x.Mode().Type() != y.Mode().Type() {
			diffs = append(diffs, fmt.Sprintf("%s: type %v vs %v", rel, x.Mode().Type(), y.Mode().Type()))
			continue
		}
		pa, pb := filepath.Join(a, filepath.FromSlash(rel)), filepath.Join(b, filepath.FromSlash(rel))
		switch {
		case x.Mode()&fs.ModeSymlink != 0:
			la, err1 := os.Readlink(pa)
			lb, err2 := os.Readlink(pb)
			if err1 != nil || err2 != nil || la != lb {
				diffs = append(diffs, fmt.Sprintf("%s: symlink %q vs %q (%v, %v)", rel, la, lb, err1, err2))
			}
			continue
		case x.Mode().IsRegular():
			if x.Size() != y.Size() {
				diffs = append(diffs, fmt.Sprintf("%s: size %d vs %d", rel, x.Size(), y.Size()))
			} else {
				ca, err1 := os.ReadFile(pa)
				cb, err2 := os.ReadFile(pb)
				if err1 != nil || err2 != nil {
					diffs = append(diffs, fmt.Sprintf("%s: unreadable (%v, %v)", rel, err1, err2))
				} else if !bytes.Equal(ca, cb) {
					diffs = append(diffs, fmt.Sprintf("%s: content differs", rel))
				}
			}
			if !o.noModTimes && !sameTime(x.ModTime(), y.ModTime(), o.mtimeSlack) {
				diffs = append(diffs, fmt.Sprintf("%s: mtime %s vs %s", rel, x.ModTime().Format(time.RFC3339Nano), y.ModTime().Format(time.RFC3339Nano)))
			}
		case x.IsDir():
			if o.dirModTimes && !o.noModTimes && !sameTime(x.ModTime(), y.ModTime(), o.mtimeSlack) {
				diffs = append(diffs, fmt.Sprintf("%s/: mtime %s vs %s", rel, x.ModTime().Format(time.RFC3339Nano), y.ModTime().Format(time.RFC3339Nano)))
			}
		}
		if x.Mode().Perm() != y.Mode().Perm() {
			diffs = append(diffs, fmt.Sprintf("%s: mode %v vs %v", rel, x.Mode().Perm(), y.Mode().Perm()))
		}
	}
	return diffs, nil
}

func sameTime(a, b time.Time, slack time.Duration) bool {
	if slack == 0 {
		return a.Equal(b)
	}
	return a.Truncate(slack).Equal(b.Truncate(slack))
}

func listTree(root string, o options) (map[string]fs.FileInfo, error) {
	out := map[string]fs.FileInfo{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if o.ignore != nil && o.ignore(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out[rel] = fi
		return nil
	})
	return out, err
}

// AssertTreesEqual fails the test unless the trees rooted at a and b are
// identical (see DiffTrees).
func AssertTreesEqual(t testing.TB, a, b string, opts ...Option) {
	t.Helper()
	diffs, err := DiffTrees(a, b, opts...)
	if err != nil {
		t.Fatalf("comparing %s and %s: %v", a, b, err)
	}
	if len(diffs) > 0 {
		t.Fatalf("trees %s and %s differ:\n%s", a, b, summarize(diffs))
	}
}

// WaitTreesEqual polls until the trees are identical and fails the test if
// they still differ after timeout (an upper bound, not a performance check).
func WaitTreesEqual(t testing.TB, a, b string, timeout time.Duration, opts ...Option) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		diffs, err := DiffTrees(a, b, opts...)
		if err == nil && len(diffs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			if err != nil {
				t.Fatalf("comparing %s and %s: %v", a, b, err)
			}
			t.Fatalf("trees %s and %s still differ after %s:\n%s", a, b, timeout, summarize(diffs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Converge polls until the trees are identical or timeout passes, and
// returns how long it took and, on timeout, what still differs.
func Converge(a, b string, timeout time.Duration, opts ...Option) (time.Duration, []string) {
	start := time.Now()
	for {
		diffs, err := DiffTrees(a, b, opts...)
		if err != nil {
			diffs = []string{err.Error()}
		}
		if len(diffs) == 0 {
			return time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return time.Since(start), diffs
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Summarize formats DiffTrees output for a failure message, the first 30
// lines and a count of the rest.
func Summarize(diffs []string) string { return summarize(diffs) }

func summarize(diffs []string) string {
	const max = 30
	if len(diffs) > max {
		return strings.Join(diffs[:max], "\n") + fmt.Sprintf("\n... and %d more", len(diffs)-max)
	}
	return strings.Join(diffs, "\n")
}

// Runner is what Start runs: lsync.Job satisfies it.
type Runner interface {
	Start(ctx context.Context) error
	Stop()
}

// Start starts r with a context cancelled at the end of the test, and
// stops it (waiting for its goroutines) in t.Cleanup.
func Start(t testing.TB, r Runner) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if err := r.Start(ctx); err != nil {
		cancel()
		t.Fatalf("starting: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		r.Stop()
	})
}

// WriteFile writes content to root/rel, creating parents, and sets mtime
// when it is not zero.
func WriteFile(t testing.TB, root, rel, content string, mode fs.FileMode, mtime time.Time) {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	if !mtime.IsZero() {
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
}

// LocalConnectors returns a localtarget Connector per target of cfg (all
// must be local).
func LocalConnectors(t testing.TB, cfg lsync.JobConfig) []lsync.Connector {
	t.Helper()
	var out []lsync.Connector
	for _, tc := range cfg.Targets {
		c, err := localtarget.NewConnector(tc)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// StartJob builds a job from cfg with the given connectors (local ones
// when nil), starts it and stops it at the end of the test.
func StartJob(t testing.TB, cfg lsync.JobConfig, conns []lsync.Connector, opts lsync.JobOptions) *lsync.Job {
	t.Helper()
	if conns == nil {
		conns = LocalConnectors(t, cfg)
	}
	if opts.Logger == nil {
		opts.Logger = TestLogger(t)
	}
	j, err := lsync.NewJob(cfg, conns, opts)
	if err != nil {
		t.Fatal(err)
	}
	Start(t, j)
	return j
}

// TestLogger logs through t.Log, at Debug level when LSYNC_DEBUG is set.
func TestLogger(t testing.TB) *slog.Logger {
	level := slog.LevelInfo
	if os.Getenv("LSYNC_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
