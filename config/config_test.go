package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/lsync"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

const good = `
node: web1
sync:
  - name: docroot
    source: /var/www/html
    delay: 20ms
    max_delay: 1s
    delete: false
    exclude: [".git/", "*.swp", "cache/**"]
    targets:
      - name: web2
        host: 10.0.0.2
        port: ${SSH_PORT}
        user: www-sync
        identity: IDENTITY
        known_hosts: KNOWN
        path: /var/www/html
      - name: nfs
        path: /mnt/nfs/html
repl:
  interval: 250ms
  nodes:
    - name: db1
      dsn: "lockstep:${LOCKSTEP_DB_PASSWORD}@tcp(10.0.0.1:3306)/"
    - name: db2
      dsn: "lockstep:${LOCKSTEP_DB_PASSWORD}@tcp(10.0.0.2:3306)/"
  fence:
    max_lag: 5s
    unfence_lag: 1s
    unfence_hold: 10s
cluster:
  key_file: KEYFILE
  keepalive: 200ms
  deadtime: 1s
  nodes:
    - {name: web1, address: 10.0.0.1:9431, db: db1}
    - {name: web2, address: 10.0.0.2:9431, db: db2}
  witness: ["tcp://10.0.0.254:22"]
  resources:
    - ipaddr: 10.0.0.10/24
      dev: eth0
    - exec: /etc/init.d/apache2
      timeout: 20s
`

func fixture(t *testing.T, text string) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"IDENTITY", "KNOWN", "KEYFILE"} {
		p := filepath.Join(dir, strings.ToLower(name))
		if err := os.WriteFile(p, []byte(strings.Repeat("k", 64)), 0o600); err != nil {
			t.Fatal(err)
		}
		text = strings.ReplaceAll(text, name, p)
	}
	return text
}

func TestParseGood(t *testing.T) {
	f, err := Parse("lockstep.yaml", []byte(fixture(t, good)), env(map[string]string{"SSH_PORT": "2222", "LOCKSTEP_DB_PASSWORD": "s3cr:t"}))
	if err != nil {
		t.Fatal(err)
	}
	j := f.Sync[0]
	if j.Delay != 20*time.Millisecond || j.MaxDelay != time.Second || j.DeleteEnabled() {
		t.Errorf("job = %+v", j)
	}
	if j.Targets[0].Port != 2222 {
		t.Errorf("port from env = %d", j.Targets[0].Port)
	}
	if !j.Targets[1].IsLocal() {
		t.Error("target without host must be local")
	}
	if got := f.Repl.Nodes[0].DSN; got != "lockstep:s3cr:t@tcp(10.0.0.1:3306)/" {
		t.Errorf("dsn = %q", got)
	}
	if f.Listen != "127.0.0.1:9430" || f.Cluster.Resources[1].Timeout != 20*time.Second {
		t.Errorf("defaults not applied: %+v", f)
	}
	if j.EffectiveVerifyInterval() != 10*time.Minute {
		t.Errorf("verify default = %s", j.EffectiveVerifyInterval())
	}
}

func TestParseErrorsNameKeyAndLine(t *testing.T) {
	base := fixture(t, good)
	e := env(map[string]string{"SSH_PORT": "22", "LOCKSTEP_DB_PASSWORD": "pw"})
	cases := []struct {
		name, from, to string
		want           []string
	}{
		{"unknown key", "    delay: 20ms", "    delay: 20ms\n    dleay: 5ms", []string{"line 7", "sync[0].dleay: unknown key"}},
		{"bad duration", "max_lag: 5s", "max_lag: 5 seconds", []string{"repl.fence.max_lag", `"5 seconds" is not a duration`}},
		{"duration without unit", "delay: 20ms", "delay: 20", []string{"sync[0].delay", "not a duration"}},
		{"missing field", "    source: /var/www/html\n", "", []string{"sync[0].source: required", "(line 4)"}},
		{"unset env", "${SSH_PORT}", "${NOPE}", []string{"sync[0].targets[0].port", "NOPE is not set"}},
		{"deadtime", "deadtime: 1s", "deadtime: 300ms", []string{"cluster.deadtime", "> 2 x keepalive"}},
		{"unreadable key", "known_hosts: ", "known_hosts: /nonexistent/kh #", []string{"sync[0].targets[0].known_hosts: cannot read /nonexistent/kh"}},
		{"wrong shape", "witness: [\"tcp://10.0.0.254:22\"]", "witness: tcp://x", []string{"cluster.witness", "expected a list"}},
		{"db ref", "db: db2}", "db: db9}", []string{"cluster.nodes[1].db", `"db9"`}},
		{"receiver mode", "        path: /var/www/html\n", "        path: /var/www/html\n        receiver: sometimes\n",
			[]string{"sync[0].targets[0].receiver", `"sometimes" must be auto, on or off`, "line 18"}},
		{"receiver command", "        path: /var/www/html\n", "        path: /var/www/html\n        receiver_command: \"lockstep --x\"\n",
			[]string{"sync[0].targets[0].receiver_command", "shell metacharacters"}},
		{"receiver typo", "        path: /var/www/html\n", "        path: /var/www/html\n        reciever: on\n",
			[]string{"sync[0].targets[0].reciever: unknown key"}},
		{"owner mode", "    delete: false\n", "    delete: false\n    owner: name\n",
			[]string{"sync[0].owner", `"name": want names`, "numeric or false", "(line 9)"}},
		{"owner shape", "    delete: false\n", "    delete: false\n    owner: [names]\n",
			[]string{"sync[0].owner", "expected a single value"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			text := strings.Replace(base, c.from, c.to, 1)
			if text == base {
				t.Fatalf("fixture replacement %q did not apply", c.from)
			}
			_, err := Parse("lockstep.yaml", []byte(text), e)
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want *Error", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestOwnerModes: owner takes names (the default), numeric or false;
// true, the setting from before names were mapped, means names, and the
// other YAML spellings of a boolean keep their meaning.
func TestOwnerModes(t *testing.T) {
	base := fixture(t, good)
	e := env(map[string]string{"SSH_PORT": "22", "LOCKSTEP_DB_PASSWORD": "pw"})
	for _, c := range []struct {
		line string
		want lsync.OwnerMode
	}{
		{"", lsync.OwnerNames},
		{"    owner: names\n", lsync.OwnerNames},
		{"    owner: true\n", lsync.OwnerNames},
		{"    owner: yes\n", lsync.OwnerNames},
		{"    owner: numeric\n", lsync.OwnerNumeric},
		{"    owner: false\n", lsync.OwnerOff},
		{"    owner: off\n", lsync.OwnerOff},
		{"    owner: \"false\"\n", lsync.OwnerOff},
	} {
		text := strings.Replace(base, "    delete: false\n", "    delete: false\n"+c.line, 1)
		f, err := Parse("lockstep.yaml", []byte(text), e)
		if err != nil {
			t.Fatalf("%q: %v", c.line, err)
		}
		if got := f.Sync[0].EffectiveOwner(); got != c.want {
			t.Errorf("%q: owner mode %q, want %q", c.line, got, c.want)
		}
	}
}

func TestSecretsNotEchoed(t *testing.T) {
	text := strings.Replace(fixture(t, good), `"lockstep:${LOCKSTEP_DB_PASSWORD}@tcp(10.0.0.1:3306)/"`, `"lockstep:${LOCKSTEP_DB_PASSWORD}@tcp(10.0.0.1:3306"`, 1)
	_, err := Parse("x.yaml", []byte(text), env(map[string]string{"SSH_PORT": "22", "LOCKSTEP_DB_PASSWORD": "hunter2"}))
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("err = %v: want an error without the password", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "nope.yaml: cannot read config") {
		t.Fatalf("err = %v", err)
	}
}

// TestExampleConfigIsValid keeps configs/lockstep.example.yaml loadable:
// only the key files it names are swapped for temporary ones.
func TestExampleConfigIsValid(t *testing.T) {
	data, err := os.ReadFile("../configs/lockstep.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	text := strings.ReplaceAll(string(data), "/etc/lockstep/", dir+"/")
	for _, name := range []string{"id_ed25519", "known_hosts", "cluster.key"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(strings.Repeat("k", 64)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f, err := Parse("lockstep.example.yaml", []byte(text), env(map[string]string{"LOCKSTEP_DB_PASSWORD": "pw"}))
	if err != nil {
		t.Fatal(err)
	}
	if !f.Sync[0].TwoWay || len(f.Cluster.Resources) != 2 {
		t.Errorf("example not decoded as documented: %+v", f)
	}
}

// cluster.state_dir defaults to /var/lib/lockstep and must be absolute;
// the error names the key and its line.
func TestClusterStateDir(t *testing.T) {
	f, err := Parse("lockstep.yaml", []byte(fixture(t, good)), env(map[string]string{"SSH_PORT": "2222", "LOCKSTEP_DB_PASSWORD": "pw"}))
	if err != nil {
		t.Fatal(err)
	}
	if f.Cluster.StateDir != "/var/lib/lockstep" {
		t.Fatalf("default state_dir %q", f.Cluster.StateDir)
	}
	text := strings.Replace(fixture(t, good), "  deadtime: 1s\n", "  deadtime: 1s\n  state_dir: lib/lockstep\n", 1)
	_, err = Parse("lockstep.yaml", []byte(text), env(map[string]string{"SSH_PORT": "2222", "LOCKSTEP_DB_PASSWORD": "pw"}))
	if err == nil || !strings.Contains(err.Error(), `cluster.state_dir: "lib/lockstep" must be an absolute path (line`) {
		t.Fatalf("relative state_dir: %v", err)
	}
}
