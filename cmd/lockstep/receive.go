package main

import (
	"context"
	"errors"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/lockstep-ha/lockstep/lsync/receiver"
)

func newReceiveCmd() *cobra.Command {
	var root string
	cmd := &cobra.Command{
		Use:   "receive --root PATH",
		Short: "Apply a peer's sync operations confined to PATH (run by lockstep sync over SSH)",
		Long: `receive is started by a peer's lockstep sync over an SSH exec channel and
speaks lockstep's binary protocol on stdin/stdout. Every path is resolved
below --root without following any symlink, so a hostile or corrupted
docroot on this node can make an operation fail but never redirect it
outside the root. Restrict the sync key to it in authorized_keys:

  command="lockstep receive --root /var/www",restrict ssh-ed25519 AAAA...

Diagnostics go to stderr, which the peer logs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))
			err := receiver.Serve(cmd.Context(), os.Stdin, os.Stdout, root, logger)
			if errors.Is(err, context.Canceled) {
				return nil // SIGTERM: the peer reconnects and catches up
			}
			return failure(err)
		},
	}
	cmd.Flags().StringVar(&root, "root", "", "the directory every operation is confined to (absolute)")
	_ = cmd.MarkFlagRequired("root")
	return cmd
}
