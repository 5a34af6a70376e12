// Package mariadbpair is the testing face of internal/testbed/mariadb:
// Start runs a real MariaDB GTID master-master pair for the duration of a
// test, skipping the test where MariaDB is not installed. Everything else
// is the testbed's.
package mariadbpair

import (
	"context"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/internal/testbed/mariadb"
)

// Account names of the pair.
const (
	MonitorUser = mariadb.MonitorUser
	ReplUser    = mariadb.ReplUser
)

type (
	// Pair is two running nodes replicating from each other.
	Pair = mariadb.Pair
	// Node is one mariadbd process.
	Node = mariadb.Node
	// Options tune the pair. The zero value is ready to use.
	Options = mariadb.Options
	// ReplicationState is the subset of SHOW SLAVE STATUS the harness needs.
	ReplicationState = mariadb.ReplicationState
)

// Start is mariadb.New for tests: it skips the test when MariaDB is not
// installed and closes the pair on cleanup.
func Start(t testing.TB, opts ...Options) *Pair {
	t.Helper()
	if err := mariadb.Available(); err != nil {
		t.Skipf("MariaDB pair unavailable: %v", err)
	}
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := mariadb.New(ctx, o)
	if err != nil {
		t.Fatalf("start MariaDB pair: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close MariaDB pair: %v", err)
		}
	})
	return p
}
