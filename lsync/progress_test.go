package lsync_test

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/integration/poll"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/lsync/localtarget"
	"github.com/lockstep-ha/lockstep/lsync/lsynctest"
)

// slowConnector dials local targets whose uploads take a while, so that a
// pass is long enough to be watched.
type slowConnector struct {
	lsync.Connector
	dir string
}

type slowTarget struct{ *localtarget.Target }

func (c slowConnector) Connect(context.Context) (lsync.Target, error) {
	t, err := localtarget.Open(c.dir)
	if err != nil {
		return nil, err
	}
	return slowTarget{t}, nil
}

func (t slowTarget) WriteFile(ctx context.Context, rel string, r io.Reader, mode fs.FileMode, mtime time.Time) error {
	time.Sleep(20 * time.Millisecond)
	return t.Target.WriteFile(ctx, rel, r, mode, mtime)
}

// TestFullPassReportsProgress: a running full pass shows in the job's
// status how far it got (entries compared of the total, files and bytes
// pushed), and the status is clear again once it ended.
func TestFullPassReportsProgress(t *testing.T) {
	cfg, src, dst := localJobConfig(t, "peer")
	cfg.Concurrency = 2
	for i := range 60 {
		lsynctest.WriteFile(t, src, fmt.Sprintf("d%d/f%d.txt", i%3, i), "0123456789", 0o644, time.Time{})
	}
	conn := slowConnector{Connector: lsynctest.LocalConnectors(t, cfg)[0], dir: dst[0]}
	j, err := lsync.NewJob(cfg, []lsync.Connector{conn}, lsync.JobOptions{Logger: lsynctest.TestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Stop()
	done := make(chan []lsync.OnceResult, 1)
	go func() { done <- j.ReconcileOnce(t.Context()) }()
	var seen lsync.ProgressSnapshot
	poll.Until(t, 10*time.Second, "progress in the status", func() bool {
		p := j.Status()[0].Progress
		if p != nil && p.Files > 0 && p.Total > 0 {
			seen = *p
			return true
		}
		return false
	})
	if seen.Total != 63 || seen.Compared > seen.Total || seen.Bytes != 10*seen.Files || !seen.Running {
		t.Errorf("progress %+v: want 63 entries in all, 10 bytes a file", seen)
	}
	res := <-done
	if !res[0].OK() {
		t.Fatalf("%+v", res[0])
	}
	if p := j.Status()[0].Progress; p != nil {
		t.Errorf("progress after the pass: %+v", p)
	}
}
