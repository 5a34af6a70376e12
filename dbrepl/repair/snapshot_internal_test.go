package repair

import (
	"context"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
)

// TestQuietGTID: on a source that binlogged nothing since the snapshot,
// @@gtid_binlog_pos is the snapshot's position as BINLOG_GTID_POS gives
// it (both domains of the pair); after a write it is not used.
func TestQuietGTID(t *testing.T) {
	p := mariadbpair.Start(t)
	ctx := context.Background()
	db1 := p.Nodes[0].DB
	for _, q := range []struct {
		db *mariadbpair.Node
		s  string
	}{{p.Nodes[0], "CREATE DATABASE app"}, {p.Nodes[0], "CREATE TABLE app.t (id INT PRIMARY KEY)"}, {p.Nodes[1], "INSERT INTO app.t VALUES (2)"}, {p.Nodes[0], "INSERT INTO app.t VALUES (1)"}} {
		if _, err := q.db.DB.ExecContext(ctx, q.s); err != nil {
			t.Fatalf("%s: %v", q.s, err)
		}
		if err := p.WaitSynced(ctx, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	snap, at, err := openSnapshot(ctx, db1)
	if err != nil {
		t.Fatal(err)
	}
	defer closeSnapshot(snap)
	var want string
	if err := db1.QueryRowContext(ctx, "SELECT BINLOG_GTID_POS(?, ?)", at.file, at.pos).Scan(&want); err != nil {
		t.Fatal(err)
	}
	got, ok := quietGTID(ctx, db1, at)
	if !ok || got != want {
		t.Fatalf("quiet source: %q %v, want %q", got, ok, want)
	}
	if g, err := snapshotGTID(ctx, db1, at)(); err != nil || g != want {
		t.Fatalf("snapshotGTID: %q %v, want %q", g, err, want)
	}
	if _, err := db1.ExecContext(ctx, "INSERT INTO app.t VALUES (3)"); err != nil {
		t.Fatal(err)
	}
	if got, ok := quietGTID(ctx, db1, at); ok {
		t.Fatalf("after a write: %q taken as the snapshot's position", got)
	}
	if g, err := snapshotGTID(ctx, db1, at)(); err != nil || g != want {
		t.Fatalf("snapshotGTID after a write: %q %v, want %q", g, err, want)
	}
}
