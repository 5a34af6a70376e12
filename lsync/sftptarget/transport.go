package sftptarget

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/lockstep-ha/lockstep/lsync"
)

// transport is the SSH connection under a session (SFTP or receiver): it
// notices the peer going away, by the connection closing or by an
// unanswered keepalive, and marks the session dead.
type transport struct {
	name   string
	logger *slog.Logger
	ssh    *ssh.Client

	done      chan struct{}
	lost      chan struct{} // closed when the transport is gone
	closeOnce sync.Once
	wg        sync.WaitGroup

	mu   sync.Mutex
	dead error
}

func newTransport(c *Connector, client *ssh.Client) *transport {
	t := &transport{
		name:   c.cfg.Name,
		logger: c.logger,
		ssh:    client,
		done:   make(chan struct{}),
		lost:   make(chan struct{}),
	}
	t.wg.Add(2)
	go t.watchTransport()
	go t.keepalive(c.keepaliveInterval, c.keepaliveTimeout)
	return t
}

// watchTransport notices the TCP connection going away (peer restart, RST)
// even while no request is in flight.
func (s *transport) watchTransport() {
	defer s.wg.Done()
	err := s.ssh.Wait()
	select {
	case <-s.done:
	default:
		if err == nil {
			err = errors.New("connection closed by peer")
		}
		s.fail(err)
	}
}

func (s *transport) keepalive(interval, timeout time.Duration) {
	defer s.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		reply := make(chan error, 1)
		s.wg.Go(func() {
			// OpenSSH answers keepalive@openssh.com with a failure reply;
			// any reply proves the peer alive. SendRequest returns once
			// the connection is closed, so this goroutine ends with it.
			_, _, err := s.ssh.SendRequest("keepalive@openssh.com", true, nil)
			reply <- err
		})
		timer := time.NewTimer(timeout)
		select {
		case <-s.done:
			timer.Stop()
			return
		case err := <-reply:
			timer.Stop()
			if err != nil {
				s.fail(fmt.Errorf("keepalive: %w", err))
				return
			}
		case <-timer.C:
			s.fail(fmt.Errorf("keepalive: no answer within %s", timeout))
			return
		}
	}
}

// fail marks the session dead and tears the transport down, which makes
// every request in flight return at once.
func (s *transport) fail(err error) {
	s.mu.Lock()
	first := s.dead == nil
	if first {
		s.dead = err
	}
	s.mu.Unlock()
	if first {
		close(s.lost)
		s.logger.Warn("connection lost", "err", err)
		_ = s.ssh.Close()
	}
}

// Disconnected is closed once the session is unusable (peer gone,
// keepalive unanswered, or Close), so an idle worker can notice a dead
// peer without waiting for its next change.
func (s *transport) Disconnected() <-chan struct{} { return s.lost }

func (s *transport) deadErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dead
}

func (s *transport) disconnected(cause error) error {
	return fmt.Errorf("%w: target %s: %w", lsync.ErrDisconnected, s.name, cause)
}

func (s *transport) alive(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dead := s.deadErr(); dead != nil {
		return s.disconnected(dead)
	}
	return nil
}

// close ends the session: the connection goes first, since it unblocks a
// request send stuck on a peer that stopped reading, which closing a
// channel alone would wait for; then channels (closeChannels) and the
// transport's goroutines.
func (s *transport) close(closeChannels func()) {
	s.closeOnce.Do(func() {
		close(s.done)
		s.mu.Lock()
		if s.dead == nil {
			s.dead = errors.New("session closed")
			close(s.lost)
		}
		s.mu.Unlock()
		_ = s.ssh.Close()
		closeChannels()
	})
	s.wg.Wait()
}
