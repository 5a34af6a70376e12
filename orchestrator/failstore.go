package orchestrator

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/lockstep-ha/lockstep/internal/atomicfile"
)

// Resource failures outlive the daemon. A node that gave the writer role
// up because a resource could not be recovered must not become eligible
// again, with no word, because it was restarted (a crash, systemctl
// restart, an upgrade): the failure records and the restart times are
// kept in cluster.state_dir and read back at start. failure_timeout
// counts by wall-clock age across the restart (the monotonic clock does
// not survive one); `lockstep clear` removes them from the file too.

// DefaultStateDir is the config file's default for cluster.state_dir
// (the sync jobs' and the replication supervisor's default too).
const DefaultStateDir = "/var/lib/lockstep"

// failureFile is the state file's content.
type failureFile struct {
	Node     string                 `json:"node"`
	Failures []ResourceFailure      `json:"failures"`
	Restarts map[string][]time.Time `json:"restarts,omitempty"`
}

// failureStore keeps one node's failure records in dir
// (resource-failures-NODE.json: two nodes of a test or playground may
// share a directory).
type failureStore struct {
	dir, node string
}

func (s *failureStore) path() string {
	return filepath.Join(s.dir, "resource-failures-"+s.node+".json")
}

// load returns the records, nil when there are none.
func (s *failureStore) load() (*failureFile, error) {
	b, err := os.ReadFile(s.path())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var f failureFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: corrupt resource failure records (%v): fix or remove the file; removing it forgets the failures, as `lockstep clear --all` would", s.path(), err)
	}
	return &f, nil
}

// save writes the records atomically (temp file, fsync, rename, fsync of
// the directory), readable by root only: a crash leaves the old records
// or the new ones, never half of them.
func (s *failureStore) save(f *failureFile) error {
	if err := os.MkdirAll(s.dir, 0o750); err != nil {
		return err
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(s.path(), append(b, '\n'))
}

// persistLocked writes the current records; h.mu is held. A failure to
// write is reported, not fatal: the records still hold in memory, and
// losing them only matters at the next restart.
func (h *resourceHealth) persistLocked() {
	if h.store == nil {
		return
	}
	f := &failureFile{Node: h.store.node, Failures: []ResourceFailure{}, Restarts: map[string][]time.Time{}}
	for _, r := range h.failed {
		f.Failures = append(f.Failures, r)
	}
	for n, ts := range h.restarts {
		if len(ts) > 0 {
			f.Restarts[n] = append([]time.Time(nil), ts...)
		}
	}
	sortFailures(f.Failures)
	if err := h.store.save(f); err != nil && h.warn != nil {
		h.warn(fmt.Sprintf("could not save the resource failure records to %s: %v; they hold until this daemon stops, but a restart would forget them", h.store.path(), err))
	}
}

// restoreFailures reads the previous run's records into the role
// manager's resource health, before anything runs. A record of a resource
// no longer configured is dropped; failure_timeout (as configured now)
// counts from when the failure was recorded, by the wall clock. It says
// what it did in events, and returns an error only when the file cannot
// be read: starting eligible on a file that says otherwise is not safe.
func (rm *RoleManager) restoreFailures(g *Group, now time.Time) error {
	h := rm.health
	f, err := h.store.load()
	if err != nil || f == nil {
		return err
	}
	byName := map[string]*monitored{}
	for _, r := range g.resources {
		if m, ok := r.(*monitored); ok {
			byName[m.Name()] = m
		}
	}
	changed := false
	h.mu.Lock()
	for _, rec := range f.Failures {
		m, ok := byName[rec.Resource]
		if !ok {
			changed = true
			rm.events.Add(EventResource, fmt.Sprintf("failure of %s from the previous run dropped: the resource is no longer configured (recorded %s: %s)", rec.Resource, rec.Since.Format(time.RFC3339), rec.Reason), "resource", rec.Resource)
			continue
		}
		rec.Expires = time.Time{}
		if m.spec.failureTimeout > 0 {
			rec.Expires = rec.Since.Add(m.spec.failureTimeout)
			if !now.Before(rec.Expires) {
				changed = true
				rm.events.Add(EventResource, fmt.Sprintf("failure of %s from the previous run expired while the daemon was down (recorded %s ago, failure_timeout %s): %s", rec.Resource, now.Sub(rec.Since).Round(time.Second), m.spec.failureTimeout, rec.Reason), "resource", rec.Resource)
				continue
			}
		}
		if rec.UntilRecovered {
			// Only an address's link recovers by itself; the check is
			// the monitor's.
			if a, ok := m.Resource.(*IPAddr); ok {
				rec.gone = func() bool { return a.linkDown() == nil }
			}
		}
		h.failed[rec.Resource] = rec
		until := "until `lockstep clear " + rec.Resource + "`"
		if !rec.Expires.IsZero() {
			until += " or " + rec.Expires.Format(time.RFC3339) + " (failure_timeout)"
		}
		rm.events.Warn(EventResource, fmt.Sprintf("failure of %s carried over from the previous run (recorded %s ago: %s): not eligible for the writer role %s", rec.Resource, now.Sub(rec.Since).Round(time.Second), rec.Reason, until), "resource", rec.Resource)
	}
	for name, ts := range f.Restarts {
		m, ok := byName[name]
		if !ok {
			changed = true
			continue
		}
		var kept []time.Time
		for _, t := range ts {
			if now.Sub(t) < m.spec.restartWindow {
				kept = append(kept, t)
			}
		}
		changed = changed || len(kept) != len(ts)
		if len(kept) > 0 {
			h.restarts[name] = kept
		}
	}
	if changed {
		h.persistLocked()
	}
	h.mu.Unlock()
	// Announce the ineligibility from the first heartbeat on: the first
	// decision, which would set it, comes a quarter keepalive later.
	if s := failureReasons(h.failures()); s != "" {
		rm.state.ineligible = s
		rm.metrics.monitor.eligible.Set(0)
	}
	return nil
}

// validateStateDir is cluster.state_dir's check ("" = records kept in
// memory only, for tests and embedders).
func validateStateDir(dir string) error {
	if dir != "" && !filepath.IsAbs(dir) {
		return fmt.Errorf("state_dir: %q must be an absolute path", dir)
	}
	return nil
}
