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
	if c.Window != DefaultWindow || c.MaxKeysPerTable != DefaultMaxKeysPerTable || c.MaxTables != DefaultMaxTables ||
		c.IgnoreSchemas[0] != "lockstep" || !c.IsEnabled() || c.Enabled == nil {
		t.Fatalf("defaults: %+v", c)
	}
	// SetDefaults is deterministic (a reload compares configs); the
	// random replica id is only drawn by New.
	if c.ServerID != 0 {
		t.Fatalf("SetDefaults drew server_id %d", c.ServerID)
	}
	again := Config{}
	again.SetDefaults()
	if *again.Enabled != *c.Enabled || again.Window != c.Window || len(again.IgnoreSchemas) != 1 {
		t.Fatalf("defaults differ: %+v vs %+v", again, c)
	}
	off := false
	disabled := Config{Enabled: &off}
	disabled.SetDefaults()
	if disabled.IsEnabled() {
		t.Fatal("enabled: false overridden by SetDefaults")
	}
	bad := Config{Window: -time.Second, MaxKeysPerTable: -1, MaxTables: -1, IgnoreSchemas: []string{""}}
	err := bad.Validate()
	for _, key := range []string{"conflicts.window", "conflicts.max_keys_per_table", "conflicts.max_tables", "conflicts.ignore_schemas[0]"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("error %v does not name %s", err, key)
		}
	}
}

func TestNewDrawsServerIDAndKeepsCallersSlice(t *testing.T) {
	src := [2]Source{{Name: "db1", DSN: "u@tcp(127.0.0.1:3306)/"}, {Name: "db2", DSN: "u@tcp(127.0.0.1:3307)/"}}
	ignore := make([]string, 1, 4)
	ignore[0] = "app_cache"
	d, err := New(Config{IgnoreSchemas: ignore}, src, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.cfg.ServerID < 1<<30 {
		t.Fatalf("server_id %d, want a random id >= 2^30", d.cfg.ServerID)
	}
	if got := ignore[:2][1]; got != "" {
		t.Fatalf("New wrote %q into the caller's ignore_schemas backing array", got)
	}
	fixed, err := New(Config{ServerID: 4242}, src, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fixed.cfg.ServerID != 4242 {
		t.Fatalf("server_id %d, want the configured 4242", fixed.cfg.ServerID)
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
