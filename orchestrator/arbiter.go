package orchestrator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

// Credentials for etcd come from the environment only, so that they are
// never in the configuration file (which `lockstep check` and reload
// errors quote) and never reach a child process (internal/proc builds
// children's environments from scratch).
const (
	EnvEtcdUsername = "LOCKSTEP_ETCD_USERNAME"
	EnvEtcdPassword = "LOCKSTEP_ETCD_PASSWORD"
)

// arbiter is the etcd quorum arbiter: a second source of observations
// next to the heartbeats. It holds an etcd lease and, while the role loop
// says this node may be the writer, campaigns in a concurrency.Election
// under prefix/writer; the winner is the writer.
//
// Timing. Every renewal interval (lease TTL / 6) it renews the lease with
// KeepAliveOnce and, on success, knows the lease cannot expire on the
// etcd side before send time + TTL: the server restarted the TTL after
// the request was sent. It reports leadership only until that instant
// minus half the TTL (the demotion deadline), so a writer that can no
// longer renew — etcd unreachable, quorum lost — is told it lost the lease
// half a TTL before etcd can grant the election to anyone else, and the
// role loop fences (database read-only, resources released) within one
// decision tick of that. The other half of the TTL is the budget for that
// fence. Nothing here compares clocks across machines; only the rate of
// the two clocks matters (ppm).
//
// Run owns every goroutine it starts; they end before it returns.
type arbiter struct {
	self     string
	cfg      EtcdConfig
	ttl      time.Duration
	logger   *slog.Logger
	events   *EventLog
	clientFn func() (*clientv3.Client, error)

	// want is set by the role loop: campaign (or keep the leadership)
	// while true, resign when false.
	want chan bool

	mu sync.Mutex
	st arbiterState
}

type arbiterState struct {
	connected   bool // the last renewal succeeded
	tried       bool // at least one attempt finished (for the startup wait)
	leaseID     clientv3.LeaseID
	validUntil  time.Time // local monotonic: the lease lives at least until then
	won         bool      // our campaign returned: we hold the election key
	term        int64     // create revision of our election key
	leader      string    // last observed leader
	leaderTerm  int64
	campaigning bool
	wanted      bool
	lastErr     string
	lastErrAt   time.Time
}

// arbiterView is the arbiter's field group in an observation.
type arbiterView struct {
	configured bool
	tried      bool
	connected  bool
	// leader: we hold the election and the lease is valid beyond the
	// demotion deadline.
	leader     bool
	leaderName string
	term       int64
	validFor   time.Duration // until the demotion deadline (<= 0: passed)
	renewEvery time.Duration
	lastErr    string
}

// ArbiterStatus is the arbiter in /status and `lockstep status`.
type ArbiterStatus struct {
	Kind        string        `json:"kind"`
	Endpoints   []string      `json:"endpoints"`
	Connected   bool          `json:"connected"`
	Leader      string        `json:"leader,omitempty"`
	Term        int64         `json:"term,omitempty"`
	IsLeader    bool          `json:"is_leader"`
	Lease       string        `json:"lease,omitempty"`
	LeaseTTL    time.Duration `json:"lease_ttl"`
	LeaseValid  time.Duration `json:"lease_valid_for"` // until our demotion deadline
	Eligible    bool          `json:"eligible"`
	Campaigning bool          `json:"campaigning"`
	LastError   string        `json:"last_error,omitempty"`
}

func newArbiter(self string, cfg EtcdConfig, logger *slog.Logger, events *EventLog) (*arbiter, error) {
	a := &arbiter{self: self, cfg: cfg, ttl: cfg.LeaseTTL, logger: logger.With("component", "arbiter"), events: events, want: make(chan bool, 1)}
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	user, pass := os.Getenv(EnvEtcdUsername), os.Getenv(EnvEtcdPassword)
	if (user == "") != (pass == "") {
		// etcd would answer "authentication failed" (or ignore the
		// password) at every retry; say which variable is missing at start.
		// The values themselves are never printed.
		return nil, fmt.Errorf("arbiter.etcd: %s and %s: set both or neither (%s is empty)", EnvEtcdUsername, EnvEtcdPassword,
			map[bool]string{true: EnvEtcdUsername, false: EnvEtcdPassword}[user == ""])
	}
	a.clientFn = func() (*clientv3.Client, error) {
		return clientv3.New(clientv3.Config{
			Endpoints:            cfg.Endpoints,
			DialTimeout:          a.renewEvery(),
			DialKeepAliveTime:    a.renewEvery(),
			DialKeepAliveTimeout: a.renewEvery(),
			TLS:                  tlsCfg,
			Username:             user,
			Password:             pass,
			Logger:               zap.NewNop(),
		})
	}
	return a, nil
}

func (c EtcdConfig) tlsConfig() (*tls.Config, error) {
	if c.CAFile == "" && c.CertFile == "" {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("arbiter.etcd.ca_file: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("arbiter.etcd.ca_file: %s holds no PEM certificate", c.CAFile)
		}
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("arbiter.etcd.cert_file, key_file: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

func (a *arbiter) renewEvery() time.Duration { return max(a.ttl/6, 100*time.Millisecond) }

// demoteMargin is how long before the lease can expire on etcd that we
// stop calling ourselves the leader: the budget for the fence.
func (a *arbiter) demoteMargin() time.Duration { return a.ttl / 2 }

// setWant tells the campaign loop whether this node may be the writer;
// the latest value wins.
func (a *arbiter) setWant(w bool) {
	a.mu.Lock()
	same := a.st.wanted == w
	a.st.wanted = w
	a.mu.Unlock()
	if same {
		return
	}
	select {
	case <-a.want:
	default:
	}
	a.want <- w
}

func (a *arbiter) view(now time.Time) arbiterView {
	a.mu.Lock()
	defer a.mu.Unlock()
	v := arbiterView{configured: true, renewEvery: a.renewEvery(), tried: a.st.tried, connected: a.st.connected, leaderName: a.st.leader, term: a.st.leaderTerm, lastErr: a.st.lastErr}
	if !a.st.validUntil.IsZero() {
		v.validFor = a.st.validUntil.Add(-a.demoteMargin()).Sub(now)
	}
	v.leader = a.st.won && v.validFor > 0 && (a.st.leader == "" || a.st.leader == a.self)
	if v.leader {
		v.term = a.st.term
	}
	return v
}

func (a *arbiter) status(now time.Time) *ArbiterStatus {
	v := a.view(now)
	a.mu.Lock()
	defer a.mu.Unlock()
	st := &ArbiterStatus{Kind: "etcd", Endpoints: a.cfg.Endpoints, Connected: v.connected, Leader: v.leaderName, Term: v.term,
		IsLeader: v.leader, LeaseTTL: a.ttl, LeaseValid: max(v.validFor, 0), Eligible: a.st.wanted, Campaigning: a.st.campaigning, LastError: v.lastErr}
	if a.st.leaseID != 0 {
		st.Lease = fmt.Sprintf("%x", int64(a.st.leaseID))
	}
	return st
}

func (a *arbiter) update(fn func(s *arbiterState)) {
	a.mu.Lock()
	fn(&a.st)
	a.mu.Unlock()
}

func (a *arbiter) fail(err error) {
	a.update(func(s *arbiterState) {
		s.connected, s.tried = false, true
		s.lastErr, s.lastErrAt = err.Error(), time.Now()
	})
}

// Run keeps a lease and campaigns when wanted until ctx ends. When ctx
// ends with any cause but errCrash it resigns and revokes the lease, so
// that a peer takes over at once; the role loop has released the
// resources by then.
func (a *arbiter) Run(ctx context.Context) {
	backoff := a.renewEvery()
	for ctx.Err() == nil {
		began := time.Now()
		err := a.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(began) > a.ttl {
			backoff = a.renewEvery() // that session worked for a while
		}
		a.fail(err)
		a.events.Warn(EventArbiter, fmt.Sprintf("etcd arbiter: %v; retrying in %s", err, backoff))
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, a.ttl)
	}
}

// session is one lease's life: grant, renew, observe, campaign. It
// returns when the lease is lost or ctx ends.
func (a *arbiter) session(ctx context.Context) error {
	cli, err := a.clientFn()
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	closeClient := sync.OnceFunc(func() { _ = cli.Close() })
	defer closeClient()
	ttlSec := int64((a.ttl + time.Second - 1) / time.Second)
	sent := time.Now()
	gctx, cancel := context.WithTimeout(ctx, a.ttl/2)
	grant, err := cli.Grant(gctx, ttlSec)
	cancel()
	if err != nil {
		return fmt.Errorf("grant lease: %w", err)
	}
	// Planned with the configured TTL even when the server raised it to
	// its minimum: the lease then lives longer than we assume, which is
	// the safe side.
	a.update(func(s *arbiterState) {
		s.leaseID, s.connected, s.tried, s.validUntil = grant.ID, true, true, sent.Add(a.ttl)
		s.won, s.term, s.lastErr = false, 0, ""
	})
	a.events.Add(EventArbiter, fmt.Sprintf("etcd arbiter: lease %x granted (ttl %s)", int64(grant.ID), a.ttl))
	sctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	sess, err := concurrency.NewSession(cli, concurrency.WithLease(grant.ID), concurrency.WithContext(sctx))
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	el := concurrency.NewElection(sess, strings.TrimRight(a.cfg.Prefix, "/")+"/writer")

	var wg sync.WaitGroup
	wg.Go(func() { stop(a.renew(sctx, cli, grant.ID)) })
	wg.Go(func() { a.observe(sctx, el) })
	wg.Go(func() { stop(a.campaign(sctx, el)) })
	<-sctx.Done()
	cause := context.Cause(sctx)
	a.update(func(s *arbiterState) { s.won = false })
	if ctx.Err() != nil && !errors.Is(context.Cause(ctx), errCrash) {
		// A clean stop: let a peer win at once instead of after the TTL.
		rctx, cancel := context.WithTimeout(context.Background(), a.renewEvery())
		_, _ = cli.Revoke(rctx, grant.ID)
		cancel()
	}
	// Closing the client first unblocks what only it can: Campaign
	// withdraws its key with the client's own context, which would wait
	// for an unreachable etcd.
	closeClient()
	wg.Wait()
	a.update(func(s *arbiterState) { s.won, s.campaigning = false, false })
	if ctx.Err() != nil {
		return nil
	}
	return cause
}

// renew renews the lease every renewal interval and records how long it
// lives at least. It returns when the lease is gone or cannot be renewed
// before it expires.
//
// Each attempt requires an etcd leader (a member cut off from the raft
// leader fails at once instead of hanging) and is bounded by half the
// interval; a failed attempt is retried at once, so that the client's
// round robin over the endpoints reaches a healthy member several times
// before the demotion deadline even when some members are cut off.
func (a *arbiter) renew(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID) error {
	every := a.renewEvery()
	t := time.NewTicker(every)
	defer t.Stop()
	// At once first: the grant's validity counts from before a possibly
	// slow first connection.
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
		tick := time.Now()
		for {
			sent := time.Now()
			rctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), every/2)
			resp, err := cli.KeepAliveOnce(rctx, id)
			cancel()
			if ctx.Err() != nil {
				return nil
			}
			if err == nil && resp.TTL > 0 {
				a.update(func(s *arbiterState) {
					s.connected, s.lastErr = true, ""
					s.validUntil = sent.Add(min(a.ttl, time.Duration(resp.TTL)*time.Second))
				})
				break
			}
			if err == nil {
				err = errors.New("lease expired")
			}
			a.update(func(s *arbiterState) { s.connected, s.lastErr, s.lastErrAt = false, err.Error(), time.Now() })
			a.mu.Lock()
			expired := !time.Now().Before(a.st.validUntil)
			a.mu.Unlock()
			if errors.Is(err, rpctypes.ErrLeaseNotFound) || expired {
				return fmt.Errorf("lease %x lost: %w", int64(id), err)
			}
			if time.Since(tick) >= every {
				break
			}
			// A member without a leader answers at once: do not spin.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(every / 10):
			}
		}
	}
}

// observe follows who holds the election.
func (a *arbiter) observe(ctx context.Context, el *concurrency.Election) {
	for resp := range el.Observe(ctx) {
		if len(resp.Kvs) == 0 {
			continue
		}
		kv := resp.Kvs[0]
		name, term := string(kv.Value), kv.CreateRevision
		a.mu.Lock()
		changed := a.st.leader != name || a.st.leaderTerm != term
		a.st.leader, a.st.leaderTerm = name, term
		a.mu.Unlock()
		if changed {
			a.events.Add(EventArbiter, fmt.Sprintf("etcd arbiter: leader %s (term %d)", name, term))
		}
	}
}

// campaign runs for the writer role while wanted and resigns when not.
func (a *arbiter) campaign(ctx context.Context, el *concurrency.Election) error {
	a.mu.Lock()
	want := a.st.wanted
	a.mu.Unlock()
	for {
		if !want {
			select {
			case <-ctx.Done():
				return nil
			case want = <-a.want:
				continue
			}
		}
		// Each attempt is bounded: a request or watch that went to a
		// member that died or was cut off hangs until the connection is
		// declared dead (gRPC keepalives take 10s and more), and the
		// campaign would wait on it past the old leader's expiry. On the
		// bound, Campaign withdraws its key and we queue again, which
		// the client sends to the next endpoint.
		cctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), 3*a.renewEvery())
		done := make(chan error, 1)
		a.update(func(s *arbiterState) { s.campaigning = true })
		go func() { done <- el.Campaign(cctx, a.self) }()
		var err error
	wait:
		for {
			select {
			case err = <-done:
				break wait
			case want = <-a.want:
				if !want {
					cancel()
				}
			}
		}
		cancel()
		a.update(func(s *arbiterState) { s.campaigning = false })
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if !want || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(cctx.Err(), context.DeadlineExceeded) {
				continue // withdrawn: no longer eligible, or queue again
			}
			if errors.Is(err, rpctypes.ErrNoLeader) || strings.Contains(err.Error(), "request timed out") {
				continue // etcd is electing its own leader
			}
			return fmt.Errorf("campaign: %w", err)
		}
		term := el.Rev()
		a.update(func(s *arbiterState) { s.won, s.term = true, term })
		a.events.Add(EventArbiter, fmt.Sprintf("etcd arbiter: won the election (term %d)", term))
		if !want {
			// Became ineligible while the campaign was being won.
			if err := a.resign(ctx, el); err != nil {
				return err
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case want = <-a.want:
		}
		if !want {
			if err := a.resign(ctx, el); err != nil {
				return err
			}
		}
	}
}

func (a *arbiter) resign(ctx context.Context, el *concurrency.Election) error {
	a.update(func(s *arbiterState) { s.won = false })
	rctx, cancel := context.WithTimeout(ctx, a.renewEvery())
	defer cancel()
	if err := el.Resign(rctx); err != nil {
		// The key stays until the lease goes: end the session so the
		// lease is revoked or expires.
		return fmt.Errorf("resign: %w", err)
	}
	a.events.Add(EventArbiter, "etcd arbiter: resigned the election")
	return nil
}
