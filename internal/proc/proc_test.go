package proc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestEnvIsMinimal(t *testing.T) {
	t.Setenv("DB_PASSWORD", "s3cret-from-environmentfile")
	t.Setenv("LANG", "de_DE.UTF-8")
	env := Env(map[string]string{"LOCKSTEP_NODE": "web1", "MYSQL_PWD": "s3cret", "LOCKSTEP_BAD=X": "y"})
	want := []string{"PATH=" + Path, "LANG=de_DE.UTF-8", "LOCKSTEP_NODE=web1"}
	if !slices.Equal(env, want) {
		t.Fatalf("env %q, want %q", env, want)
	}
	dir := t.TempDir()
	dump := filepath.Join(dir, "env")
	res, err := Run(context.Background(), Cmd{Path: "/bin/sh", Args: []string{"-c", "env > " + dump}, Vars: map[string]string{"LOCKSTEP_ACTION": "start"}})
	if err != nil || !res.Exited || res.ExitCode != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	b, err := os.ReadFile(dump)
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	if strings.Contains(got, "s3cret") || !strings.Contains(got, "LOCKSTEP_ACTION=start") || !strings.Contains(got, "PATH="+Path) {
		t.Fatalf("child environment:\n%s", got)
	}
	for _, line := range strings.Split(strings.TrimSpace(got), "\n") {
		name, _, _ := strings.Cut(line, "=")
		switch {
		case name == "PATH", name == "LANG", strings.HasPrefix(name, "LOCKSTEP_"):
		case name == "PWD", name == "SHLVL", name == "_", name == "OLDPWD": // set by the shell itself
		default:
			t.Errorf("unexpected variable in the child's environment: %s", line)
		}
	}
}

func TestExitCodeAndOutput(t *testing.T) {
	res, err := Run(context.Background(), Cmd{Path: "/bin/sh", Args: []string{"-c", "echo one; echo two >&2; exit 3"}})
	if err != nil || !res.Exited || res.ExitCode != 3 || res.Tail != "one | two" {
		t.Fatalf("%+v %v", res, err)
	}
	if _, err := Run(context.Background(), Cmd{Path: "/nonexistent/script"}); err == nil {
		t.Fatal("missing program ran")
	}
}

// childPid runs a shell that starts a long-lived child and then hangs,
// the way a broken init script does.
func hang(t *testing.T) (Cmd, string) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	return Cmd{Path: "/bin/sh", Args: []string{"-c", fmt.Sprintf("sleep 60 & echo $! > %s; echo hanging; sleep 60", pidFile)}}, pidFile
}

func waitGone(t *testing.T, pidFile string) {
	t.Helper()
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); strings.Contains(string(st), ") Z") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %d survived", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTimeoutKillsTheGroup(t *testing.T) {
	c, pidFile := hang(t)
	c.Timeout = 300 * time.Millisecond
	start := time.Now()
	res, err := Run(context.Background(), c)
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "process group killed") || !strings.Contains(err.Error(), "hanging") {
		t.Fatalf("%+v %v", res, err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("timeout took %s", el)
	}
	waitGone(t, pidFile)
}

func TestCancelKillsTheGroup(t *testing.T) {
	c, pidFile := hang(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	_, err := Run(ctx, c)
	if err == nil || errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("%v", err)
	}
	waitGone(t, pidFile)
}
