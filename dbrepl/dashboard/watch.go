package dashboard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/lockstep-ha/lockstep/dbrepl"
)

// Fetcher returns the current status of the pair.
type Fetcher func(ctx context.Context) (dbrepl.PairStatus, error)

// WatchOptions tune Watch.
type WatchOptions struct {
	Interval time.Duration
	// Color forces colour on or off; nil means "when out is a terminal".
	Color *bool
	// Title is shown in the first line (e.g. the config file or URL).
	Title string
	// Now is the clock, for tests.
	Now func() time.Time
}

// Keys that end Watch: q, Q, Ctrl-C (raw mode delivers it as a byte, not
// a signal) and Ctrl-D.
func quitKey(b byte) bool { return b == 'q' || b == 'Q' || b == 3 || b == 4 }

// Watch refreshes the dashboard every interval until q or Ctrl-C, or ctx
// ends. When in is a terminal it is put into raw mode so a single key
// press is seen, and restored on every return path; when out is a
// terminal the alternate screen is used, so the shell's screen comes back
// unchanged. A failing fetch is shown, and the last good status kept.
func Watch(ctx context.Context, in io.Reader, out io.Writer, fetch Fetcher, opts WatchOptions) (err error) {
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	outTTY := isTerminal(out)
	color := outTTY
	if opts.Color != nil {
		color = *opts.Color
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	raw := false
	keys := make(chan byte, 16)
	var readers sync.WaitGroup
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		old, err := term.MakeRaw(int(f.Fd()))
		if err != nil {
			return fmt.Errorf("terminal raw mode: %w", err)
		}
		raw = true
		defer func() {
			if rerr := term.Restore(int(f.Fd()), old); rerr != nil && err == nil {
				err = fmt.Errorf("restore terminal: %w", rerr)
			}
		}()
		kr, err := newKeyReader(f)
		if err != nil {
			return err
		}
		readers.Add(1)
		go func() {
			defer readers.Done()
			kr.run(ctx, keys)
		}()
		// Stop the reader before the terminal mode is restored.
		defer func() { cancel(); readers.Wait(); kr.close() }()
	} else if in != nil {
		// A pipe or file: keys are honoured too, and end of input is not
		// a request to quit (`repl status --watch </dev/null` runs until
		// interrupted). The goroutine ends when in does.
		go func() {
			buf := make([]byte, 64)
			for {
				n, err := in.Read(buf)
				for _, b := range buf[:n] {
					select {
					case keys <- b:
					case <-ctx.Done():
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}

	write := func(s string) error {
		if raw {
			// Raw mode disables output post-processing: \n no longer
			// returns the carriage.
			s = strings.ReplaceAll(s, "\n", "\r\n")
		}
		_, err := io.WriteString(out, s)
		return err
	}
	if outTTY {
		if err := write("\x1b[?1049h\x1b[?25l"); err != nil {
			return err
		}
		defer func() { _ = write("\x1b[?25h\x1b[?1049l") }()
	}

	var prev, last *dbrepl.PairStatus
	ticker := time.NewTicker(opts.Interval)
	defer ticker.Stop()
	for {
		fctx, fcancel := context.WithTimeout(ctx, max(opts.Interval, 2*time.Second))
		st, ferr := fetch(fctx)
		fcancel()
		if ctx.Err() != nil {
			return nil
		}
		var frame bytes.Buffer
		if outTTY {
			frame.WriteString("\x1b[H\x1b[2J")
		}
		title := opts.Title
		if title != "" {
			title = " " + title
		}
		fmt.Fprintf(&frame, "lockstep repl status%s — every %s — %s — press q to quit\n\n", title, opts.Interval, opts.Now().Format("15:04:05"))
		if ferr == nil {
			prev, last = last, &st
		}
		if last != nil {
			_ = RenderTable(&frame, *last, Options{Color: color, Previous: prev})
		}
		if ferr != nil {
			msg := "error: " + ferr.Error()
			if color {
				msg = ansiRed + msg + ansiReset
			}
			fmt.Fprintf(&frame, "\n%s\n", msg)
		}
		if !outTTY {
			frame.WriteString("\n")
		}
		if err := write(frame.String()); err != nil {
			return err
		}
		for waiting := true; waiting; {
			select {
			case <-ctx.Done():
				return nil
			case k := <-keys:
				if quitKey(k) {
					return nil
				}
			case <-ticker.C:
				waiting = false
			}
		}
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// keyReader reads a terminal through a duplicate of its descriptor,
// polling with a short timeout so that it notices cancellation instead of
// staying blocked in read(2) after Watch returned. The descriptor's
// blocking mode is never touched: it is shared with the shell.
type keyReader struct {
	fd int
}

func newKeyReader(tty *os.File) (*keyReader, error) {
	fd, err := syscall.Dup(int(tty.Fd()))
	if err != nil {
		return nil, fmt.Errorf("dup terminal: %w", err)
	}
	return &keyReader{fd: fd}, nil
}

func (k *keyReader) run(ctx context.Context, keys chan<- byte) {
	buf := make([]byte, 64)
	for ctx.Err() == nil {
		fds := []unix.PollFd{{Fd: int32(k.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 100)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		if n == 0 || fds[0].Revents == 0 {
			continue
		}
		if fds[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 && fds[0].Revents&unix.POLLIN == 0 {
			return // the terminal went away
		}
		r, err := unix.Read(k.fd, buf)
		if err != nil && !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN) {
			return
		}
		for _, b := range buf[:max(r, 0)] {
			select {
			case keys <- b:
			case <-ctx.Done():
				return
			}
		}
	}
}

func (k *keyReader) close() { _ = unix.Close(k.fd) }
