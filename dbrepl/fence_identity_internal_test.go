package dbrepl

import (
	"strings"
	"testing"
	"time"
)

func TestFenceRecordForeign(t *testing.T) {
	o := mariaObs("db2", 2, false, "Yes", "Yes", 0)
	o.GTIDCurrentPos = "1-1-10,2-2-10"
	const addr = "127.0.0.1:3307"
	for _, c := range []struct {
		name string
		rec  FenceRecord
		want string // fragment, "" = belongs
	}{
		{"legacy record without identity is honoured", FenceRecord{Node: "db2"}, ""},
		{"same server", FenceRecord{Node: "db2", ServerID: 2, DomainID: 2, Address: addr, GTIDCurrentPos: "1-1-9,2-2-8"}, ""},
		{"other server_id", FenceRecord{Node: "db2", ServerID: 7, Address: addr}, "server_id 7"},
		{"other address", FenceRecord{Node: "db2", ServerID: 2, Address: "10.0.0.2:3306"}, "at 10.0.0.2:3306"},
		{"rebuilt server: GTID history went back", FenceRecord{Node: "db2", ServerID: 2, DomainID: 2, Address: addr, GTIDCurrentPos: "2-2-500"}, "went back from 500"},
		{"uuid decides on MySQL", FenceRecord{Node: "db2", ServerID: 2, ServerUUID: "aaaa"}, ""},
	} {
		obs := *o
		if c.rec.ServerUUID != "" {
			obs.ServerUUID = "AAAA"
		}
		got := c.rec.Foreign(&obs, addr)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
	// Unreadable server: cannot be told, the record stands.
	down := &Observation{Node: "db2"}
	if got := (&FenceRecord{Node: "db2", ServerID: 9}).Foreign(down, addr); got != "" {
		t.Errorf("unreachable server judged: %q", got)
	}
}

// A foreign record found on a writable node does not re-fence it: it is
// reported (actForeign) and otherwise ignored; a snapshot reports it too.
func TestDecideForeignRecord(t *testing.T) {
	v := pairView{
		now:    time.Now(),
		fence:  FenceConfig{MaxLag: time.Second, UnfenceLag: 300 * time.Millisecond, UnfenceHold: time.Second},
		active: true,
		obs:    [2]*Observation{mariaObs("db1", 1, false, "Yes", "Yes", 0), mariaObs("db2", 2, false, "Yes", "Yes", 0)},
		addrs:  [2]string{"h:1", "h:2"},
	}
	v.fences[1] = &FenceRecord{Node: "db2", Reason: "by hand", Manual: true, ServerID: 99, Address: "h:2"}
	acts := func(d decision) []action {
		var out []action
		for _, a := range d.actions {
			if a.kind != actEpisodeOver {
				out = append(out, a)
			}
		}
		return out
	}
	d := decide(v)
	d.actions = acts(d)
	if len(d.actions) != 1 || d.actions[0].kind != actForeign || d.actions[0].node != 1 || !strings.Contains(d.foreign[1], "server_id 99") {
		t.Fatalf("actions %+v foreign %q", d.actions, d.foreign)
	}
	// The same record bound to this server re-fences as before.
	v.fences[1] = &FenceRecord{Node: "db2", Reason: "by hand", Manual: true, ServerID: 2, Address: "h:2"}
	d = decide(v)
	d.actions = acts(d)
	if len(d.actions) == 0 || d.actions[0].kind != actRefence {
		t.Fatalf("own record: actions %+v", d.actions)
	}
	v.snapshot = true
	v.fences[1] = &FenceRecord{Node: "db2", ServerID: 99}
	if d = decide(v); len(acts(d)) != 0 || d.foreign[1] == "" {
		t.Fatalf("snapshot: actions %+v foreign %q", d.actions, d.foreign)
	}
}
