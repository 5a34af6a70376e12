package repair

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
	"golang.org/x/sync/errgroup"

	"github.com/lockstep-ha/lockstep/dbrepl/checksum"
)

// Verification against the snapshot (the default): once every table is
// fixed, and before the target replicates again, the target is hashed in
// full — every chunk of every table — and compared with the sums the
// compare pass took of the source's snapshot. That is the same chunk
// checksum as a live `repl checksum`, at the one point in time where the
// target must equal the source exactly: the snapshot its replication
// resumes from. It reads the source no second time (the live checksum
// read every row of the serving writer again, and waited for catch-up),
// which made the verification as long as the compare itself (issue 17:
// repair ≤ 0.5× pt-table-sync's time). --verify live keeps the
// end-to-end checksum of both live nodes after replication resumed.

// verifyWorkers bounds the tables hashed at once on the target.
const verifyWorkers = 2

// verifyPlan is what one table's verification compares against.
type verifyPlan struct {
	name    string // db.table
	db      string
	table   string
	dropped bool               // the table must be gone
	src     *checksum.Table    // the source's definition (rows method)
	create  string             // its SHOW CREATE TABLE (see showCreate)
	chunks  []checksum.Chunk   // rows method: every chunk's source sums
	whole   *checksum.WholeSum // reseed: the whole table's source sums
	// guarded: the table was compared and fixed under its guard's locks
	// and its fixed chunks hashed again there (guard.go); guardDiffer of
	// those guardChunks still differed.
	guarded                  bool
	guardDiffer, guardChunks int
	// fixTime: the table's fixes and their verification (rows method).
	fixTime time.Duration
	// copies is the run's semaphore of copyWorkers copy slots.
	copies chan struct{}
}

// reseedPlanned reseeds and takes the source's whole-table sums from the
// same snapshot for the verification.
func reseedPlanned(ctx context.Context, snap *sql.Conn, w *sql.Conn, t *checksum.Table, tr *TableReport, progress func(int64), plan *verifyPlan) error {
	plan.src, plan.chunks = t, nil
	create, err := showCreate(ctx, snap, t.Qualified())
	if err != nil {
		return err
	}
	plan.create = create
	if plan.copies != nil {
		select {
		case plan.copies <- struct{}{}:
			defer func() { <-plan.copies }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	ws, err := reseed(ctx, snap, w, t, tr, progress)
	if err != nil {
		return err
	}
	plan.whole = &ws
	return nil
}

// verifySnapshot checks the target against the plans and returns the
// tables that differ, each with why.
func verifySnapshot(ctx context.Context, tgt *sql.DB, plans []*verifyPlan) ([]string, error) {
	var mu sync.Mutex
	var bad []string
	fail := func(format string, args ...any) {
		mu.Lock()
		bad = append(bad, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(verifyWorkers)
	for _, p := range plans {
		g.Go(func() error {
			// SHOW CREATE TABLE alone tells the definition (columns, keys,
			// options) without the information_schema reads of loading
			// the table again; the source's definition then builds the
			// queries, being the same.
			qualified := quote(p.db) + "." + quote(p.table)
			create, err := showCreate(gctx, tgt, qualified)
			var me *mysql.MySQLError
			gone := errors.As(err, &me) && me.Number == 1146
			if err != nil && !gone {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			switch {
			case p.dropped:
				if !gone {
					fail("%s: still on the target", p.name)
				}
				return nil
			case gone:
				fail("%s: missing on the target", p.name)
				return nil
			case create != p.create:
				fail("%s: definitions differ from the snapshot's (SHOW CREATE TABLE)", p.name)
				return nil
			case p.whole != nil:
				ws, err := p.src.Whole(gctx, tgt)
				if err != nil {
					return err
				}
				if ws != *p.whole {
					fail("%s: rows differ from the snapshot after the copy", p.name)
				}
				return nil
			}
			if p.guarded {
				if p.guardDiffer > 0 {
					fail("%s: %d of %d fixed chunks differ from the snapshot", p.name, p.guardDiffer, p.guardChunks)
				}
				return nil
			}
			n, err := p.src.VerifyChunks(gctx, tgt, p.chunks)
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			if n > 0 {
				fail("%s: %d of %d chunks differ from the snapshot", p.name, n, len(p.chunks))
			}
			return nil
		})
	}
	err := g.Wait()
	return bad, err
}

// runSnapshotVerify fills the report's verification from the plans.
func runSnapshotVerify(ctx context.Context, tgt node, plans []*verifyPlan, rep *Report) error {
	start := time.Now()
	bad, err := verifySnapshot(ctx, tgt.db, plans)
	rep.VerifyTime = time.Since(start)
	if err != nil {
		return fmt.Errorf("%s: verifying against the snapshot: %w", tgt.name, err)
	}
	rep.Verified = len(bad) == 0
	rep.VerifiedAgainst = "snapshot"
	for _, b := range bad {
		rep.Notes = append(rep.Notes, "verify: "+b)
	}
	return nil
}
