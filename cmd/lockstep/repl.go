package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// TODO(owner): replace with the real command.
func newReplCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "repl",
		Hidden: true,
		RunE:   func(*cobra.Command, []string) error { return errors.New("repl: not built yet") },
	}
}
