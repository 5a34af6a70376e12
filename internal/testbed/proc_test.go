package testbed

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestProcExitCodeAndLog(t *testing.T) {
	log := filepath.Join(t.TempDir(), "p.log")
	p, err := Start("sh", log, exec.Command("sh", "-c", "echo hello; exit 3"))
	if err != nil {
		t.Fatal(err)
	}
	if ended, err := p.Wait(10 * time.Second); !ended || err == nil {
		t.Fatalf("ended=%v err=%v", ended, err)
	}
	if p.ExitCode() != 3 || p.LogTail(100) != "hello" || !strings.Contains(p.ErrIfExited().Error(), "hello") {
		t.Errorf("exit %d, log %q, %v", p.ExitCode(), p.LogTail(100), p.ErrIfExited())
	}
}

// Stop ends a process started in its own group together with its
// children; Signal reports a process that ignores the signal as running.
func TestProcStopTakesTheGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child")
	cmd := exec.Command("sh", "-c", "trap '' TERM; sleep 60 & echo $! > "+pidFile+"; wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p, err := Start("sh", "", cmd)
	if err != nil {
		t.Fatal(err)
	}
	var child int
	for deadline := time.Now().Add(10 * time.Second); child == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no child pid")
		}
		b, _ := os.ReadFile(pidFile)
		child, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if ended, _ := p.Signal(syscall.SIGTERM, 200*time.Millisecond); ended {
		t.Fatal("ended on an ignored SIGTERM")
	}
	if err := p.Stop(200 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if ended, _ := p.Exited(); !ended {
		t.Error("still running after Stop")
	}
	for deadline := time.Now().Add(5 * time.Second); running(child); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the group's child survived Stop")
		}
	}
}

// running: the pid exists and is not a zombie waiting for a reaper.
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || !strings.HasPrefix(string(b[i+1:]), " Z")
}
