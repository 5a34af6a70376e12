package testbed_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/config"
	"github.com/lockstep-ha/lockstep/internal/testbed"
)

// What RunConfig writes is what the strict loader reads back.
func TestRunConfigPassesTheLoader(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "cluster.key")
	if err := os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "svc")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	docroot := filepath.Join(dir, "docroot")
	cfg := testbed.RunConfig{
		Comment:      "two\nlines",
		Node:         "web1",
		Listen:       "127.0.0.1:9430",
		Sync:         "sync:\n  - name: docroot\n    source: " + docroot + "\n    targets:\n      - {name: web2, path: /tmp/x}\n",
		Repl:         "repl:\n  nodes:\n    - {name: db1, dsn: \"u:p@tcp(127.0.0.1:3306)/\"}\n    - {name: db2, dsn: \"u:p@tcp(127.0.0.1:3307)/\"}\n  state_dir: " + dir + "\n",
		KeyFile:      key,
		Keepalive:    50 * time.Millisecond,
		Deadtime:     300 * time.Millisecond,
		AgentCheck:   "127.0.0.1:9431",
		Witness:      []string{"tcp://127.0.0.1:7000"},
		ClusterExtra: "  auto_failback: true\n",
		Members:      []testbed.Member{{Name: "web1", Address: "127.0.0.1:7001", DB: "db1"}, {Name: "web2", Address: "127.0.0.1:7002", DB: "db2"}},
		Resources:    []testbed.Resource{{VIP: "10.0.0.100/24", Dev: "eth0"}, {Exec: script, Timeout: 5 * time.Second}},
	}
	path := filepath.Join(dir, "lockstep.yaml")
	if err := cfg.Write(path); err != nil {
		t.Fatal(err)
	}
	f, err := config.Load(path)
	if err != nil {
		t.Fatalf("%v\n%s", err, cfg.YAML())
	}
	c := f.Cluster
	if f.Node != "web1" || f.Listen != "127.0.0.1:9430" || len(f.Sync) != 1 || f.Repl == nil || len(f.Repl.Nodes) != 2 ||
		c.KeyFile != key || c.Keepalive != 50*time.Millisecond || c.Deadtime != 300*time.Millisecond ||
		c.AgentCheck != "127.0.0.1:9431" || len(c.Witness) != 1 || !c.AutoFailback ||
		len(c.Nodes) != 2 || c.Nodes[1].DB != "db2" || len(c.Resources) != 2 ||
		c.Resources[0].IPAddr != "10.0.0.100/24" || c.Resources[1].Exec != script || c.Resources[1].Timeout != 5*time.Second {
		t.Errorf("loaded %+v\ncluster %+v\nfrom\n%s", f, c, cfg.YAML())
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v %v", st.Mode(), err)
	}
}
