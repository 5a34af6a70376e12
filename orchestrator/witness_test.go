package orchestrator

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func probe(t *testing.T, raw string) error {
	t.Helper()
	w, err := NewWitness(raw)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return w.probe(ctx)
}

func TestWitnessProbes(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	go acceptLoop(l, func(c net.Conn) { c.Close() })
	if err := probe(t, "tcp://"+addr); err != nil {
		t.Fatalf("tcp up: %v", err)
	}
	l.Close()
	if err := probe(t, "tcp://"+addr); err == nil {
		t.Fatal("tcp probe succeeded against a closed port")
	}

	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer ok.Close()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) }))
	defer bad.Close()
	if err := probe(t, ok.URL+"/"); err != nil {
		t.Fatalf("http 200: %v", err)
	}
	if err := probe(t, bad.URL+"/"); err == nil || !strings.Contains(err.Error(), "500") {
		t.Fatalf("http 500: %v", err)
	}

	if _, err := NewWitness("udp://x:1"); err == nil {
		t.Fatal("unsupported scheme accepted")
	}

	if _, err := exec.LookPath("ping"); err != nil {
		t.Log("ping not installed (iputils-ping): icmp witness not tested")
		return
	}
	if err := probe(t, "icmp://127.0.0.1"); err != nil {
		t.Fatalf("icmp to loopback: %v", err)
	}
	// 198.51.100.0/24 (TEST-NET-2) is never answered; bounded by the probe timeout.
	w, _ := NewWitness("icmp://198.51.100.1")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := w.probe(ctx); err == nil {
		t.Fatal("icmp to TEST-NET answered")
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("icmp probe ignored its timeout: %s", el)
	}
}

func TestWitnessSeenWindow(t *testing.T) {
	w := &Witness{URL: "tcp://x", probe: func(context.Context) error { return nil }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.run(ctx, 10*time.Millisecond, time.Second); close(done) }()
	waitFor(t, 2*time.Second, "first probe", func() bool { return w.seen(time.Now(), time.Second) })
	cancel()
	<-done
	if w.seen(time.Now().Add(2*time.Second), time.Second) {
		t.Fatal("a witness last seen 2s ago counts as present with a 1s window")
	}
}
