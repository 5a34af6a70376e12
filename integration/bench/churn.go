package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/lockstep-ha/lockstep/internal/churn"
)

// Scenario 10: heavy churn, the burst a `git checkout`, a `composer
// install` or a CMS cache rebuild makes — creates, appends, overwrites,
// chmods, nested mkdirs, files and whole directories moved across the
// tree, trees deleted, symlinks — and the time from the last change to an
// identical peer, per round. Both tools get the same sequence (same seeds).
func runChurn(ctx context.Context, e *Env, res *Result) error {
	base, err := e.scenarioDir("s10")
	if err != nil {
		return err
	}
	tools, err := e.syncTools(base, false)
	if err != nil {
		return err
	}
	// Both of lsyncd's ssh layers: rsyncssh replays moves with a remote
	// `mv`, rsync sends the current state of what moved.
	if tools, err = e.withLsyncdRsync(base, tools); err != nil {
		return err
	}
	sz := e.Sizes
	const seed = 1
	prepare := func(src string) error {
		tree, err := churn.New(src, seed)
		if err != nil {
			return err
		}
		_, err = tree.Run(churn.Options{Ops: 300})
		return err
	}
	res.note("%d rounds of %d random operations each (≈1 ms pause every 25 operations) on a live tree that starts with 300; time from the last operation of a round to an identical peer; a round not identical within %s is 'never'.",
		sz.ChurnRounds, sz.ChurnOps, sz.ChurnTimeout)
	figs, err := measureTools(ctx, e, res, base, tools, prepare, func(ctx context.Context, tc *toolCase) (figures, error) {
		// The prepared tree is rebuilt from the same seed, so the model
		// knows what prepare made.
		tree, err := churn.New(tc.src, seed)
		if err != nil {
			return nil, err
		}
		f := figures{}
		var lines []string
		for r := 1; r <= sz.ChurnRounds; r++ {
			st, err := tree.Run(churn.Options{Ops: sz.ChurnOps, Pause: time.Millisecond, PauseEvery: 25})
			if err != nil {
				return nil, err
			}
			tEnd := time.Now()
			w := TreeWaiter{Source: NewDigester(), Target: NewDigester(), Interval: 10 * time.Millisecond}
			key := fmt.Sprintf("r%d", r)
			at, err := tc.waitTree(ctx, w, sz.ChurnTimeout)
			switch {
			case err == nil:
				f[key] = seconds(at.Sub(tEnd))
				lines = append(lines, fmt.Sprintf("round %d identical after %s", r, at.Sub(tEnd).Round(time.Millisecond)))
			case ctx.Err() != nil:
				return nil, err
			default:
				if aerr := tc.tool.Alive(); aerr != nil {
					return nil, aerr
				}
				f[key] = missing("never: " + firstLine(err.Error()))
				lines = append(lines, fmt.Sprintf("round %d never identical (%s)", r, firstLine(err.Error())))
				// What the tool itself logged about the path that is
				// wrong: the evidence for why, in the report.
				if lm, ok := tc.tool.(interface{ LogMentions(string, int) []string }); ok {
					if p := firstDiffPath(err.Error()); p != "" {
						if ls := lm.LogMentions(p, 6); len(ls) > 0 {
							res.Details = append(res.Details, fmt.Sprintf("%s, round %d: its log on %s (source and target differ there)\n%s",
								tc.tool.Name(), r, p, strings.Join(ls, "\n")))
						}
					}
				}
				// The next round starts from whatever the tool made of
				// this one; a tool that never converges keeps failing.
			}
			e.Log.Info("churn round", "tool", tc.tool.Name(), "round", r, "ops", st.String())
		}
		res.note("%s: %s.", tc.tool.Name(), strings.Join(lines, "; "))
		return f, nil
	})
	var metrics []metricSpec
	for r := 1; r <= sz.ChurnRounds; r++ {
		metrics = append(metrics, metricSpec{fmt.Sprintf("r%d", r), fmt.Sprintf("round %d: last change → identical", r), KindDuration})
	}
	emitRows(res, tools, figs, metrics)
	return err
}

// firstDiffPath picks the path out of a TreeWaiter timeout ("..., first:
// PATH: state").
func firstDiffPath(msg string) string {
	_, rest, ok := strings.Cut(firstLine(msg), "first: ")
	if !ok {
		return ""
	}
	p, _, _ := strings.Cut(rest, ": ")
	return p
}
