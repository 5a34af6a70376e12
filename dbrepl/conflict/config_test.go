package conflict

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestConfigDefaultsAndValidate(t *testing.T) {
	var c Config
	c.SetDefaults()
	if c.Window != DefaultWindow || c.MaxKeysPerTable != DefaultMaxKeysPerTable || c.ServerID < 1<<30 || c.IgnoreSchemas[0] != "lockstep" {
		t.Fatalf("defaults: %+v", c)
	}
	bad := Config{Window: -time.Second, MaxKeysPerTable: -1, MaxTables: -1}
	err := bad.Validate()
	for _, key := range []string{"window", "max_keys_per_table", "max_tables"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("error %v does not name %s", err, key)
		}
	}
}

func TestNewRejectsBadDSNWithoutEchoingIt(t *testing.T) {
	_, err := New(Config{}, [2]Source{{Name: "db1", DSN: "user:s3cret@tcp(127.0.0.1:3306"}, {Name: "db2", DSN: "u@tcp(127.0.0.1:3307)/"}}, nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "db1") || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("err = %v", err)
	}
	reg := prometheus.NewRegistry()
	src := [2]Source{{Name: "db1", DSN: "u@tcp(127.0.0.1:3306)/"}, {Name: "db2", DSN: "u@tcp(127.0.0.1:3307)/"}}
	if _, err := New(Config{}, src, reg, nil, nil); err != nil {
		t.Fatal(err)
	}
	// A second detector on the same registry is a clear error, not a panic.
	if _, err := New(Config{}, src, reg, nil, nil); err == nil {
		t.Fatal("duplicate registration accepted")
	}
}
