package sftptarget

import (
	"encoding/binary"
	"io"
	"sync"
	"time"
)

// requestCoalescer sends the SFTP request stream of one channel from a
// goroutine of its own, so that requests issued while a send is under way
// leave together in the next one.
//
// Every write on an SSH channel becomes at least one SSH packet, encrypted
// and sent by its own syscall, and OpenSSH's sftp-server answers what it
// read in one go with one write. With one write per request, the six
// requests of each small file cost twelve packets and twelve syscalls on
// each side; under load the coalescer packs dozens of requests into one
// channel write, and the server's replies come back packed the same way.
// An idle channel sees no added delay: a lone request is handed to the
// sender at once.
//
// pkg/sftp writes a request as a header and then a payload; only whole
// requests are handed on, so a request never straddles two sends.
type requestCoalescer struct {
	w     io.Writer
	close func() error // closes the channel; safe during a send, which it unblocks

	mu      sync.Mutex
	cond    *sync.Cond // buf gained whole requests, a send took them, or closing
	buf     []byte     // requests waiting; buf[:ready] are whole
	ready   int
	free    []byte // the buffer of the previous send, for reuse
	err     error  // the first failed send; every later Write returns it
	closing bool

	closeOnce sync.Once
	closeErr  error
	done      chan struct{} // the sender has returned
}

// maxQueued bounds the whole requests waiting for the sender: a writer
// (pkg/sftp, holding its connection lock) waits beyond it, which keeps the
// SSH channel's flow control in force.
const maxQueued = 256 << 10

// While requests stream (the previous send left less than corkWindow
// ago), the sender waits corkDelay before sending less than corkBytes:
// each channel write costs a system call and a wake-up on both sides,
// far more than the wait. A request after a quiet spell goes at once.
const (
	corkWindow = 500 * time.Microsecond
	corkDelay  = 50 * time.Microsecond
	corkBytes  = 16 << 10
)

// maxKeptBuffer is the largest buffer kept for reuse after a send, so that
// one burst of large writes does not pin memory for the session's life.
const maxKeptBuffer = 1 << 20

func newRequestCoalescer(w io.Writer, close func() error) *requestCoalescer {
	c := &requestCoalescer{w: w, close: close, done: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	go c.send()
	return c
}

// Write queues b; it never blocks on the network unless maxQueued bytes
// are already waiting.
func (c *requestCoalescer) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && !c.closing && c.ready >= maxQueued {
		c.cond.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	if c.closing {
		return 0, io.ErrClosedPipe
	}
	c.buf = append(c.buf, b...)
	before := c.ready
	for len(c.buf)-c.ready >= 4 {
		n := int(binary.BigEndian.Uint32(c.buf[c.ready:])) + 4
		if len(c.buf)-c.ready < n {
			break
		}
		c.ready += n
	}
	if c.ready > before {
		c.cond.Broadcast()
	}
	return len(b), nil
}

// send is the only goroutine that writes to the channel.
func (c *requestCoalescer) send() {
	defer close(c.done)
	var lastSend time.Time
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for c.ready == 0 && !c.closing && c.err == nil {
			c.cond.Wait()
		}
		if c.closing || c.err != nil {
			return
		}
		if c.ready < corkBytes && time.Since(lastSend) < corkWindow {
			// Requests are streaming: let a few more join this send.
			c.mu.Unlock()
			time.Sleep(corkDelay)
			c.mu.Lock()
			if c.closing || c.err != nil {
				return
			}
		}
		out := c.buf[:c.ready]
		c.buf = append(c.free[:0], c.buf[c.ready:]...)
		c.free = nil
		c.ready = 0
		c.cond.Broadcast() // room for writers held back by maxQueued
		c.mu.Unlock()
		_, err := c.w.Write(out)
		lastSend = time.Now()
		c.mu.Lock()
		if cap(out) <= maxKeptBuffer {
			c.free = out[:0]
		}
		if err != nil {
			c.err = err
			c.cond.Broadcast()
			return
		}
	}
}

// Close closes the channel at once: requests still queued have callers
// waiting for replies, and those fail as the connection goes.
func (c *requestCoalescer) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closing = true
		c.cond.Broadcast()
		c.mu.Unlock()
		c.closeErr = c.close()
		<-c.done
	})
	return c.closeErr
}
