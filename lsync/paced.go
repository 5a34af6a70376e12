package lsync

import (
	"context"
	"sync"
	"time"
)

// DefaultVerifyRate bounds the periodic verification's listing of the
// target, in entries per second: a 100k-entry tree is verified in about
// five seconds of background work instead of a burst that competes with
// live changes and the peer's own load.
const DefaultVerifyRate = 20000

// paceEvery is how many entries go by between two checks of the rate.
const paceEvery = 256

// paced wraps a Walk callback so that the walk goes no faster than rate
// entries per second (rate <= 0: unpaced). Holding up the callback holds
// up the walk (its listings wait for room), so the peer is read at the
// paced rate too.
func paced(ctx context.Context, rate int, fn func(Entry) error) func(Entry) error {
	if rate <= 0 {
		return fn
	}
	var mu sync.Mutex
	var start time.Time
	n := 0
	return func(e Entry) error {
		mu.Lock()
		if start.IsZero() {
			start = time.Now()
		}
		n++
		var wait time.Duration
		if n%paceEvery == 0 {
			wait = time.Until(start.Add(time.Duration(n) * time.Second / time.Duration(rate)))
		}
		mu.Unlock()
		if wait > 0 && !sleepCtx(ctx, wait) {
			return ctx.Err()
		}
		return fn(e)
	}
}
