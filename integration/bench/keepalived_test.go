package main

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// VRRPv3's master-down interval (RFC 5798 6.1) at priority 100: the
// figure the equal-detection profile gives lockstep as its deadtime.
func TestKeepalivedMasterDown(t *testing.T) {
	for _, tc := range []struct{ adv, want time.Duration }{
		{time.Second, 3609375 * time.Microsecond},
		{200 * time.Millisecond, 721875 * time.Microsecond},
	} {
		if got := kaMasterDown(tc.adv); got != tc.want {
			t.Errorf("kaMasterDown(%s) = %s, want %s", tc.adv, got, tc.want)
		}
	}
}

// The generated configuration is one keepalived accepts (its own config
// test), with a sub-second advert written as keepalived reads it.
func TestKeepalivedConfigPassesItsCheck(t *testing.T) {
	cfg := kaConfig("n1", netip.MustParseAddr("10.77.1.1"), netip.MustParseAddr("10.77.1.2"), 200*time.Millisecond, "10.77.1.100/24")
	for _, want := range []string{"vrrp_version 3", "advert_int 0.2", "unicast_src_ip 10.77.1.1", "10.77.1.2", "10.77.1.100/24 dev eth0", "priority 100"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
	if _, err := exec.LookPath("keepalived"); err != nil {
		t.Skip("keepalived not installed")
	}
	path := filepath.Join(t.TempDir(), "keepalived.conf")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("keepalived", "-t", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("keepalived -t: %v\n%s\n%s", err, out, cfg)
	}
}
