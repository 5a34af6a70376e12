package main

import (
	"context"
)

// Scenario 9: writer daemon killed → VIP answering on the survivor.
func runFailover(ctx context.Context, e *Env, res *Result) error {
	if err := lockstepHas(ctx, e.Lockstep, "run"); err != nil {
		return errNotRun{err.Error()}
	}
	return errNotRun{"failover harness not written yet"}
}
