package testbed

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Proc is a child process started by a harness (a server of the testbed,
// a daemon of the playground or of a test, a benchmarked tool) and reaped
// in the background, so that its exit can be waited for with a timeout.
type Proc struct {
	Name string
	// LogPath receives the process's stdout and stderr; "" when the
	// caller routed them itself.
	LogPath string

	cmd  *exec.Cmd
	done chan struct{}
	err  error // the exit error; written before done is closed
}

// Start starts cmd, configured by the caller (arguments, environment,
// SysProcAttr). With a logPath, stdout and stderr are appended to it.
func Start(name, logPath string, cmd *exec.Cmd) (*Proc, error) {
	if logPath != "" {
		f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, err
		}
		// The child has its own descriptor once started.
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended, with its exit error.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// ExitCode is the process's exit code once it has ended (-1 when killed
// by a signal or still running).
func (p *Proc) ExitCode() int {
	if ended, _ := p.Exited(); !ended {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Wait waits up to timeout for the process to end; it reports whether it
// did, with its exit error.
func (p *Proc) Wait(timeout time.Duration) (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(timeout):
		return false, nil
	}
}

// Signal sends sig to the process and waits up to grace for it to end.
func (p *Proc) Signal(sig syscall.Signal, grace time.Duration) (bool, error) {
	if ended, err := p.Exited(); ended {
		return true, err
	}
	_ = p.cmd.Process.Signal(sig)
	return p.Wait(grace)
}

// Kill ends the process with SIGKILL and waits until it has been reaped.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Stop sends SIGTERM, then SIGKILL after grace. A process started in its
// own process group (Setpgid) is stopped with its whole group, so that
// what it spawned (lsyncd's rsync and ssh) goes too.
func (p *Proc) Stop(grace time.Duration) error {
	if ended, _ := p.Exited(); ended {
		return nil
	}
	kill := func(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }
	if a := p.cmd.SysProcAttr; a != nil && a.Setpgid {
		kill = func(sig syscall.Signal) { _ = syscall.Kill(-p.Pid(), sig) }
	}
	kill(syscall.SIGTERM)
	if ended, _ := p.Wait(grace); !ended {
		kill(syscall.SIGKILL)
		if ended, _ := p.Wait(10 * time.Second); !ended {
			return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.Name, p.Pid())
		}
	}
	// Stragglers of the group (an rsync child mid-transfer).
	if a := p.cmd.SysProcAttr; a != nil && a.Setpgid {
		kill(syscall.SIGKILL)
	}
	return nil
}

// LogTail returns the last n bytes of the log, from a line start, for
// error messages.
func (p *Proc) LogTail(n int) string {
	if p.LogPath == "" {
		return ""
	}
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return strings.TrimSpace(string(b))
}

// ErrIfExited returns an error naming the log tail when the process died.
func (p *Proc) ErrIfExited() error {
	if ended, err := p.Exited(); ended {
		return fmt.Errorf("%s exited early (%v): %s", p.Name, err, p.LogTail(600))
	}
	return nil
}
