package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lockstep-ha/lockstep/orchestrator"
)

func newClearCmd() *cobra.Command {
	var path, addr string
	var all bool
	cmd := &cobra.Command{
		Use:   "clear -c FILE (RESOURCE | --all)",
		Short: "Lift a resource failure that keeps this node from the writer role",
		Long: `clear tells the running 'lockstep run' that a resource it gave the writer role
up for is fixed: the failure and the resource's restart count are forgotten, and
the node is eligible for the writer role again (unless something else, e.g. a
failing track, prevents it). RESOURCE is the name 'lockstep status' shows (the
script path, or ADDRESS/PREFIX@DEV). Without clear, a failure expires after the
resource's failure_timeout.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (len(args) == 1) == all {
				return usageError(errors.New("name one RESOURCE or give --all"))
			}
			if addr == "" {
				f, err := loadConfig(path)
				if err != nil {
					return err
				}
				addr = f.Listen
				if addr == "" {
					addr = orchestrator.DefaultListen
				}
			}
			q := url.Values{}
			if all {
				q.Set("all", "1")
			} else {
				q.Set("resource", args[0])
			}
			out, code, err := postClear(cmd.Context(), addr, q)
			if err != nil {
				return usageError(err)
			}
			if code != http.StatusOK {
				return failure(fmt.Errorf("clear: %s", strings.TrimSpace(out)))
			}
			fmt.Fprint(cmd.OutOrStdout(), out)
			return nil
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().BoolVar(&all, "all", false, "clear every recorded resource failure")
	cmd.Flags().StringVar(&addr, "addr", "", "daemon address (default: listen from the config file)")
	return cmd
}

func postClear(ctx context.Context, listen string, q url.Values) (string, int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	u := "http://" + dialAddr(listen) + "/clear?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("cannot reach lockstep run at %s (is it running? listen: in the config): %w", listen, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return string(b), resp.StatusCode, err
}
