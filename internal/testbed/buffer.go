package testbed

import (
	"bytes"
	"sync"
)

// Buffer collects what goroutines or child processes write concurrently
// (a logger, a terminal, a server's stderr). A positive Limit drops what
// comes once the buffer holds more than that many bytes, so a chatty
// process cannot eat memory.
type Buffer struct {
	Limit int

	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.Limit > 0 && b.b.Len() > b.Limit {
		return len(p), nil
	}
	return b.b.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
