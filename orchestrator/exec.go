package orchestrator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// LSB init-script exit codes for `status`.
const (
	lsbRunning = 0
	lsbStopped = 3
)

// Exec is a resource driven by an LSB init script: `script start|stop|status`.
type Exec struct {
	script  string
	timeout time.Duration
}

// NewExec returns an LSB script resource; every call is bounded by timeout.
func NewExec(script string, timeout time.Duration) *Exec {
	if timeout <= 0 {
		timeout = DefaultResourceTimeout
	}
	return &Exec{script: script, timeout: timeout}
}

func (e *Exec) Name() string { return e.script }
func (e *Exec) Kind() string { return "exec" }

func (e *Exec) Start(ctx context.Context) error { return e.act(ctx, "start") }

// Stop follows LSB: stopping a stopped service exits 0. We trust that and
// fail on any other code, so a broken stop script is visible.
func (e *Exec) Stop(ctx context.Context) error { return e.act(ctx, "stop") }

// act runs start or stop, for which LSB knows only success (0).
func (e *Exec) act(ctx context.Context, action string) error {
	code, out, err := e.run(ctx, action)
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("%s %s exited %d%s", e.script, action, code, out)
	}
	return nil
}

// Running maps LSB status codes: 0 running, 3 stopped; 1, 2 (dead but
// pid/lock file left) count as stopped-with-leftovers, i.e. running=false
// but reported; anything else is an error.
func (e *Exec) Running(ctx context.Context) (bool, error) {
	code, out, err := e.run(ctx, "status")
	if err != nil {
		return false, err
	}
	switch code {
	case lsbRunning:
		return true, nil
	case lsbStopped:
		return false, nil
	case 1, 2:
		return false, fmt.Errorf("%s status exited %d (dead but pid/lock file exists)%s", e.script, code, out)
	default:
		return false, fmt.Errorf("%s status exited %d (unknown state)%s", e.script, code, out)
	}
}

// run executes the script in its own process group and kills the whole
// group at the timeout, so a hanging script cannot block a failover and
// its children cannot outlive it.
func (e *Exec) run(ctx context.Context, action string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	// Output goes to an unlinked temp file, not a pipe: a start script that
	// daemonizes leaves children holding its stdout, and a pipe would make
	// Wait block on them.
	out, err := os.CreateTemp("", "lockstep-exec-*")
	if err != nil {
		return 0, "", err
	}
	os.Remove(out.Name())
	defer out.Close()

	cmd := exec.CommandContext(ctx, e.script, action)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	start := time.Now()
	err = cmd.Run()
	if cmd.Process != nil {
		// Children left in the group after the script exited (e.g. a
		// hanging helper) go too when we timed out.
		if ctx.Err() != nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	}
	tail := readTail(out, 512)
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return 0, tail, fmt.Errorf("%s %s timed out after %s; process group killed%s", e.script, action, time.Since(start).Round(time.Millisecond), tail)
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.Exited() {
			return ee.ExitCode(), tail, nil
		}
		if ctx.Err() != nil {
			return 0, tail, fmt.Errorf("%s %s interrupted: %w", e.script, action, ctx.Err())
		}
		return 0, tail, fmt.Errorf("%s %s: %w", e.script, action, err)
	}
	return 0, tail, nil
}

func readTail(f *os.File, n int64) string {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil || size == 0 {
		return ""
	}
	off := max(size-n, 0)
	buf := make([]byte, size-off)
	if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	s := strings.TrimSpace(string(bytes.ToValidUTF8(buf, nil)))
	if s == "" {
		return ""
	}
	return ": " + strings.ReplaceAll(s, "\n", " | ")
}
