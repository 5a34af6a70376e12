// Command lockstep keeps the nodes of a small web tier identical and
// writable: docroot sync, master-master replication supervision and the
// per-node HA daemon in one binary.
//
// `repl supervise` and `run` build the replication supervisor the same
// way (newReplSupervisor: the supervisor with its write-conflict detector
// plugged in); the daemon restarts it by calling its Run again. The
// playground's servers and processes come from internal/testbed, which
// keeps the test framework out of this binary.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// Exit codes shared by every subcommand, so that monitoring checks and
// scripts can rely on them.
const (
	exitOK      = 0
	exitFailure = 1 // the job ran and found a problem (drift, unhealthy)
	exitUsage   = 2 // bad input: flags, config, unreadable files
)

// exitError carries an exit code through cobra's error return.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError marks err as bad input (exit 2).
func usageError(err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: exitUsage, err: err}
}

// failure marks err as a job-level failure (exit 1).
func failure(err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: exitFailure, err: err}
}

// silentExit ends with code without printing anything more.
type silentExit int

func (s silentExit) Error() string { return fmt.Sprintf("exit %d", int(s)) }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "lockstep",
		Short:         "Keep the nodes of a small web tier identical and writable",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError(err) })
	root.AddCommand(
		newVersionCmd(),
		newCheckCmd(),
		newSyncCmd(),
		newReplCmd(),
		newRunCmd(),
		newStatusCmd(),
		newClearCmd(),
		newPlaygroundCmd(),
		newReceiveCmd(),
	)
	return root
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	os.Exit(exitCodeFor(err))
}

func exitCodeFor(err error) int {
	if err == nil {
		return exitOK
	}
	var s silentExit
	if !errors.As(err, &s) {
		fmt.Fprintln(os.Stderr, "lockstep:", err)
	}
	return exitCodeOf(err)
}

// exitCodeOf maps an error returned by a command to the process exit code.
func exitCodeOf(err error) int {
	var s silentExit
	if errors.As(err, &s) {
		return int(s)
	}
	var e *exitError
	if errors.As(err, &e) {
		return e.code
	}
	// cobra reports unknown commands and args as plain errors.
	return exitUsage
}
