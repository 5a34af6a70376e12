package checksum

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// gtidPos is a MariaDB GTID position: per domain, the server and sequence
// of the last transaction.
type gtidPos map[uint32]gtidEntry

type gtidEntry struct {
	Server uint32
	Seq    uint64
}

func parseGTIDPos(s string) (gtidPos, error) {
	p := gtidPos{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		f := strings.Split(part, "-")
		if len(f) != 3 {
			return nil, fmt.Errorf("malformed GTID %q", part)
		}
		d, err1 := strconv.ParseUint(f[0], 10, 32)
		sv, err2 := strconv.ParseUint(f[1], 10, 32)
		seq, err3 := strconv.ParseUint(f[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("malformed GTID %q", part)
		}
		p[uint32(d)] = gtidEntry{Server: uint32(sv), Seq: seq}
	}
	return p, nil
}

// missingFrom is the part of p that have (a node's gtid_current_pos) has
// not reached, as a GTID list for MASTER_GTID_WAIT. Domains the waiting
// node already covers, its own writes included, are left out: waiting for
// them would block, because MASTER_GTID_WAIT only tracks replicated
// transactions.
func (p gtidPos) missingFrom(have gtidPos) string {
	var parts []string
	for d, e := range p {
		if h, ok := have[d]; ok && h.Seq >= e.Seq {
			continue
		}
		parts = append(parts, fmt.Sprintf("%d-%d-%d", d, e.Server, e.Seq))
	}
	return strings.Join(parts, ",")
}

type positions struct{ binlog, current gtidPos }

func readPositions(ctx context.Context, db *sql.DB) (positions, error) {
	var b, c string
	if err := db.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos, @@gtid_current_pos").Scan(&b, &c); err != nil {
		return positions{}, err
	}
	bp, err := parseGTIDPos(b)
	if err != nil {
		return positions{}, fmt.Errorf("gtid_binlog_pos: %w", err)
	}
	cp, err := parseGTIDPos(c)
	if err != nil {
		return positions{}, fmt.Errorf("gtid_current_pos: %w", err)
	}
	return positions{binlog: bp, current: cp}, nil
}

// errNotCaughtUp means a node did not apply its peer's transactions within
// the wait: replication is stopped or far behind.
type errNotCaughtUp struct {
	node, peer string
	wait       time.Duration
}

func (e *errNotCaughtUp) Error() string {
	return fmt.Sprintf("%s did not apply %s's transactions within %s (replication stopped or lagging); rechecks are not at a consistent point", e.node, e.peer, e.wait)
}

// catchUp makes each node apply everything its peer had in its binlog at
// the moment of the call, so that a chunk read right after compares the
// same history on both sides.
func (c *Checker) catchUp(ctx context.Context, wait time.Duration) error {
	var pos [2]positions
	g, gctx := errgroup.WithContext(ctx)
	for i := range c.nodes {
		g.Go(func() error {
			p, err := readPositions(gctx, c.nodes[i].DB)
			if err != nil {
				return fmt.Errorf("%s: reading GTID positions: %w", c.nodes[i].Name, err)
			}
			pos[i] = p
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	g, gctx = errgroup.WithContext(ctx)
	for i := range c.nodes {
		peer := 1 - i
		want := pos[peer].binlog.missingFrom(pos[i].current)
		if want == "" {
			continue
		}
		g.Go(func() error {
			var r sql.NullInt64
			if err := c.nodes[i].DB.QueryRowContext(gctx, "SELECT MASTER_GTID_WAIT(?, ?)", want, wait.Seconds()).Scan(&r); err != nil {
				return fmt.Errorf("%s: MASTER_GTID_WAIT: %w", c.nodes[i].Name, err)
			}
			if !r.Valid || r.Int64 != 0 {
				return &errNotCaughtUp{node: c.nodes[i].Name, peer: c.nodes[peer].Name, wait: wait}
			}
			return nil
		})
	}
	return g.Wait()
}
