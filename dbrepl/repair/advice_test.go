package repair_test

import (
	"strings"
	"testing"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/dbrepl/repair"
)

func TestAdvice(t *testing.T) {
	ok := func(name string) dbrepl.NodeStatus {
		return dbrepl.NodeStatus{Name: name, Reachable: true, Writable: true, IORunning: true, SQLRunning: true}
	}
	healthy := dbrepl.PairStatus{Nodes: []dbrepl.NodeStatus{ok("db1"), ok("db2")}}
	if a := repair.Advice(healthy, "/etc/lockstep.yaml"); a != "" {
		t.Errorf("healthy pair: %q", a)
	}
	broken := dbrepl.PairStatus{Nodes: []dbrepl.NodeStatus{ok("db1"), ok("db2")}}
	broken.Nodes[1].Fenced, broken.Nodes[1].Writable, broken.Nodes[1].SQLRunning, broken.Nodes[1].LastErrno = true, false, false, 1062
	if a := repair.Advice(broken, "/etc/lockstep.yaml"); !strings.HasPrefix(a, "lockstep repl repair -c /etc/lockstep.yaml --source db1 --target db2 --dry-run") {
		t.Errorf("db2 broken and fenced: %q", a)
	}
	broken.Nodes[0], broken.Nodes[1] = broken.Nodes[1], broken.Nodes[0]
	if a := repair.Advice(broken, "f"); !strings.Contains(a, "--source db1 --target db2") {
		t.Errorf("order of nodes: %q", a)
	}
	down := dbrepl.PairStatus{Nodes: []dbrepl.NodeStatus{ok("db1"), {Name: "db2"}}}
	if a := repair.Advice(down, "f"); a != "" {
		t.Errorf("unreachable peer: %q", a)
	}
	lagging := dbrepl.PairStatus{Nodes: []dbrepl.NodeStatus{ok("db1"), ok("db2")}}
	lagging.Nodes[1].Fenced, lagging.Nodes[1].Writable = true, false
	if a := repair.Advice(lagging, "f"); a != "" {
		t.Errorf("a node fenced for lag only: %q", a)
	}
}
