package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// RSSBytes reads VmRSS of a process from /proc/PID/status.
func RSSBytes(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != "VmRSS" {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) < 1 {
			break
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse VmRSS %q: %w", v, err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("pid %d: no VmRSS in /proc status", pid)
}

// InotifyWatches counts the inotify watches a process holds, from the
// "inotify wd:" lines of /proc/PID/fdinfo. It tells from outside, for any
// tool, when a tree is fully watched.
func InotifyWatches(pid int) (int, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // fd closed meanwhile
		}
		if !strings.Contains(string(b), "inotify wd:") {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "inotify wd:") {
				n++
			}
		}
	}
	return n, nil
}

// statFields returns the fields of /proc/PID/stat after the command name,
// starting with state (field 3) and ppid (field 4).
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	s := string(b)
	// comm may contain spaces; fields restart after the last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("pid %d: malformed stat", pid)
	}
	return strings.Fields(s[i+1:]), nil
}

// CPUSeconds returns user+system CPU time of a process and of its reaped
// children, from /proc/PID/stat (fields 14-17, in clock ticks).
func CPUSeconds(pid int) (float64, error) {
	fields, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	// utime is field 14 → index 11 here.
	if len(fields) < 15 {
		return 0, fmt.Errorf("pid %d: short stat", pid)
	}
	var ticks int64
	for _, f := range fields[11:15] {
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += v
	}
	const clkTck = 100 // USER_HZ on Linux
	return float64(ticks) / clkTck, nil
}

// ownCPUSeconds returns user+system CPU time of a process alone (not of
// its children), from /proc/PID/stat.
func ownCPUSeconds(pid int) (float64, error) {
	fields, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	if len(fields) < 13 {
		return 0, fmt.Errorf("pid %d: short stat", pid)
	}
	var ticks int64
	for _, f := range fields[11:13] {
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += v
	}
	const clkTck = 100 // USER_HZ on Linux
	return float64(ticks) / clkTck, nil
}

// PidsMatching returns the pids whose command line contains needle (used
// to find the ssh ControlMaster that lsyncd's ssh forked off, which is no
// longer its child).
func PidsMatching(needle string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		if strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), needle) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TreeRSS sums VmRSS over pid and all its descendants. A daemon that
// hands the work to child processes (lsyncd runs rsync, which runs ssh)
// shows only part of its memory in its own RSS.
func TreeRSS(pid int) int64 {
	return sumRSS(descendants(pid))
}

// descendants returns pid and every process below it, from one scan of
// /proc.
func descendants(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return []int{pid}
	}
	children := map[int][]int{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := statFields(p)
		if err != nil || len(f) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(f[1]); err == nil {
			children[ppid] = append(children[ppid], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		out = append(out, p)
		queue = append(queue, children[p]...)
	}
	return out
}

func sumRSS(pids []int) int64 {
	var total int64
	for _, p := range pids {
		if rss, err := RSSBytes(p); err == nil {
			total += rss
		}
	}
	return total
}

// treeSampler samples the RSS of a process tree often while scanning
// /proc for its members seldom: a scan reads the stat file of every
// process on the machine, and at 100 scans a second it took a third of
// a core from the tools being measured on a 2-core machine.
type treeSampler struct {
	pid     int
	every   time.Duration
	pids    []int
	scanned time.Time
}

func newTreeSampler(pid int, rescan time.Duration) *treeSampler {
	return &treeSampler{pid: pid, every: rescan}
}

// rss returns the tree's current RSS.
func (t *treeSampler) rss() int64 {
	if time.Since(t.scanned) >= t.every {
		t.pids, t.scanned = descendants(t.pid), time.Now()
	}
	return sumRSS(t.pids)
}
