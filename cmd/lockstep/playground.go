package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// TODO(owner): replace with the real command.
func newPlaygroundCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "playground",
		Hidden: true,
		RunE:   func(*cobra.Command, []string) error { return errors.New("playground: not built yet") },
	}
}
