// Package proc runs the external programs lockstep calls on an operator's
// behalf (resource scripts, hooks, probes) the one way they should run:
// with a minimal environment, in a process group of their own that is
// killed as a whole at the timeout, output captured without letting a
// daemonizing child block the caller.
//
// The environment is built, never inherited: the daemon's own
// environment carries secrets (the database password is usually passed as
// ${VAR} through systemd's EnvironmentFile=), and a script must not see
// them or leak them to its children. A child gets PATH (a fixed system
// path), LANG (the daemon's, or C.UTF-8) and the variables its caller
// documents, which must be LOCKSTEP_*.
package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Path is the PATH every child gets.
const Path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Env is the complete environment of a child: PATH, LANG and vars, whose
// names must start with LOCKSTEP_ (others are a programming error and are
// dropped, so that a secret cannot slip in through a caller).
func Env(vars map[string]string) []string {
	lang := os.Getenv("LANG")
	if lang == "" {
		lang = "C.UTF-8"
	}
	env := []string{"PATH=" + Path, "LANG=" + lang}
	keys := make([]string, 0, len(vars))
	for k := range vars {
		if strings.HasPrefix(k, "LOCKSTEP_") && !strings.ContainsAny(k, "=\x00") {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		env = append(env, k+"="+strings.ReplaceAll(vars[k], "\x00", ""))
	}
	return env
}

// Cmd is one program run.
type Cmd struct {
	Path    string
	Args    []string
	Vars    map[string]string // LOCKSTEP_* variables; see Env
	Timeout time.Duration     // > 0: the group is killed after it
	// TailBytes of the combined output are returned (default 512).
	TailBytes int64
}

// Result is how a run ended.
type Result struct {
	// ExitCode is valid when Exited.
	ExitCode int
	Exited   bool
	// Tail is the end of the combined output, on one line.
	Tail     string
	Duration time.Duration
}

// ErrTimeout is wrapped by the error of a run killed at its timeout.
var ErrTimeout = errors.New("timed out")

// Run runs c and waits for it. A non-zero exit is not an error (see
// Result); a failure to start, a timeout (process group killed) or ctx
// ending (process group killed) is.
func Run(ctx context.Context, c Cmd) (Result, error) {
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	if c.TailBytes <= 0 {
		c.TailBytes = 512
	}
	// Output goes to an unlinked temp file, not a pipe: a start script that
	// daemonizes leaves children holding its stdout, and a pipe would make
	// Wait block on them.
	out, err := os.CreateTemp("", "lockstep-proc-*")
	if err != nil {
		return Result{}, err
	}
	os.Remove(out.Name())
	defer out.Close()

	cmd := exec.CommandContext(ctx, c.Path, c.Args...)
	cmd.Env = Env(c.Vars)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	start := time.Now()
	err = cmd.Run()
	res := Result{Duration: time.Since(start)}
	if cmd.Process != nil && ctx.Err() != nil {
		// Children left in the group after the program exited (e.g. a
		// hanging helper) go too.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	res.Tail = readTail(out, c.TailBytes)
	name := c.Path
	if len(c.Args) > 0 {
		name += " " + strings.Join(c.Args, " ")
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return res, fmt.Errorf("%s %w after %s; process group killed%s", name, ErrTimeout, res.Duration.Round(time.Millisecond), suffix(res.Tail))
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.Exited() {
			res.Exited, res.ExitCode = true, ee.ExitCode()
			return res, nil
		}
		if ctx.Err() != nil {
			return res, fmt.Errorf("%s interrupted; process group killed: %w", name, ctx.Err())
		}
		return res, fmt.Errorf("%s: %w", name, err)
	}
	res.Exited = true
	return res, nil
}

func suffix(tail string) string {
	if tail == "" {
		return ""
	}
	return ": " + tail
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
	return strings.ReplaceAll(strings.TrimSpace(string(bytes.ToValidUTF8(buf, nil))), "\n", " | ")
}
