package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/lockstep-ha/lockstep/lsync"
)

// progressLine is a full pass's progress in one line, as `status` and the
// progress bar's description show it.
func progressLine(p lsync.ProgressSnapshot) string {
	s := fmt.Sprintf("%d", p.Compared)
	if p.Total > 0 {
		s += fmt.Sprintf("/%d", p.Total)
	}
	s += fmt.Sprintf(" entries compared, %d file(s) (%s) pushed, %.0f entries/s", p.Files, humanBytes(p.Bytes), p.Rate)
	if p.ETA > 0 {
		s += ", ETA " + p.ETA.Round(time.Second).String()
	}
	return s
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// progressBars draws, on a terminal, one bar per running full pass of
// jobs' targets until stop is called (a pipe or a log file gets the
// result lines only, and the daemon logs progress instead).
func progressBars(ctx context.Context, out io.Writer, jobs []syncJob) (stop func()) {
	f, ok := out.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		bars := map[string]*progressbar.ProgressBar{}
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				for _, b := range bars {
					_ = b.Finish()
				}
				return
			case <-tick.C:
			}
			for _, sj := range jobs {
				for _, st := range sj.job.Status() {
					if st.Progress == nil {
						continue
					}
					key := st.Job + " -> " + st.Target
					p := *st.Progress
					b := bars[key]
					if b == nil {
						b = progressbar.NewOptions64(-1,
							progressbar.OptionSetWriter(f),
							progressbar.OptionSetItsString("entries"),
							progressbar.OptionShowIts(),
							progressbar.OptionShowCount(),
							progressbar.OptionSetPredictTime(true),
							progressbar.OptionFullWidth(),
							progressbar.OptionThrottle(100*time.Millisecond),
						)
						bars[key] = b
					}
					if p.Total > 0 && b.GetMax64() != p.Total {
						b.ChangeMax64(p.Total)
					}
					b.Describe(fmt.Sprintf("%s: %d files, %s", key, p.Files, humanBytes(p.Bytes)))
					_ = b.Set64(min(p.Compared, max(p.Total, p.Compared)))
				}
			}
		}
	})
	return func() {
		cancel()
		wg.Wait()
		fmt.Fprintln(f)
	}
}
