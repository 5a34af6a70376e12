// Command memidle measures the idle memory of a `lockstep sync` daemon
// watching a big tree (issue 15): it generates the tree (100,000 files of
// 256 B in 10,000 directories by default), starts the daemon with a local
// target and its metrics listener, waits until the target holds every
// file, lets it settle, and prints /proc/PID/status (RssAnon, RssFile,
// RssShmem, VmHWM), /proc/PID/smaps_rollup's private figures and the Go
// runtime's own accounting (the go_memstats_* and go_* gauges of
// /metrics), so that RssAnon can be split into heap, stacks, GC metadata
// and the rest.
//
//	go run ./integration/memidle [-files 100000] [-dirs 10000] [-bin lockstep] [-settle 3s]
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	files := flag.Int("files", 100000, "files in the tree")
	dirs := flag.Int("dirs", 10000, "directories in the tree")
	bin := flag.String("bin", "", "lockstep binary (default: build ./cmd/lockstep)")
	settle := flag.Duration("settle", 3*time.Second, "wait this long after the target is complete")
	also := flag.Duration("also", 0, "measure once more this long after the first measurement")
	workdir := flag.String("workdir", "/dev/shm", "parent of the work directory")
	keep := flag.Bool("keep", false, "keep the work directory")
	flag.Parse()
	if err := run(*files, *dirs, *bin, *settle, *also, *workdir, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "memidle:", err)
		os.Exit(1)
	}
}

func run(files, dirs int, bin string, settle, also time.Duration, workdir string, keep bool) error {
	dir, err := os.MkdirTemp(workdir, "memidle-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(dir)
	}
	if bin == "" {
		bin = filepath.Join(dir, "lockstep")
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/lockstep")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build: %w", err)
		}
	}
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	t0 := time.Now()
	if err := generateTree(src, dirs, files, 256); err != nil {
		return err
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	fmt.Printf("tree: %d files in %d directories, generated in %s\n", files, dirs, time.Since(t0).Round(time.Millisecond))
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf("node: memidle\nsync:\n  - name: m\n    source: %s\n    state_dir: %s\n    targets:\n      - name: local\n        path: %s\n",
		src, filepath.Join(dir, "state"), dst)
	cfgPath := filepath.Join(dir, "sync.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(dir, "sync.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "sync", "-c", cfgPath, "--metrics-addr", addr)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = os.Environ()
	t1 := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for {
		if ctx.Err() != nil {
			return fmt.Errorf("target not complete after 10 minutes (log: %s)", logf.Name())
		}
		if n, _ := countFiles(dst); n >= files {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	fmt.Printf("target complete after %s\n", time.Since(t1).Round(100*time.Millisecond))
	time.Sleep(settle)
	if err := report(cmd.Process.Pid, addr, settle); err != nil {
		return err
	}
	if also > 0 {
		time.Sleep(also)
		return report(cmd.Process.Pid, addr, settle+also)
	}
	return nil
}

const mib = 1 << 20

func report(pid int, addr string, after time.Duration) error {
	st, err := procKV(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return err
	}
	roll, _ := procKV(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	fmt.Printf("\n%s after the target was complete (pid %d):\n", after, pid)
	for _, k := range []string{"VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "VmData", "Threads"} {
		if v, ok := st[k]; ok {
			if k == "Threads" {
				fmt.Printf("  %-28s %d\n", k, v)
				continue
			}
			fmt.Printf("  %-28s %7.1f MiB\n", k, float64(v)/mib)
		}
	}
	for _, k := range []string{"Private_Clean", "Private_Dirty", "Shared_Clean", "Anonymous"} {
		if v, ok := roll[k]; ok {
			fmt.Printf("  smaps_rollup %-15s %7.1f MiB\n", k, float64(v)/mib)
		}
	}
	printMappings(pid)
	m, err := scrape(addr)
	if err != nil {
		return err
	}
	fmt.Println("  Go runtime (/metrics):")
	keys := []string{
		"go_memstats_heap_alloc_bytes", "go_memstats_heap_inuse_bytes", "go_memstats_heap_idle_bytes",
		"go_memstats_heap_released_bytes", "go_memstats_stack_inuse_bytes", "go_memstats_stack_sys_bytes",
		"go_memstats_mspan_sys_bytes", "go_memstats_mcache_sys_bytes", "go_memstats_buck_hash_sys_bytes",
		"go_memstats_gc_sys_bytes", "go_memstats_other_sys_bytes", "go_memstats_sys_bytes",
		"go_memstats_next_gc_bytes",
	}
	for _, k := range keys {
		if v, ok := m[k]; ok {
			fmt.Printf("    %-36s %7.2f MiB\n", strings.TrimPrefix(k, "go_memstats_"), v/mib)
		}
	}
	if v, ok := m["go_memstats_sys_bytes"]; ok {
		if r, ok2 := m["go_memstats_heap_released_bytes"]; ok2 {
			fmt.Printf("    %-36s %7.2f MiB\n", "sys - heap_released", (v-r)/mib)
		}
	}
	for _, k := range []string{"go_goroutines", "go_threads"} {
		fmt.Printf("    %-36s %7.0f\n", k, m[k])
	}
	return nil
}

// printMappings lists the private mappings that hold the most resident
// anonymous memory (smaps' Anonymous per mapping): the Go heap arena,
// the runtime's off-heap allocations, thread stacks, written data.
func printMappings(pid int) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return
	}
	defer f.Close()
	type mapping struct {
		desc string
		size int64
		anon int64
	}
	var ms []mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fs := strings.Fields(line)
		if len(fs) >= 5 && strings.Contains(fs[0], "-") && !strings.HasSuffix(fs[0], ":") {
			var lo, hi uint64
			if _, err := fmt.Sscanf(fs[0], "%x-%x", &lo, &hi); err == nil {
				desc := "anonymous"
				if len(fs) >= 6 {
					desc = strings.Join(fs[5:], " ")
				}
				ms = append(ms, mapping{desc: fs[1] + " " + desc, size: int64(hi - lo)})
				continue
			}
		}
		if len(ms) > 0 && len(fs) >= 2 && fs[0] == "Anonymous:" {
			n, _ := strconv.ParseInt(fs[1], 10, 64)
			ms[len(ms)-1].anon = n * 1024
		}
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].anon > ms[j].anon })
	fmt.Println("  largest anonymous mappings (resident / size):")
	var rest int64
	for i, m := range ms {
		if i < 8 {
			fmt.Printf("    %7.2f MiB / %8.2f MiB  %s\n", float64(m.anon)/mib, float64(m.size)/mib, m.desc)
		} else {
			rest += m.anon
		}
	}
	fmt.Printf("    %7.2f MiB in %d other mappings\n", float64(rest)/mib, max(len(ms)-8, 0))
}

func procKV(path string) (map[string]int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		n, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			continue
		}
		if len(fs) > 1 && fs[1] == "kB" {
			n *= 1024
		}
		out[k] = n
	}
	return out, sc.Err()
}

func scrape(addr string) (map[string]float64, error) {
	req, err := http.NewRequest("GET", "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	// Plain text: a gzip writer would grow the heap being measured.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok || strings.Contains(name, "{") {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = f
		}
	}
	return out, nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func countFiles(root string) (int, error) {
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.Type().IsRegular() && !strings.HasPrefix(d.Name(), ".") {
			n++
		}
		return nil
	})
	return n, err
}

// generateTree is the bench's (integration/bench generateTree): files
// spread over dirs directories two levels deep.
func generateTree(root string, dirs, files, size int) error {
	fanout := 1
	for fanout*fanout < dirs {
		fanout++
	}
	paths := make([]string, 0, dirs)
	for i := 0; i < dirs; i++ {
		if i < fanout {
			paths = append(paths, filepath.Join(root, fmt.Sprintf("d%03d", i)))
		} else {
			paths = append(paths, filepath.Join(root, fmt.Sprintf("d%03d", i%fanout), fmt.Sprintf("s%04d", i)))
		}
	}
	sorted := append([]string(nil), paths...)
	sort.Strings(sorted)
	for _, p := range sorted {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
	}
	buf := make([]byte, size+64)
	for i := range buf {
		buf[i] = byte('a' + i%26)
	}
	for i := 0; i < files; i++ {
		content := append(fmt.Appendf(nil, "%08d\n", i), buf[i%64:i%64+size-9]...)
		if err := os.WriteFile(filepath.Join(paths[i%len(paths)], fmt.Sprintf("f%06d.txt", i)), content, 0o644); err != nil {
			return err
		}
	}
	return nil
}
