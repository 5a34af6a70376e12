package poll

import (
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestUntilReturnsOnceTheConditionHolds(t *testing.T) {
	var n atomic.Int32
	took := Until(t, 5*time.Second, "three checks", func() bool { return n.Add(1) >= 3 })
	if took <= 0 || took > time.Second {
		t.Errorf("took %s", took)
	}
}

func TestUntilFailsNamingWhat(t *testing.T) {
	rec := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Until(rec, 30*time.Millisecond, "the peer", func() bool { return false })
	}()
	<-done
	if !strings.Contains(rec.msg, "waiting for the peer") {
		t.Errorf("failure message %q does not name what was awaited", rec.msg)
	}
}

// recorder captures Fatalf and ends the goroutine as testing does.
type recorder struct {
	testing.TB
	msg string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
