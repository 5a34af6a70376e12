package dbrepl

import "context"

// KillClientSessions ends node's client sessions now: everything except
// replication threads, daemons and the supervisor's own connections. A
// self-fence that cannot set read_only (SET GLOBAL read_only waits for
// transactions holding locks) escalates to this, so that no session can
// go on writing while it retries.
func (s *Supervisor) KillClientSessions(ctx context.Context, node string) (int, error) {
	i, err := s.index(node)
	if err != nil {
		return 0, err
	}
	return s.nodes[i].killClientSessions(ctx)
}
