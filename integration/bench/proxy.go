package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// CountingProxy sits on loopback in front of sshd and counts the bytes of
// every connection in both directions. It is the same for both tools, needs
// no iptables, and doubles as the "peer down" switch: Stop closes the
// listener and cuts every open connection, exactly what a client sees when
// the peer's sshd goes away.
type CountingProxy struct {
	backend string
	addr    string // fixed after the first Start so that restarts keep the port

	up, down atomic.Int64 // client→server, server→client
	conns    atomic.Int64 // accepted connections

	mu      sync.Mutex
	ln      net.Listener
	open    map[net.Conn]struct{}
	wg      sync.WaitGroup
	running bool
}

func NewCountingProxy(backend string) *CountingProxy {
	return &CountingProxy{backend: backend, addr: "127.0.0.1:0", open: map[net.Conn]struct{}{}}
}

// Start listens (on the same port as before after a Stop).
func (p *CountingProxy) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running {
		return errors.New("proxy already running")
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("proxy listen %s: %w", p.addr, err)
	}
	p.ln = ln
	p.addr = ln.Addr().String()
	p.running = true
	p.wg.Add(1)
	go p.acceptLoop(ln)
	return nil
}

// Addr is host:port to connect to.
func (p *CountingProxy) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addr
}

// Port is the listening port.
func (p *CountingProxy) Port() int {
	_, port, _ := net.SplitHostPort(p.Addr())
	var n int
	fmt.Sscan(port, &n)
	return n
}

// Stop closes the listener and every connection, and waits for the copy
// goroutines to end.
func (p *CountingProxy) Stop() {
	p.mu.Lock()
	if !p.running {
		p.mu.Unlock()
		return
	}
	p.running = false
	p.ln.Close()
	for c := range p.open {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// Counters returns bytes client→server, server→client and connections accepted.
func (p *CountingProxy) Counters() (up, down, conns int64) {
	return p.up.Load(), p.down.Load(), p.conns.Load()
}

func (p *CountingProxy) acceptLoop(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if !p.running {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.open[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		p.conns.Add(1)
		go p.serve(c)
	}
}

func (p *CountingProxy) serve(c net.Conn) {
	defer p.wg.Done()
	b, err := net.Dial("tcp", p.backend)
	if err != nil {
		p.forget(c)
		c.Close()
		return
	}
	p.mu.Lock()
	if !p.running {
		p.mu.Unlock()
		b.Close()
		c.Close()
		return
	}
	p.open[b] = struct{}{}
	p.mu.Unlock()
	var copies sync.WaitGroup
	copies.Add(2)
	go func() {
		defer copies.Done()
		pipe(b, c, &p.up)
	}()
	go func() {
		defer copies.Done()
		pipe(c, b, &p.down)
	}()
	copies.Wait()
	p.forget(c)
	p.forget(b)
	c.Close()
	b.Close()
}

func (p *CountingProxy) forget(c net.Conn) {
	p.mu.Lock()
	delete(p.open, c)
	p.mu.Unlock()
}

// pipe copies src to dst counting bytes, then half-closes dst so that the
// other direction can drain (ssh relies on orderly EOF).
func pipe(dst, src net.Conn, n *atomic.Int64) {
	buf := make([]byte, 64<<10)
	for {
		k, err := src.Read(buf)
		if k > 0 {
			n.Add(int64(k))
			if _, werr := dst.Write(buf[:k]); werr != nil {
				src.Close()
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
					return
				}
			}
			dst.Close()
			return
		}
	}
}
