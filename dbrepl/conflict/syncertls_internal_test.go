package conflict

import (
	"log/slog"
	"testing"

	"github.com/go-sql-driver/mysql"
)

// TestSyncerUsesTheDSNsTLS: the binlog stream is encrypted whenever the
// node's DSN asks for TLS, with the same verification.
func TestSyncerUsesTheDSNsTLS(t *testing.T) {
	for dsn, want := range map[string]string{
		"mon:pw@tcp(db1.example:3306)/":                 "plain",
		"mon:pw@tcp(db1.example:3306)/?tls=true":        "verify db1.example",
		"mon:pw@tcp(db1.example:3306)/?tls=skip-verify": "skip-verify",
	} {
		cfg, err := mysql.ParseDSN(dsn)
		if err != nil {
			t.Fatal(err)
		}
		sc, err := syncerConfig(cfg, 7, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		got := "plain"
		switch {
		case sc.TLSConfig == nil:
		case sc.TLSConfig.InsecureSkipVerify:
			got = "skip-verify"
		default:
			got = "verify " + sc.TLSConfig.ServerName
		}
		if got != want {
			t.Errorf("%s: binlog stream %s, want %s", dsn, got, want)
		}
	}
}
