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
