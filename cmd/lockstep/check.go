package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/lockstep-ha/lockstep/config"
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
