package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/lockstep-ha/lockstep/config"
	"github.com/lockstep-ha/lockstep/lsync"
)

func newCheckCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "check -c FILE",
		Short: "Validate a configuration file (exit 0 valid, 2 invalid)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := config.Load(path)
			if err != nil {
				return usageError(err)
			}
			for _, w := range configWarnings(f) {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: warning: %s\n", f.Path, w)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (node %s: %d sync job(s), repl %s, cluster %s)\n",
				f.Path, f.Node, len(f.Sync), present(f.Repl != nil), present(f.Cluster != nil))
			if f.Cluster != nil {
				for _, d := range f.Cluster.Deprecations() {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: warning: cluster.%s\n", f.Path, d)
				}
			}
			return nil
		},
	}
	addConfigFlag(cmd, &path)
	return cmd
}

// configWarnings lists valid but risky settings.
func configWarnings(f *config.File) []string {
	var out []string
	for i, j := range f.Sync {
		for k, t := range j.Targets {
			if t.IsLocal() || t.User != "root" {
				continue
			}
			// SFTP resolves paths on the server, following symlinks: as
			// root, a symlink swapped into the peer's docroot between
			// lockstep's checks and a write can redirect it anywhere.
			switch t.Receiver {
			case lsync.ReceiverOff:
				out = append(out, fmt.Sprintf("sync[%d].targets[%d] (%s): connects as root over plain SFTP (receiver: off); "+
					"a symlink swapped into the peer's docroot at the wrong moment can redirect a write anywhere on that host. "+
					"Use receiver: on with lockstep installed on the peer, or a dedicated sync user with ChrootDirectory "+
					"and ForceCommand internal-sftp (README: threat model)", i, k, t.Name))
			case lsync.ReceiverAuto, "":
				// auto falls back to SFTP on any failure to start the
				// receiver (not installed, another protocol version during
				// a rolling upgrade): as root, that is the case above.
				out = append(out, fmt.Sprintf("sync[%d].targets[%d] (%s): connects as root with receiver: auto; "+
					"if the receiver cannot start on the peer (not installed, another version during an upgrade) "+
					"the target falls back to plain SFTP as root, where a symlink swapped into the peer's docroot at the wrong moment "+
					"can redirect a write anywhere on that host. Set receiver: on to refuse the fallback "+
					"(the target is then down until the receiver works; README: threat model)", i, k, t.Name))
			}
		}
	}
	return out
}

// addConfigFlag adds the -c/--config flag every config-driven command has.
func addConfigFlag(cmd *cobra.Command, path *string) {
	cmd.Flags().StringVarP(path, "config", "c", "/etc/lockstep/lockstep.yaml", "configuration file")
}

// loadConfig loads path, turning problems into exit code 2.
func loadConfig(path string) (*config.File, error) {
	f, err := config.Load(path)
	if err != nil {
		return nil, usageError(err)
	}
	return f, nil
}

func present(b bool) string {
	if b {
		return "configured"
	}
	return "absent"
}
