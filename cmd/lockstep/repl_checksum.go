package main

import (
	"database/sql"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/dbrepl/checksum"
)

// newReplChecksumCmd compares the data of both nodes down to the row.
// Exit codes: 0 consistent, 1 drift found, 2 error (bad input, a node
// unreachable, a table that could not be compared).
func newReplChecksumCmd() *cobra.Command {
	var path, database, table string
	var asJSON, debug bool
	opts := checksum.Options{}
	cmd := &cobra.Command{
		Use:   "checksum -c FILE [--database D [--table T]] [--json]",
		Short: "Compare the data of both nodes and name the rows that differ (exit 0 consistent, 1 drift, 2 error)",
		Long: `Compares every table (or the ones named) between the two nodes in primary-key
chunks sized to --chunk-time, hashing each chunk on both nodes at once. A chunk
that differs is compared again after each node has applied its peer's
transactions (MASTER_GTID_WAIT), so writes in flight are not reported; what
still differs is narrowed down to rows: the report names db.table, the primary
key, and the differing column values. Tables without a primary key are compared
as a whole (row multiset). The mysql, information_schema, performance_schema,
sys and lockstep schemas are skipped.

The configured user needs SELECT on the compared schemas.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := replConfig(path)
			if err != nil {
				return err
			}
			opts.Database, opts.Table = database, table
			opts.Logger = replLogger(cmd, debug)
			if !asJSON && isTTY(cmd.ErrOrStderr()) {
				opts.Progress = progressPrinter(cmd.ErrOrStderr())
			}
			var nodes [2]checksum.Node
			for i, nc := range f.Repl.Nodes {
				db, err := openForChecksum(nc, opts.Workers)
				if err != nil {
					return usageError(err)
				}
				defer db.Close()
				if err := db.PingContext(cmd.Context()); err != nil {
					return usageError(fmt.Errorf("node %s: %w", nc.Name, err))
				}
				nodes[i] = checksum.Node{Name: nc.Name, DB: db}
			}
			c, err := checksum.New(nodes[0], nodes[1], opts)
			if err != nil {
				return usageError(err)
			}
			res, err := c.Run(cmd.Context())
			if opts.Progress != nil {
				fmt.Fprint(cmd.ErrOrStderr(), "\r\x1b[K")
			}
			if err != nil {
				return usageError(err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				err = res.WriteJSON(out)
			} else {
				err = res.WriteText(out)
			}
			if err != nil {
				return usageError(err)
			}
			return checksumExit(res)
		},
	}
	addConfigFlag(cmd, &path)
	fl := cmd.Flags()
	fl.StringVar(&database, "database", "", "compare only this database")
	fl.StringVar(&table, "table", "", "compare only this table (with --database)")
	fl.BoolVar(&asJSON, "json", false, "print the result as JSON")
	fl.DurationVar(&opts.ChunkTime, "chunk-time", checksum.DefaultChunkTime, "target duration of one chunk's checksum")
	fl.IntVar(&opts.Workers, "workers", checksum.DefaultWorkers, "tables compared concurrently")
	fl.IntVar(&opts.Attempts, "attempts", checksum.DefaultAttempts, "comparisons of a differing chunk, after the nodes caught up, before it counts as drift")
	fl.IntVar(&opts.MaxRowsReported, "max-rows", checksum.DefaultMaxRowsReported, "differing rows listed per table (all are counted)")
	fl.BoolVar(&debug, "debug", false, "debug logging")
	return cmd
}

// checksumExit maps a result to the exit code: drift outranks errors,
// since it is the finding the command exists for.
func checksumExit(res *checksum.Result) error {
	if res.TablesDrifted > 0 {
		return silentExit(exitFailure)
	}
	for _, t := range res.Tables {
		if t.Status == checksum.StatusError {
			return silentExit(exitUsage)
		}
	}
	return nil
}

func openForChecksum(nc dbrepl.NodeConfig, workers int) (*sql.DB, error) {
	cfg, err := mysql.ParseDSN(nc.DSN)
	if err != nil {
		return nil, fmt.Errorf("node %s: dsn: not a valid DSN", nc.Name)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", nc.Name, err)
	}
	db := sql.OpenDB(conn)
	// Each worker holds a query per node, plus catch-up waits.
	db.SetMaxOpenConns(max(workers, 1)*2 + 2)
	db.SetMaxIdleConns(max(workers, 1)*2 + 2)
	return db, nil
}

func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progressPrinter redraws one status line, at most ten times a second.
func progressPrinter(w io.Writer) func(checksum.Progress) {
	var mu sync.Mutex
	var last time.Time
	return func(p checksum.Progress) {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(last) < 100*time.Millisecond && p.TablesDone < p.TablesTotal {
			return
		}
		last = time.Now()
		pct := ""
		if p.RowsEstimated > 0 {
			pct = fmt.Sprintf(" (~%d%%)", min(100, p.RowsDone*100/p.RowsEstimated))
		}
		fmt.Fprintf(w, "\r\x1b[K%d/%d tables, %d of ~%d rows%s  %s", p.TablesDone, p.TablesTotal, p.RowsDone, p.RowsEstimated, pct, p.Table)
	}
}
