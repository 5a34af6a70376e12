package orchestrator

import (
	"context"
	"fmt"
	"time"

	"github.com/lockstep-ha/lockstep/internal/proc"
)

// LSB init-script exit codes for `status`.
const (
	lsbRunning = 0
	lsbStopped = 3
)

// Exec is a resource driven by an LSB init script: `script start|stop|status`.
// The script runs through internal/proc: a minimal environment (PATH, LANG
// and the LOCKSTEP_* variables below, never the daemon's own environment
// and so never the database password), its own process group, killed as a
// whole at the timeout.
//
//	LOCKSTEP_ACTION  start, stop or status
//	LOCKSTEP_NODE    this node's name (cluster.nodes[].name)
//	LOCKSTEP_DB      this node's database in the pair, when it has one
//	LOCKSTEP_REASON  why (self_fence.stop_database: "self-fence: ...")
type Exec struct {
	script  string
	timeout time.Duration
	vars    map[string]string
}

// NewExec returns an LSB script resource; every call is bounded by timeout.
func NewExec(script string, timeout time.Duration) *Exec {
	if timeout <= 0 {
		timeout = DefaultResourceTimeout
	}
	return &Exec{script: script, timeout: timeout}
}

// withVars returns e with the documented LOCKSTEP_* variables set.
func (e *Exec) withVars(vars map[string]string) *Exec {
	c := *e
	c.vars = vars
	return &c
}

// labelResources gives the exec resources this node's variables, also
// those NewResources wrapped with their monitor (whose status check must
// run the labelled copy too).
func labelResources(rs []Resource, node NodeConfig) {
	for i, r := range rs {
		switch x := r.(type) {
		case *Exec:
			rs[i] = x.withVars(nodeVars(node))
		case *monitored:
			if e, ok := x.Resource.(*Exec); ok {
				e = e.withVars(nodeVars(node))
				rs[i] = &monitored{Resource: e, spec: x.spec, check: e.monitor}
			}
		}
	}
}

func nodeVars(node NodeConfig) map[string]string {
	v := map[string]string{"LOCKSTEP_NODE": node.Name}
	if node.DB != "" {
		v["LOCKSTEP_DB"] = node.DB
	}
	return v
}

func (e *Exec) Name() string { return e.script }
func (e *Exec) Kind() string { return "exec" }

func (e *Exec) Start(ctx context.Context) error { return e.act(ctx, "start") }

// Stop follows LSB: stopping a stopped service exits 0. We trust that and
// fail on any other code, so a broken stop script is visible.
func (e *Exec) Stop(ctx context.Context) error { return e.act(ctx, "stop") }

// act runs start or stop, for which LSB knows only success (0).
func (e *Exec) act(ctx context.Context, action string) error {
	code, out, err := e.run(ctx, action)
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("%s %s exited %d%s", e.script, action, code, out)
	}
	return nil
}

// Running maps LSB status codes: 0 running, 3 stopped; 1, 2 (dead but
// pid/lock file left) count as stopped-with-leftovers, i.e. running=false
// but reported; anything else is an error.
func (e *Exec) Running(ctx context.Context) (bool, error) {
	code, out, err := e.run(ctx, "status")
	if err != nil {
		return false, err
	}
	switch code {
	case lsbRunning:
		return true, nil
	case lsbStopped:
		return false, nil
	case 1, 2:
		return false, fmt.Errorf("%s status exited %d (dead but pid/lock file exists)%s", e.script, code, out)
	default:
		return false, fmt.Errorf("%s status exited %d (unknown state)%s", e.script, code, out)
	}
}

// run executes the script bounded by the timeout, so a hanging script
// cannot block a failover and its children cannot outlive it.
func (e *Exec) run(ctx context.Context, action string) (int, string, error) {
	vars := map[string]string{"LOCKSTEP_ACTION": action}
	for k, v := range e.vars {
		vars[k] = v
	}
	res, err := proc.Run(ctx, proc.Cmd{Path: e.script, Args: []string{action}, Vars: vars, Timeout: e.timeout})
	tail := ""
	if res.Tail != "" {
		tail = ": " + res.Tail
	}
	if err != nil {
		return 0, tail, err
	}
	return res.ExitCode, tail, nil
}
