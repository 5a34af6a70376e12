package conflict

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/go-sql-driver/mysql"
)

// The binlog library's own messages reach the daemon's log at debug level
// only.
func TestSyncerLogsAtDebug(t *testing.T) {
	for _, level := range []slog.Level{slog.LevelInfo, slog.LevelDebug} {
		var buf bytes.Buffer
		logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: level}))
		sc, err := syncerConfig(&mysql.Config{Net: "tcp", Addr: "127.0.0.1:3306", User: "u"}, 7, logger.With("node", "db1"))
		if err != nil {
			t.Fatal(err)
		}
		sc.Logger.Info("create BinlogSyncer")
		sc.Logger.Error("could not close connection")
		out := buf.String()
		if level == slog.LevelInfo && out != "" {
			t.Errorf("at info: %s", out)
		}
		if level == slog.LevelDebug && (strings.Count(out, "level=DEBUG") != 2 || !strings.Contains(out, "node=db1 component=binlogsyncer")) {
			t.Errorf("at debug: %s", out)
		}
	}
}
