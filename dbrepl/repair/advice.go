package repair

import (
	"fmt"

	"github.com/lockstep-ha/lockstep/dbrepl"
)

// Advice returns the `repl repair` command line that would mend a broken
// or drifted pair ("" when the status shows nothing to repair, or when
// no node is clearly the one to keep). The node kept is the writable,
// unfenced one; the target is its peer whose replication is broken or
// stopped or that holds errant transactions. configPath is put in the
// command as given.
func Advice(st dbrepl.PairStatus, configPath string) string {
	if len(st.Nodes) != 2 {
		return ""
	}
	bad := func(n dbrepl.NodeStatus) bool {
		// A node fenced only for lag catches up and is reintroduced on
		// its own: no repair is suggested for it.
		return n.LastErrno != 0 || len(n.ErrantGTIDs) > 0 || (n.Reachable && (!n.IORunning || !n.SQLRunning))
	}
	for i, src := range st.Nodes {
		tgt := st.Nodes[1-i]
		if !src.Reachable || !tgt.Reachable || !src.Writable || src.Fenced || !bad(tgt) {
			continue
		}
		if bad(src) && !tgt.Fenced && src.LastErrno != 0 && tgt.LastErrno == 0 {
			continue // the source is the broken one
		}
		return fmt.Sprintf("lockstep repl repair -c %s --source %s --target %s --dry-run   (then without --dry-run to repair)", configPath, src.Name, tgt.Name)
	}
	return ""
}
