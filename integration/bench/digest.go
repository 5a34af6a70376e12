package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"
)

// TreeEntry is what "identical" means for a docroot: path, type and
// permission bits, size, content hash, symlink target. Mtimes are left
// out on purpose: the tools differ in how they carry them (SFTP v3 has
// whole seconds) and a web server serves content, not mtimes.
type TreeEntry struct {
	Path string
	Mode fs.FileMode
	Size int64
	Hash string // hex sha256 of regular files
	Link string
}

func (e TreeEntry) String() string {
	return fmt.Sprintf("%s %s %d %s %s", e.Path, e.Mode, e.Size, e.Hash, e.Link)
}

// Digester hashes trees repeatedly while a tool converges; it caches file
// hashes by inode identity so that polling a big tree costs a stat per
// file instead of a read.
type Digester struct {
	cache map[string]cacheEntry
}

type cacheEntry struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64
	hash         string
}

func NewDigester() *Digester { return &Digester{cache: map[string]cacheEntry{}} }

// Tree lists root (sorted, root itself excluded). A missing root is an
// empty tree, so that polling can start before a tool created it.
func (d *Digester) Tree(ctx context.Context, root string) ([]TreeEntry, error) {
	var out []TreeEntry
	seen := make(map[string]bool, len(d.cache))
	err := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				// Vanished while walking (a tool's temp file renamed away):
				// the tree is in flux; report what we saw.
				if p == root {
					return fs.SkipAll
				}
				return nil
			}
			return err
		}
		if p == root {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := de.Info()
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		e := TreeEntry{Path: filepath.ToSlash(rel), Mode: info.Mode() & (fs.ModeType | fs.ModePerm)}
		switch {
		case info.Mode().IsRegular():
			e.Size = info.Size()
			h, err := d.hashFile(p, info)
			if err != nil {
				if os.IsNotExist(err) {
					return nil
				}
				return err
			}
			e.Hash = h
			seen[p] = true
		case info.Mode()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				if os.IsNotExist(err) {
					return nil
				}
				return err
			}
			e.Link = l
		}
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	for p := range d.cache {
		if !seen[p] {
			delete(d.cache, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

func (d *Digester) hashFile(p string, info fs.FileInfo) (string, error) {
	st, ok := info.Sys().(*syscall.Stat_t)
	var key cacheEntry
	if ok {
		key = cacheEntry{dev: uint64(st.Dev), ino: st.Ino, size: st.Size,
			mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}
		if c, hit := d.cache[p]; hit && c.dev == key.dev && c.ino == key.ino && c.size == key.size && c.mtime == key.mtime && c.ctime == key.ctime {
			return c.hash, nil
		}
	}
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if ok {
		key.hash = sum
		d.cache[p] = key
	}
	return sum, nil
}

// Digest is one hash over a listing, for logs and quick equality.
func Digest(entries []TreeEntry) string {
	h := sha256.New()
	for _, e := range entries {
		fmt.Fprintln(h, e.String())
	}
	return hex.EncodeToString(h.Sum(nil))
}

// FirstDiff names the first difference between two listings ("" if equal),
// so a timeout says what was still missing.
func FirstDiff(want, got []TreeEntry) string {
	i, j := 0, 0
	var diffs int
	first := ""
	for i < len(want) || j < len(got) {
		switch {
		case j >= len(got) || (i < len(want) && want[i].Path < got[j].Path):
			if first == "" {
				first = want[i].Path + ": missing on target"
			}
			diffs++
			i++
		case i >= len(want) || got[j].Path < want[i].Path:
			if first == "" {
				first = got[j].Path + ": extra on target"
			}
			diffs++
			j++
		default:
			if want[i] != got[j] {
				if first == "" {
					first = fmt.Sprintf("%s: differs (source %s %d %.12s %q, target %s %d %.12s %q)", want[i].Path,
						want[i].Mode, want[i].Size, want[i].Hash, want[i].Link, got[j].Mode, got[j].Size, got[j].Hash, got[j].Link)
				}
				diffs++
			}
			i++
			j++
		}
	}
	if diffs == 0 {
		return ""
	}
	return fmt.Sprintf("%d differences, first: %s", diffs, first)
}

// TreeWaiter polls a target until it matches a source listing.
type TreeWaiter struct {
	Source, Target *Digester
	// Interval between polls; each poll costs a stat per file, so it is
	// not sub-ms like the single-file probe.
	Interval time.Duration
}

// WaitEqual waits until target's listing equals the source's listing
// taken once at call time (the source must be quiescent) and returns the
// moment it was first seen equal.
func (w TreeWaiter) WaitEqual(ctx context.Context, source, target string, timeout time.Duration) (time.Time, error) {
	want, err := w.Source.Tree(ctx, source)
	if err != nil {
		return time.Time{}, fmt.Errorf("digest source: %w", err)
	}
	return w.WaitMatches(ctx, want, target, timeout)
}

// WaitMatches waits until target's listing equals want. After one full
// walk it re-checks only the paths that still differ (cheap, so it can
// poll often without stealing the CPU from the tool being measured), and
// confirms a clean result with a full walk. The returned instant is when
// the last differing path was seen fixed.
func (w TreeWaiter) WaitMatches(ctx context.Context, want []TreeEntry, target string, timeout time.Duration) (time.Time, error) {
	interval := w.Interval
	if interval == 0 {
		interval = 20 * time.Millisecond
	}
	deadline := time.Now().Add(timeout)
	wantBy := make(map[string]TreeEntry, len(want))
	for _, e := range want {
		wantBy[e.Path] = e
	}
	pending := map[string]bool{} // paths still differing (missing, different or extra)
	full := true
	var equalAt time.Time
	last := ""
	for {
		start := time.Now()
		if full {
			got, err := w.Target.Tree(ctx, target)
			if err != nil {
				return time.Time{}, fmt.Errorf("digest target: %w", err)
			}
			last = FirstDiff(want, got)
			if last == "" {
				if equalAt.IsZero() {
					equalAt = time.Now()
				}
				return equalAt, nil
			}
			equalAt = time.Time{}
			clear(pending)
			for _, p := range diffPaths(want, got) {
				pending[p] = true
			}
			// A long list is cheaper to re-walk than to stat one by one.
			full = len(pending) > len(want)/2+1
		} else {
			for p := range pending {
				got, ok, err := w.Target.Entry(target, p)
				if err != nil {
					return time.Time{}, fmt.Errorf("digest target: %w", err)
				}
				if wantE, inWant := wantBy[p]; (inWant && ok && got == wantE) || (!inWant && !ok) {
					delete(pending, p)
				}
			}
			if len(pending) == 0 {
				equalAt = time.Now()
				full = true
				continue
			}
			first := ""
			for p := range pending {
				if first == "" || p < first {
					first = p
				}
			}
			state := "differs"
			if _, ok := wantBy[first]; !ok {
				state = "extra on target"
			} else if _, ok, _ := w.Target.Entry(target, first); !ok {
				state = "missing on target"
			}
			last = fmt.Sprintf("%d paths still differ, first: %s: %s", len(pending), first, state)
		}
		now := time.Now()
		if now.After(deadline) {
			return time.Time{}, fmt.Errorf("target not identical after %s: %s", timeout, last)
		}
		// Pace by the cost of a check, so polling uses at most half a core.
		wait := max(interval, now.Sub(start))
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// diffPaths lists every path that differs between two sorted listings.
func diffPaths(want, got []TreeEntry) []string {
	var out []string
	i, j := 0, 0
	for i < len(want) || j < len(got) {
		switch {
		case j >= len(got) || (i < len(want) && want[i].Path < got[j].Path):
			out = append(out, want[i].Path)
			i++
		case i >= len(want) || got[j].Path < want[i].Path:
			out = append(out, got[j].Path)
			j++
		default:
			if want[i] != got[j] {
				out = append(out, want[i].Path)
			}
			i++
			j++
		}
	}
	return out
}

// Entry describes one path under root; ok is false when it does not exist.
func (d *Digester) Entry(root, rel string) (TreeEntry, bool, error) {
	p := filepath.Join(root, filepath.FromSlash(rel))
	info, err := os.Lstat(p)
	if err != nil {
		if os.IsNotExist(err) {
			return TreeEntry{}, false, nil
		}
		return TreeEntry{}, false, err
	}
	e := TreeEntry{Path: rel, Mode: info.Mode() & (fs.ModeType | fs.ModePerm)}
	switch {
	case info.Mode().IsRegular():
		e.Size = info.Size()
		h, err := d.hashFile(p, info)
		if err != nil {
			if os.IsNotExist(err) {
				return TreeEntry{}, false, nil
			}
			return TreeEntry{}, false, err
		}
		e.Hash = h
	case info.Mode()&fs.ModeSymlink != 0:
		l, err := os.Readlink(p)
		if err != nil {
			if os.IsNotExist(err) {
				return TreeEntry{}, false, nil
			}
			return TreeEntry{}, false, err
		}
		e.Link = l
	}
	return e, true, nil
}
