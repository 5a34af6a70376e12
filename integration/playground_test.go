package integration

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/internal/testbed/mariadb"
)

// TestPlaygroundSmoke runs the Quick start the way a newcomer does, with
// --duration so it stops by itself: the playground must verify sync both
// ways, replication and /health on both daemons, exit 0, and leave no
// process and no file behind.
func TestPlaygroundSmoke(t *testing.T) {
	if err := mariadb.Available(); err != nil {
		t.Skipf("playground needs MariaDB: %v", err)
	}
	bin := lockstepBinary(t)
	// Everything the playground creates lands here, so an empty directory
	// afterwards proves the cleanup.
	tmp := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "playground", "--duration", "15s", "--interval", "5s")
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	text := string(out)
	if err != nil {
		t.Fatalf("lockstep playground --duration 15s: %v after %s\n%s", err, time.Since(start).Round(time.Millisecond), text)
	}
	t.Logf("playground ran %s", time.Since(start).Round(time.Millisecond))

	for _, want := range []string{
		"check: node1 answers /health",
		"check: node2 answers /health",
		"check: a file written on node1 appeared on node2",
		"check: a file written on node2 appeared on node1",
		"check: a row written on db1 is visible on db2",
		"playground self-check passed",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "check: a file written on") {
			t.Log(line)
		}
	}

	// The daemons the playground started are gone.
	for _, m := range regexp.MustCompile(`lockstep run \(pid (\d+)\)`).FindAllStringSubmatch(text, -1) {
		pid, _ := strconv.Atoi(m[1])
		if syscall.Kill(pid, 0) == nil {
			if exe, _ := os.Readlink("/proc/" + m[1] + "/exe"); exe == bin {
				t.Errorf("daemon pid %d still runs after the playground exited", pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	// mariadbd and anything else started with a path under tmp.
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		cmdline, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err == nil && strings.Contains(string(cmdline), tmp) {
			t.Errorf("process %s still runs after the playground exited: %s", p.Name(), strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	left, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range left {
		t.Errorf("playground left %s in its temp dir", e.Name())
	}
}

func TestPlaygroundBadFlags(t *testing.T) {
	bin := lockstepBinary(t)
	for _, args := range [][]string{
		{"playground", "--duration", "-1s"},
		{"playground", "--interval", "0s"},
		{"playground", "--duration", "soon"},
		{"playground", "extra"},
	} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("lockstep %s: %v, want exit 2\n%s", strings.Join(args, " "), err, out)
			continue
		}
		if !strings.Contains(string(out), "lockstep:") {
			t.Errorf("lockstep %s printed no error: %s", strings.Join(args, " "), out)
		}
	}
}
