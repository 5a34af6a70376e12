package orchestrator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Track defaults: keepalived's fall and rise of 1, the monitors' timing.
const (
	DefaultTrackInterval = 2 * time.Second
	DefaultTrackTimeout  = 5 * time.Second
	DefaultTrackFall     = 1
	DefaultTrackRise     = 1
)

// trackEnv is the whole environment of a track script: the daemon's own
// may carry secrets expanded from ${VAR} (the database password).
var trackEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}

// TrackConfig is one `cluster.track[]` entry: a check that is not a
// resource (keepalived's track_script). While it fails this node may not
// hold the writer role: a standby does not take over, a writer gives the
// role up.
type TrackConfig struct {
	Name     string        `yaml:"name"` // default: the script or URL
	Script   string        `yaml:"script"`
	Args     []string      `yaml:"args"`
	URL      string        `yaml:"url"`
	Interval time.Duration `yaml:"interval"`
	Timeout  time.Duration `yaml:"timeout"`
	// Fall consecutive failures make a passing check fail; Rise
	// consecutive successes make a failing one pass.
	Fall int `yaml:"fall"`
	Rise int `yaml:"rise"`
}

func (t *TrackConfig) setDefaults() {
	if t.Name == "" {
		t.Name = t.Script + t.URL
	}
	if t.Interval == 0 {
		t.Interval = DefaultTrackInterval
	}
	if t.Timeout == 0 {
		t.Timeout = DefaultTrackTimeout
	}
	if t.Fall == 0 {
		t.Fall = DefaultTrackFall
	}
	if t.Rise == 0 {
		t.Rise = DefaultTrackRise
	}
}

func validateTracks(ts []TrackConfig) []error {
	var errs []error
	seen := map[string]bool{}
	for i, t := range ts {
		p := fmt.Sprintf("track[%d].", i)
		switch {
		case t.Script != "" && t.URL != "":
			errs = append(errs, fmt.Errorf("track[%d]: set either script or url, not both", i))
		case t.Script != "":
			if !filepath.IsAbs(t.Script) {
				errs = append(errs, fmt.Errorf("%sscript: %q must be an absolute path", p, t.Script))
			}
		case t.URL != "":
			if u, err := url.Parse(t.URL); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
				errs = append(errs, fmt.Errorf("%surl: %q is not an http(s):// URL", p, t.URL))
			}
			if len(t.Args) > 0 {
				errs = append(errs, fmt.Errorf("%sargs: only valid with script", p))
			}
		default:
			errs = append(errs, fmt.Errorf("track[%d]: one of script or url is required", i))
		}
		if t.Name != "" {
			if seen[t.Name] {
				errs = append(errs, fmt.Errorf("%sname: duplicate track %q", p, t.Name))
			}
			seen[t.Name] = true
		}
		if t.Interval < 100*time.Millisecond {
			errs = append(errs, fmt.Errorf("%sinterval: %s must be at least 100ms", p, t.Interval))
		}
		if t.Timeout < 10*time.Millisecond {
			errs = append(errs, fmt.Errorf("%stimeout: %s must be at least 10ms", p, t.Timeout))
		}
		if t.Fall < 1 || t.Rise < 1 {
			errs = append(errs, fmt.Errorf("%sfall, rise: must be at least 1", p))
		}
	}
	return errs
}

// checkTracks catches a missing or non-executable track script when the
// daemon starts or reloads rather than when it first fails.
func checkTracks(ts []TrackConfig) error {
	for i, t := range ts {
		if t.Script == "" {
			continue
		}
		if err := checkScript(t.Script); err != nil {
			return fmt.Errorf("track[%d].script: %w", i, err)
		}
	}
	return nil
}

// TrackStatus is one track in /status.
type TrackStatus struct {
	Name      string    `json:"name"`
	OK        bool      `json:"ok"`
	Checked   bool      `json:"checked"`
	LastCheck time.Time `json:"last_check,omitzero"`
	Changed   time.Time `json:"changed,omitzero"`
	LastError string    `json:"last_error,omitempty"`
}

type trackState struct {
	cfg   TrackConfig
	key   string
	probe func(ctx context.Context) error

	// Under tracker.mu.
	checked      bool
	ok           bool
	fails, rises int
	lastCheck    time.Time
	changed      time.Time
	lastErr      string
}

// tracker runs the track checks: one goroutine per track, owned by the
// role manager's Run. decide reads its verdict through the role loop.
type tracker struct {
	cfg     *atomic.Pointer[ClusterConfig]
	events  *EventLog
	metrics *monitorMetrics
	changed chan struct{}

	mu     sync.Mutex
	tracks []*trackState
}

func newTracker(cfg *atomic.Pointer[ClusterConfig], events *EventLog, metrics *monitorMetrics) *tracker {
	return &tracker{cfg: cfg, events: events, metrics: metrics, changed: make(chan struct{}, 1)}
}

// reload has run restart the checks with the configured list; a track
// whose settings did not change keeps its state, so a reload does not
// make a writer ineligible while its tracks are checked again.
func (t *tracker) reload() {
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

func (t *tracker) install() {
	cfgs := t.cfg.Load().Track
	t.mu.Lock()
	defer t.mu.Unlock()
	old := map[string]*trackState{}
	for _, ts := range t.tracks {
		old[ts.key] = ts
	}
	var next []*trackState
	for _, c := range cfgs {
		key := fmt.Sprintf("%+v", c)
		if ts := old[key]; ts != nil {
			next = append(next, ts)
			delete(old, key)
			continue
		}
		next = append(next, &trackState{cfg: c, key: key, probe: trackProbe(c)})
	}
	for _, ts := range old {
		t.metrics.trackUp.DeleteLabelValues(ts.cfg.Name)
	}
	t.tracks = next
}

// run checks every track until ctx ends, starting over on reload.
func (t *tracker) run(ctx context.Context) {
	for {
		t.install()
		t.mu.Lock()
		tracks := append([]*trackState(nil), t.tracks...)
		t.mu.Unlock()
		rctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for _, ts := range tracks {
			wg.Go(func() { t.watch(rctx, ts) })
		}
		select {
		case <-ctx.Done():
		case <-t.changed:
		}
		cancel()
		wg.Wait()
		if ctx.Err() != nil {
			return
		}
	}
}

func (t *tracker) watch(ctx context.Context, ts *trackState) {
	for {
		cctx, cancel := context.WithTimeout(ctx, ts.cfg.Timeout)
		err := ts.probe(cctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		t.record(ts, err, time.Now())
		select {
		case <-ctx.Done():
			return
		case <-time.After(ts.cfg.Interval):
		}
	}
}

// record applies fall and rise. The first result counts at once: a node
// must not wait fall x interval to learn that a check fails at startup.
func (t *tracker) record(ts *trackState, err error, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ts.lastCheck = now
	was, first := ts.ok, !ts.checked
	if err != nil {
		ts.lastErr = err.Error()
		ts.fails++
		ts.rises = 0
		if first || ts.fails >= ts.cfg.Fall {
			ts.ok = false
		}
	} else {
		ts.lastErr = ""
		ts.rises++
		ts.fails = 0
		if first || ts.rises >= ts.cfg.Rise {
			ts.ok = true
		}
	}
	ts.checked = true
	t.metrics.trackUp.WithLabelValues(ts.cfg.Name).Set(b2f(ts.ok))
	switch {
	case first && !ts.ok:
		ts.changed = now
		t.events.Warn(EventTrack, fmt.Sprintf("track %s failing: %s; not eligible for the writer role", ts.cfg.Name, ts.lastErr), "track", ts.cfg.Name)
	case first:
		ts.changed = now
	case was && !ts.ok:
		ts.changed = now
		t.events.Warn(EventTrack, fmt.Sprintf("track %s failing (%d consecutive failures, fall %d): %s; not eligible for the writer role", ts.cfg.Name, ts.fails, ts.cfg.Fall, ts.lastErr), "track", ts.cfg.Name)
	case !was && ts.ok:
		ts.changed = now
		t.events.Add(EventTrack, fmt.Sprintf("track %s passing again (%d consecutive successes, rise %d)", ts.cfg.Name, ts.rises, ts.cfg.Rise), "track", ts.cfg.Name)
	}
}

// verdict: the failing tracks, and the tracks not checked yet.
func (t *tracker) verdict() (failing, unchecked string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var f, u []string
	for _, ts := range t.tracks {
		switch {
		case !ts.checked:
			u = append(u, "track "+ts.cfg.Name+" not checked yet")
		case !ts.ok:
			f = append(f, fmt.Sprintf("track %s failing (%s)", ts.cfg.Name, ts.lastErr))
		}
	}
	return strings.Join(f, "; "), strings.Join(u, "; ")
}

func (t *tracker) status() []TrackStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := []TrackStatus{}
	for _, ts := range t.tracks {
		out = append(out, TrackStatus{Name: ts.cfg.Name, OK: ts.ok, Checked: ts.checked, LastCheck: ts.lastCheck,
			Changed: ts.changed, LastError: ts.lastErr})
	}
	return out
}

func trackProbe(c TrackConfig) func(ctx context.Context) error {
	if c.URL != "" {
		// A fresh connection per check, like the witnesses: no pooled
		// connection hides a dead listener, no idle goroutines to own.
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		return func(ctx context.Context) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL, nil)
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("no answer within timeout %s", c.Timeout)
				}
				return err
			}
			resp.Body.Close()
			if resp.StatusCode < 200 || resp.StatusCode > 299 {
				return fmt.Errorf("HTTP %s", resp.Status)
			}
			return nil
		}
	}
	return func(ctx context.Context) error { return runTrackScript(ctx, c) }
}

// runTrackScript runs the script in its own process group with the
// minimal environment; at the timeout the whole group is killed.
func runTrackScript(ctx context.Context, c TrackConfig) error {
	cmd := exec.CommandContext(ctx, c.Script, c.Args...)
	var out tailBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = trackEnv
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A child that keeps the output pipe open must not hold the check.
	cmd.WaitDelay = 500 * time.Millisecond
	start := time.Now()
	err := cmd.Run()
	if ctx.Err() != nil {
		if cmd.Process != nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		return fmt.Errorf("%s timed out after %s; process group killed%s", c.Script, time.Since(start).Round(time.Millisecond), out.tail())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee) && ee.Exited():
		return fmt.Errorf("%s exited %d%s", c.Script, ee.ExitCode(), out.tail())
	default:
		return fmt.Errorf("%s: %v%s", c.Script, err, out.tail())
	}
}

// tailBuffer keeps the last 512 bytes written, for error messages.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > 512 {
		b.buf = b.buf[len(b.buf)-512:]
	}
	return len(p), nil
}

func (b *tailBuffer) tail() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := strings.TrimSpace(string(bytes.ToValidUTF8(b.buf, nil)))
	if s == "" {
		return ""
	}
	return ": " + strings.ReplaceAll(s, "\n", " | ")
}
