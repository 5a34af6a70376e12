package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// TODO(owner): replace with the real command.
func newStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "status",
		Hidden: true,
		RunE:   func(*cobra.Command, []string) error { return errors.New("status: not built yet") },
	}
}
