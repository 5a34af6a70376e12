package orchestrator

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// testPKI is a throw-away CA with a server certificate for 127.0.0.1 and
// a client certificate, as PEM files in a test's temp dir.
type testPKI struct {
	ca, serverCert, serverKey, clientCert, clientKey string
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lockstep test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leaf := func(name string, serial int64, usage []x509.ExtKeyUsage, ips []net.IP) (string, string) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usage, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name+".crt", "CERTIFICATE", der), write(name+".key", "PRIVATE KEY", kder)
	}
	p := testPKI{ca: write("ca.crt", "CERTIFICATE", caDER)}
	p.serverCert, p.serverKey = leaf("etcd", 2, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, []net.IP{net.IPv4(127, 0, 0, 1)})
	p.clientCert, p.clientKey = leaf("lockstep-node", 3, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil)
	return p
}

const (
	tlsTestPrefix = "/lockstep-tls"
	tlsTestUser   = "lockstep"
)

// startEtcdTLSAuth runs a real etcd that accepts clients only over TLS
// with a certificate of the test CA, and with authentication enabled: a
// user tlsTestUser (password returned) may use tlsTestPrefix only.
func startEtcdTLSAuth(t *testing.T, pki testPKI) (endpoint, password string) {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("etcd not installed (apt-get install etcd-server)")
	}
	dir := t.TempDir()
	client, peer := freeTCP(t), freeTCP(t)
	cmd := exec.Command(bin, "--data-dir", filepath.Join(dir, "data"), "--name", "t",
		"--listen-client-urls", "https://"+client, "--advertise-client-urls", "https://"+client,
		"--listen-peer-urls", "http://"+peer, "--initial-advertise-peer-urls", "http://"+peer,
		"--initial-cluster", "t=http://"+peer,
		"--cert-file", pki.serverCert, "--key-file", pki.serverKey, "--trusted-ca-file", pki.ca, "--client-cert-auth")
	logf, err := os.Create(filepath.Join(dir, "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	endpoint = "https://" + client

	tlsCfg, err := EtcdConfig{CAFile: pki.ca, CertFile: pki.clientCert, KeyFile: pki.clientKey}.tlsConfig()
	if err != nil {
		t.Fatal(err)
	}
	admin, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	password = "pw-" + strings.Repeat("s3cr3t", 4)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	steps := []struct {
		what string
		do   func() error
	}{
		{"root user", func() error { _, err := admin.UserAdd(ctx, "root", "root-"+password); return err }},
		{"root role", func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err }},
		{"lockstep role", func() error { _, err := admin.RoleAdd(ctx, tlsTestUser); return err }},
		{"lockstep permission", func() error {
			_, err := admin.RoleGrantPermission(ctx, tlsTestUser, tlsTestPrefix, clientv3.GetPrefixRangeEnd(tlsTestPrefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		}},
		{"lockstep user", func() error { _, err := admin.UserAdd(ctx, tlsTestUser, password); return err }},
		{"lockstep user's role", func() error { _, err := admin.UserGrantRole(ctx, tlsTestUser, tlsTestUser); return err }},
		{"auth enable", func() error { _, err := admin.AuthEnable(ctx); return err }},
	}
	for _, s := range steps {
		// The first call also waits for etcd to come up.
		var err error
		for deadline := time.Now().Add(15 * time.Second); ; {
			if err = s.do(); err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("etcd setup: %s: %v", s.what, err)
		}
	}
	return endpoint, password
}

// The arbiter against an etcd that demands TLS client certificates and a
// password: with the CA, the client certificate and the credentials from
// the environment, one writer is elected and the election works; the
// password appears nowhere in /status, events or logs.
func TestArbiterEtcdTLSAndAuth(t *testing.T) {
	pki := newTestPKI(t)
	endpoint, password := startEtcdTLSAuth(t, pki)
	t.Setenv(EnvEtcdUsername, tlsTestUser)
	t.Setenv(EnvEtcdPassword, password)

	// A 4s lease, not the other tests' 2s: each renewal is bounded by
	// lease_ttl/12, and a TLS handshake under -race on a loaded 2-core
	// machine can take longer than 166ms.
	const ttl = 4 * time.Second
	o := clusterOpts{noWitness: true}
	o.configure = func(node, dir string, cc *ClusterConfig) {
		cc.Arbiter.Etcd = &EtcdConfig{Endpoints: []string{endpoint}, Prefix: tlsTestPrefix, LeaseTTL: ttl,
			CAFile: pki.ca, CertFile: pki.clientCert, KeyFile: pki.clientKey}
	}
	tc := startCluster(t, o)
	a, b := tc.nodes["a"], tc.nodes["b"]
	var w *testNode
	waitFor(t, 15*time.Second, "one writer elected through etcd over TLS with a password", func() bool {
		switch {
		case len(a.held()) == 2 && b.role() == RoleStandby:
			w = a
		case len(b.held()) == 2 && a.role() == RoleStandby:
			w = b
		}
		return w != nil
	})
	waitFor(t, 10*time.Second, "the writer's arbiter connected and leader", func() bool {
		st := w.daemon.role.Status().Arbiter
		return st != nil && st.Connected && st.IsLeader
	})
	// It stays so: renewals over TLS with a token keep the lease.
	time.Sleep(2 * ttl)
	if st := w.daemon.role.Status().Arbiter; st == nil || !st.IsLeader || len(w.held()) != 2 {
		t.Fatalf("writer's arbiter status after %s: %+v\nevents:\n%s", 2*ttl, st, dumpEvents(w))
	}
	for _, n := range []*testNode{a, b} {
		if s := dumpEvents(n); strings.Contains(s, password) {
			t.Fatalf("%s's events carry the etcd password:\n%s", n.name, s)
		}
	}
}

// Wrong credentials, or no client certificate: the arbiter never
// connects, says why (naming the failure, not the secret), and the
// password is in no log line, event or status.
func TestArbiterEtcdAuthFailuresKeepTheSecret(t *testing.T) {
	pki := newTestPKI(t)
	endpoint, password := startEtcdTLSAuth(t, pki)
	wrong := password + "-wrong"
	for _, tc := range []struct {
		name, user, pass string
		cfg              EtcdConfig
		wantErr          string
	}{
		{"wrong password", tlsTestUser, wrong, EtcdConfig{CAFile: pki.ca, CertFile: pki.clientCert, KeyFile: pki.clientKey}, "authentication failed"},
		{"no client certificate", tlsTestUser, password, EtcdConfig{CAFile: pki.ca}, ""},
		{"unknown CA", tlsTestUser, password, EtcdConfig{CertFile: pki.clientCert, KeyFile: pki.clientKey}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(EnvEtcdUsername, tc.user)
			t.Setenv(EnvEtcdPassword, tc.pass)
			var logBuf syncBuffer
			logger := slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))
			events := NewEventLog(logger)
			cfg := tc.cfg
			cfg.Endpoints, cfg.Prefix, cfg.LeaseTTL = []string{endpoint}, tlsTestPrefix, 2*time.Second
			arb, err := newArbiter("a", cfg, logger, events)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			var wg sync.WaitGroup
			wg.Go(func() { arb.Run(ctx) })
			var st *ArbiterStatus
			waitFor(t, 15*time.Second, "the arbiter reporting its failure", func() bool {
				st = arb.status(time.Now())
				return st.LastError != ""
			})
			time.Sleep(time.Second) // a retry or two
			cancel()
			wg.Wait()
			st = arb.status(time.Now())
			if st.Connected || st.IsLeader {
				t.Fatalf("connected with %s: %+v", tc.name, st)
			}
			if tc.wantErr != "" && !strings.Contains(st.LastError, tc.wantErr) {
				t.Errorf("last error %q, want it to say %q", st.LastError, tc.wantErr)
			}
			t.Logf("%s: %s", tc.name, st.LastError)
			var evs strings.Builder
			for _, e := range events.List() {
				evs.WriteString(e.Message + "\n")
			}
			for where, s := range map[string]string{"log": logBuf.String(), "events": evs.String(), "status": st.LastError} {
				if strings.Contains(s, tc.pass) || strings.Contains(s, password) {
					t.Errorf("the etcd password is in the %s:\n%s", where, s)
				}
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Half the credentials is a start-up error naming the missing variable
// (lockstep run exits 2 on it), never a retry loop against etcd.
func TestArbiterEtcdCredentialsBothOrNeither(t *testing.T) {
	cfg := EtcdConfig{Endpoints: []string{"https://127.0.0.1:1"}, Prefix: "/x", LeaseTTL: 2 * time.Second}
	logger := slog.New(slog.DiscardHandler)
	for _, tc := range []struct{ user, pass, missing string }{
		{"lockstep", "", EnvEtcdPassword},
		{"", "hunter2-secret", EnvEtcdUsername},
	} {
		t.Setenv(EnvEtcdUsername, tc.user)
		t.Setenv(EnvEtcdPassword, tc.pass)
		_, err := newArbiter("a", cfg, logger, NewEventLog(logger))
		if err == nil || !strings.Contains(err.Error(), tc.missing+" is empty") {
			t.Fatalf("user %q pass set %t: err %v, want it to name %s", tc.user, tc.pass != "", err, tc.missing)
		}
		if tc.pass != "" && strings.Contains(err.Error(), tc.pass) {
			t.Fatalf("the error carries the password: %v", err)
		}
	}
}
