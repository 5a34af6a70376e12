package checksum_test

import (
	"context"
	"fmt"
	"os/exec"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl/checksum"
	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
)

// BenchmarkChecksumSysbench compares 4 sysbench tables of 250,000 rows
// (the reference load) and, when percona-toolkit is installed,
// times pt-table-checksum on the same pair for comparison:
//
//	go test -run '^$' -bench ChecksumSysbench -benchtime 3x ./dbrepl/checksum/
func BenchmarkChecksumSysbench(b *testing.B) {
	if _, err := exec.LookPath("sysbench"); err != nil {
		b.Skip("sysbench not installed")
	}
	p := mariadbpair.Start(b, mariadbpair.Options{ExtraArgs: []string{"--innodb-buffer-pool-size=512M"}})
	ctx := context.Background()
	db1 := p.Nodes[0]
	if _, err := db1.DB.Exec("CREATE DATABASE sbtest"); err != nil {
		b.Fatal(err)
	}
	prep := exec.Command("sysbench", "oltp_read_write", "--db-driver=mysql", "--mysql-socket="+db1.Socket,
		"--mysql-user=root", "--mysql-db=sbtest", "--tables=4", "--table-size=250000", "prepare")
	if out, err := prep.CombinedOutput(); err != nil {
		b.Fatalf("sysbench prepare: %v\n%s", err, out)
	}
	if err := p.WaitSynced(ctx, 5*time.Minute); err != nil {
		b.Fatal(err)
	}
	c, err := checksum.New(checksum.Node{Name: "db1", DB: db1.DB}, checksum.Node{Name: "db2", DB: p.Nodes[1].DB},
		checksum.Options{Database: "sbtest"})
	if err != nil {
		b.Fatal(err)
	}
	// Warm both buffer pools the same way for both tools.
	if _, err := c.Run(ctx); err != nil {
		b.Fatal(err)
	}
	b.Run("lockstep", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			r, err := c.Run(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if !r.Consistent || r.RowsChecked != 1_000_000 {
				b.Fatalf("consistent=%v rows=%d", r.Consistent, r.RowsChecked)
			}
		}
		b.ReportMetric(float64(1_000_000*b.N)/b.Elapsed().Seconds(), "rows/s")
	})
	if _, err := exec.LookPath("pt-table-checksum"); err != nil {
		return
	}
	setupPT(b, p)
	b.Run("pt-table-checksum", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			ptTableChecksum(b, p)
		}
		b.ReportMetric(float64(1_000_000*b.N)/b.Elapsed().Seconds(), "rows/s")
	})
}

func setupPT(b *testing.B, p *mariadbpair.Pair) {
	for _, s := range []string{
		"CREATE DATABASE IF NOT EXISTS percona",
		"CREATE TABLE IF NOT EXISTS percona.dsns (id INT AUTO_INCREMENT PRIMARY KEY, parent_id INT, dsn VARCHAR(255))",
		fmt.Sprintf("INSERT INTO percona.dsns (dsn) VALUES ('S=%s,u=root')", p.Nodes[1].Socket),
	} {
		if _, err := p.Nodes[0].DB.Exec(s); err != nil {
			b.Fatal(err)
		}
	}
}

func ptTableChecksum(b *testing.B, p *mariadbpair.Pair) {
	db1 := p.Nodes[0]
	start := time.Now()
	cmd := exec.Command("pt-table-checksum", "S="+db1.Socket+",u=root", "--databases=sbtest",
		"--recursion-method=dsn=D=percona,t=dsns", "--no-check-binlog-format")
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	// Exit status is a bit mask; only "errors" (1) matter here.
	if err != nil && cmd.ProcessState.ExitCode()&1 != 0 {
		b.Fatalf("pt-table-checksum: %v\n%s", err, out)
	}
	b.Logf("pt-table-checksum took %s:\n%s", took, out)
}
