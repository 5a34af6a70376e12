package lsync

import (
	"strings"
	"testing"
	"time"
)

func TestCleanRel(t *testing.T) {
	ok := map[string]string{"a": "a", "a/b/../c": "a/c", "./a//b/": "a/b", "a/..b": "a/..b"}
	for in, want := range ok {
		got, err := CleanRel(in)
		if err != nil || got != want {
			t.Errorf("CleanRel(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", ".", "..", "../x", "a/../../x", "/etc/passwd", "a\x00b", "\\x"} {
		if got, err := CleanRel(bad); err == nil {
			t.Errorf("CleanRel(%q) = %q, want error", bad, got)
		}
	}
}

func TestJobConfigValidate(t *testing.T) {
	valid := func() JobConfig {
		return JobConfig{Name: "docroot", Source: "/var/www", Targets: []TargetConfig{
			{Name: "web2", Host: "10.0.0.2", User: "u", Identity: "/k", KnownHosts: "/kh", Path: "/var/www"},
			{Name: "nfs", Path: "/mnt/www"},
		}}
	}
	c := valid()
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	if c.Targets[0].Receiver != ReceiverAuto || c.Targets[0].ReceiverCommand != "lockstep" || c.Targets[1].Receiver != "" {
		t.Fatalf("receiver defaults: %+v", c.Targets)
	}
	if c.Targets[0].Port != 22 || c.Delay != DefaultDelay || c.MaxDelay != DefaultMaxDelay || !c.DeleteEnabled() || c.EffectiveVerifyInterval() != DefaultVerifyInterval {
		t.Fatalf("defaults not applied: %+v", c)
	}
	neg := -time.Second
	cases := []struct {
		mutate func(*JobConfig)
		want   string
	}{
		{func(c *JobConfig) { c.Name = "" }, "name: required"},
		{func(c *JobConfig) { c.Source = "rel/path" }, "source:"},
		{func(c *JobConfig) { c.Delay = 2 * time.Second }, "max_delay:"},
		{func(c *JobConfig) { c.VerifyInterval = &neg }, "verify_interval:"},
		{func(c *JobConfig) { c.Concurrency = 1000 }, "concurrency:"},
		{func(c *JobConfig) { c.Exclude = []string{"[x"} }, "exclude[0]"},
		{func(c *JobConfig) { c.Targets = nil }, "targets:"},
		{func(c *JobConfig) { c.Targets[1].Name = "web2" }, "targets[1].name: duplicate"},
		{func(c *JobConfig) { c.Targets[0].KnownHosts = "" }, "targets[0].known_hosts"},
		{func(c *JobConfig) { c.Targets[0].Port = 70000 }, "targets[0].port"},
		{func(c *JobConfig) { c.Targets[1].Path = "x" }, "targets[1].path"},
		{func(c *JobConfig) { c.Targets[1].User = "u" }, "targets[1].host: required"},
		{func(c *JobConfig) { c.Targets[0].Receiver = "yes" }, `targets[0].receiver: "yes" must be auto, on or off`},
		{func(c *JobConfig) { c.Targets[0].ReceiverCommand = "lockstep; rm -rf /" }, "targets[0].receiver_command:"},
		{func(c *JobConfig) { c.Targets[0].ReceiverCommand = "/opt/lock step" }, "targets[0].receiver_command:"},
		{func(c *JobConfig) { c.Targets[1].Receiver = ReceiverOn }, "targets[1].host: required"},
	}
	for _, tc := range cases {
		c := valid()
		c.SetDefaults()
		tc.mutate(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want error containing %q, got %v", tc.want, err)
		}
	}
}
