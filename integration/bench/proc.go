package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/lockstep-ha/lockstep/internal/testbed"
)

// Proc is a child process the harness started, in its own process group
// so that stopping it also stops what it spawned (lsyncd's rsync and ssh).
type Proc = testbed.Proc

// StartProc starts argv with stdout and stderr appended to logPath.
func StartProc(name, logPath string, env []string, argv ...string) (*Proc, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return testbed.Start(name, logPath, cmd)
}

// runCmd runs a short command and returns combined output, with the
// output in the error.
func runCmd(ctx context.Context, argv ...string) (string, error) {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), fmt.Errorf("%s: %v: %s", strings.Join(argv[:min(len(argv), 3)], " "), err, truncate(strings.TrimSpace(string(out)), 800))
		}
		return string(out), fmt.Errorf("%s: %w", argv[0], err)
	}
	return string(out), nil
}
