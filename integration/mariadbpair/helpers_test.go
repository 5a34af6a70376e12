package mariadbpair

import (
	"database/sql"
	"testing"

	_ "github.com/go-sql-driver/mysql"
)

func openMonitor(t *testing.T, n *Node) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", n.MonitorDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
