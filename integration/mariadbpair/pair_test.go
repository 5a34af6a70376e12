package mariadbpair

import (
	"context"
	"os"
	"testing"
	"time"
)

func TestPairReplicatesBothWays(t *testing.T) {
	start := time.Now()
	p := Start(t)
	t.Logf("pair up in %s", time.Since(start))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	db1, db2 := p.Nodes[0], p.Nodes[1]
	if _, err := db1.DB.ExecContext(ctx, "CREATE DATABASE app"); err != nil {
		t.Fatal(err)
	}
	if _, err := db1.DB.ExecContext(ctx, "CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY, v TEXT)"); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitSynced(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, n := range p.Nodes {
		if _, err := n.DB.ExecContext(ctx, "INSERT INTO app.t (v) VALUES (?)", n.Name); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.WaitSynced(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, n := range p.Nodes {
		var c int
		if err := n.DB.QueryRowContext(ctx, "SELECT COUNT(*) FROM app.t").Scan(&c); err != nil {
			t.Fatal(err)
		}
		if c != 2 {
			t.Fatalf("%s has %d rows, want 2", n.Name, c)
		}
	}

	// The monitoring user works over TCP with the documented grants.
	mon := openMonitor(t, db2)
	if _, err := mon.ExecContext(ctx, "SET GLOBAL read_only=ON"); err != nil {
		t.Fatalf("monitor user cannot fence: %v", err)
	}
	if _, err := mon.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS lockstep"); err != nil {
		t.Fatal(err)
	}
	if _, err := mon.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS lockstep.hb (id INT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := mon.ExecContext(ctx, "INSERT INTO lockstep.hb VALUES (1)"); err != nil {
		t.Fatalf("monitor user cannot write while read_only: %v", err)
	}
	if _, err := mon.ExecContext(ctx, "SET GLOBAL read_only=OFF"); err != nil {
		t.Fatal(err)
	}
	rows, err := mon.QueryContext(ctx, "SHOW ALL SLAVES STATUS")
	if err != nil {
		t.Fatal(err)
	}
	rows.Close()

	// Restart after a crash keeps the port and resumes replication.
	if err := db2.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := db1.DB.ExecContext(ctx, "INSERT INTO app.t (v) VALUES ('while down')"); err != nil {
		t.Fatal(err)
	}
	if err := db2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := db2.WaitReplicating(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitSynced(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	dir := p.Dir
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("temp dir %s left behind", dir)
	}
}
