package orchestrator

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lockstep-ha/lockstep/internal/proc"
)

// Witness is a third party (gateway, switch, a monitoring host) whose
// reachability tells an isolated node apart from a node whose peer died.
type Witness struct {
	URL   string
	probe func(ctx context.Context) error

	mu      sync.Mutex
	lastOK  time.Time // start time of the newest successful probe
	lastErr string
	probed  bool
}

// NewWitness parses tcp://host:port, icmp://host, http(s)://host/path.
func NewWitness(raw string) (*Witness, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("witness %q: not a URL like tcp://host:port, icmp://host or http(s)://host/path", raw)
	}
	w := &Witness{URL: raw}
	switch u.Scheme {
	case "tcp":
		host := u.Host
		w.probe = func(ctx context.Context) error {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", host)
			if err != nil {
				return err
			}
			return c.Close()
		}
	case "icmp":
		host := u.Hostname()
		w.probe = func(ctx context.Context) error {
			wait := "1"
			if dl, ok := ctx.Deadline(); ok {
				wait = strconv.Itoa(max(1, int(math.Ceil(time.Until(dl).Seconds()))))
			}
			// Through proc: ping gets no secret from our environment.
			res, err := proc.Run(ctx, proc.Cmd{Path: "ping", Args: []string{"-n", "-q", "-c1", "-W" + wait, host}, TailBytes: 256})
			switch {
			case err != nil && ctx.Err() != nil:
				return fmt.Errorf("no reply within the probe timeout")
			case err != nil:
				return err
			case res.ExitCode != 0:
				return fmt.Errorf("ping: exit status %d: %s", res.ExitCode, lastLine([]byte(strings.ReplaceAll(res.Tail, " | ", "\n"))))
			}
			return nil
		}
	case "http", "https":
		// A fresh connection per probe: reachability now, not of a pooled
		// connection, and no idle-connection goroutines to own.
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
		w.probe = func(ctx context.Context) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, raw, nil)
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode < 200 || resp.StatusCode > 299 {
				return fmt.Errorf("HTTP %s", resp.Status)
			}
			return nil
		}
	default:
		return nil, fmt.Errorf("witness %q: unsupported scheme %q (tcp, icmp, http, https)", raw, u.Scheme)
	}
	return w, nil
}

func lastLine(b []byte) string {
	s := string(b)
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			return s[i+1:]
		}
	}
	return s
}

// run probes every interval, each probe bounded by timeout, until ctx ends.
func (w *Witness) run(ctx context.Context, interval, timeout time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := w.probe(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		w.mu.Lock()
		w.probed = true
		if err == nil {
			w.lastOK = start
			w.lastErr = ""
		} else {
			w.lastErr = err.Error()
		}
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// seen reports whether a probe that started within window succeeded.
// Using the probe's start time makes the answer conservative: the witness
// was reachable at that instant, not merely at some point of the probe.
func (w *Witness) seen(now time.Time, window time.Duration) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.lastOK.IsZero() && now.Sub(w.lastOK) < window
}

// WitnessStatus is one witness in /status.
type WitnessStatus struct {
	URL       string    `json:"url"`
	Reachable bool      `json:"reachable"`
	LastOK    time.Time `json:"last_ok,omitzero"`
	LastError string    `json:"last_error,omitempty"`
}

func (w *Witness) status(now time.Time, window time.Duration) WitnessStatus {
	ok := w.seen(now, window)
	w.mu.Lock()
	defer w.mu.Unlock()
	return WitnessStatus{URL: w.URL, Reachable: ok, LastOK: w.lastOK, LastError: w.lastErr}
}
