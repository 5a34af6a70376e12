package dashboard

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/integration/poll"
	"github.com/lockstep-ha/lockstep/internal/testbed"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 10*time.Second, what, cond)
}

// TestWatchInPseudoTerminal drives --watch in a real pty: it must refresh,
// exit on q, and leave the terminal exactly as it found it.
func TestWatchInPseudoTerminal(t *testing.T) {
	for _, key := range []string{"q", "\x03"} {
		t.Run(map[string]string{"q": "q", "\x03": "ctrl-c"}[key], func(t *testing.T) {
			ptmx, tty, err := pty.Open()
			if err != nil {
				t.Skipf("no pseudo-terminal: %v", err)
			}
			defer ptmx.Close()
			defer tty.Close()
			before, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
			if err != nil {
				t.Fatal(err)
			}
			flagsBefore, _ := unix.FcntlInt(tty.Fd(), unix.F_GETFL, 0)

			var screen testbed.Buffer
			copied := make(chan struct{})
			go func() {
				defer close(copied)
				_, _ = io.Copy(&screen, ptmx)
			}()

			var fetches atomic.Int32
			fetch := func(context.Context) (dbrepl.PairStatus, error) {
				st := healthy()
				if fetches.Add(1) > 1 {
					st = fencedBroken()
				}
				return st, nil
			}
			done := make(chan error, 1)
			go func() {
				done <- Watch(context.Background(), tty, tty, fetch, WatchOptions{Interval: 50 * time.Millisecond, Title: "test"})
			}()
			waitFor(t, "a refreshed frame", func() bool { return strings.Contains(screen.String(), "fenced db2") })
			during, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
			if err != nil {
				t.Fatal(err)
			}
			if during.Lflag&unix.ICANON != 0 {
				t.Error("terminal not in raw mode while watching")
			}
			if !strings.Contains(screen.String(), "\x1b[?1049h") || !strings.Contains(screen.String(), "\x1b[31m") {
				t.Error("no alternate screen or colour on a terminal")
			}
			if _, err := ptmx.Write([]byte(key)); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Watch: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Watch did not exit on the key press")
			}
			after, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
			if err != nil {
				t.Fatal(err)
			}
			if *after != *before {
				t.Errorf("terminal modes not restored:\nbefore %+v\nafter  %+v", before, after)
			}
			if flagsAfter, _ := unix.FcntlInt(tty.Fd(), unix.F_GETFL, 0); flagsAfter != flagsBefore {
				t.Errorf("file status flags changed: %#x → %#x", flagsBefore, flagsAfter)
			}
			waitFor(t, "the main screen back", func() bool { return strings.Contains(screen.String(), "\x1b[?1049l") })
			tty.Close()
			ptmx.Close()
			<-copied
		})
	}
}

func TestWatchPlainOutput(t *testing.T) {
	in, inw := io.Pipe()
	var out testbed.Buffer
	var n atomic.Int32
	fetch := func(context.Context) (dbrepl.PairStatus, error) {
		if n.Add(1) == 2 {
			return dbrepl.PairStatus{}, errors.New("db1: connection refused")
		}
		return healthy(), nil
	}
	done := make(chan error, 1)
	go func() {
		done <- Watch(context.Background(), in, &out, fetch, WatchOptions{Interval: 20 * time.Millisecond})
	}()
	waitFor(t, "three frames", func() bool { return n.Load() >= 3 })
	if _, err := inw.Write([]byte("x q")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	_ = inw.Close()
	s := out.String()
	if strings.Contains(s, "\x1b[") {
		t.Error("escape codes written to a non-terminal")
	}
	if !strings.Contains(s, "error: db1: connection refused") || !strings.Contains(s, "verdict: healthy") {
		t.Errorf("output:\n%s", s)
	}
}

func TestWatchStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out testbed.Buffer
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, strings.NewReader(""), &out, func(context.Context) (dbrepl.PairStatus, error) { return healthy(), nil },
			WatchOptions{Interval: 10 * time.Millisecond})
	}()
	waitFor(t, "a frame", func() bool { return strings.Contains(out.String(), "verdict") })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch ignored cancellation")
	}
}
