package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// TODO(owner): replace with the real command.
func newSyncCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "sync",
		Hidden: true,
		RunE:   func(*cobra.Command, []string) error { return errors.New("sync: not built yet") },
	}
}
