//go:build !linux

package receiver

import (
	"context"
	"errors"
	"io"
	"log/slog"
)

// Serve needs openat2 and the *at system calls as Linux has them; the
// client side works anywhere.
func Serve(context.Context, io.ReadCloser, io.Writer, string, *slog.Logger) error {
	return errors.New("lockstep receive runs on Linux only")
}
