package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI runs the root command in-process and returns the exit code the
// binary would have, with stdout and stderr captured.
func runCLI(t *testing.T, args ...string) (int, string) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	if err != nil {
		out.WriteString(err.Error())
	}
	code := exitOK
	if err != nil {
		code = exitCodeOf(err)
	}
	return code, out.String()
}

func TestCheckExitCodes(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	src := filepath.Join(dir, "src")
	os.WriteFile(good, []byte("node: web1\nsync:\n  - name: d\n    source: "+src+"\n    targets:\n      - {name: local, path: "+filepath.Join(dir, "dst")+"}\n"), 0o600)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("node: web1\nsync:\n  - name: d\n    sorce: /x\n"), 0o600)

	if code, out := runCLI(t, "check", "-c", good); code != 0 || !strings.Contains(out, "ok") {
		t.Errorf("good config: code %d, output %q", code, out)
	}
	code, out := runCLI(t, "check", "-c", bad)
	if code != exitUsage || !strings.Contains(out, "sync[0].sorce: unknown key") {
		t.Errorf("bad config: code %d, output %q", code, out)
	}
	if code, _ := runCLI(t, "check", "--no-such-flag"); code != exitUsage {
		t.Errorf("unknown flag: code %d, want 2", code)
	}
	if code, _ := runCLI(t, "no-such-command"); code != exitUsage {
		t.Errorf("unknown command: code %d, want 2", code)
	}
}

func TestCheckWarnsRootOverPlainSFTP(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "id")
	os.WriteFile(key, []byte("not parsed by check"), 0o600)
	kh := filepath.Join(dir, "known_hosts")
	os.WriteFile(kh, nil, 0o644)
	conf := func(user, receiver string) string {
		p := filepath.Join(dir, user+receiver+".yaml")
		os.WriteFile(p, []byte("node: web1\nsync:\n  - name: d\n    source: "+dir+"\n    targets:\n"+
			"      - {name: web2, host: web2, user: "+user+", identity: "+key+", known_hosts: "+kh+", path: /var/www"+receiver+"}\n"), 0o600)
		return p
	}
	code, out := runCLI(t, "check", "-c", conf("root", ", receiver: off"))
	if code != 0 || !strings.Contains(out, "warning: sync[0].targets[0] (web2): connects as root over plain SFTP") {
		t.Errorf("root + receiver off: code %d, output %q", code, out)
	}
	// auto (the default) falls back to SFTP when the receiver cannot start.
	for _, c := range []string{conf("root", ""), conf("root", ", receiver: auto")} {
		code, out = runCLI(t, "check", "-c", c)
		if code != 0 || !strings.Contains(out, "warning: sync[0].targets[0] (web2): connects as root with receiver: auto") ||
			!strings.Contains(out, "receiver: on to refuse the fallback") {
			t.Errorf("%s: code %d, output %q", c, code, out)
		}
	}
	for _, c := range []string{conf("root", ", receiver: on"), conf("sync", ", receiver: off"), conf("sync", "")} {
		if code, out := runCLI(t, "check", "-c", c); code != 0 || strings.Contains(out, "warning") {
			t.Errorf("%s: code %d, output %q", c, code, out)
		}
	}
	code, out = runCLI(t, "check", "-c", conf("root", ", receiver: maybe"))
	if code != exitUsage || !strings.Contains(out, `receiver: "maybe" must be auto, on or off`) {
		t.Errorf("bad receiver: code %d, output %q", code, out)
	}
}
