package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lockstep-ha/lockstep/config"
	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
	"github.com/lockstep-ha/lockstep/orchestrator"
)

// Two `lockstep run` daemons on one pair: only the writer's supervisor is
// active; the standby's is never told anything and must stay inactive. When
// the writer leaves, the survivor's becomes active; a supervisor run again
// after a restart keeps the value.
func TestRunOnlyWriterSupervisorActive(t *testing.T) {
	p := mariadbpair.Start(t)
	nodes := writeRunConfigs(t, "tcp://"+startWitness(t))

	type daemon struct {
		repl   *dbrepl.Supervisor
		cancel context.CancelFunc
		wg     sync.WaitGroup
	}
	start := func(name string) *daemon {
		cfgPath := nodes[name].cfg
		raw, err := os.ReadFile(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		raw = append(raw, p.ReplConfigYAML(filepath.Join(t.TempDir(), "state"), "  conflicts:\n    enabled: false\n")...)
		if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := config.Load(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		logger := slog.New(slog.NewTextHandler(&tLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", f.Node)
		reg := prometheus.NewRegistry()
		r, _, err := newDaemonSupervisor(*f.Repl, reg, logger, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		if r.Active() {
			t.Fatal("lockstep run's supervisor must start inactive")
		}
		d, err := orchestrator.NewDaemon(orchestrator.DaemonConfig{Node: f.Node, Listen: f.Listen, Cluster: f.Cluster,
			Repl: r, Registry: reg, Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		dm := &daemon{repl: r, cancel: cancel}
		dm.wg.Go(func() {
			if err := d.Run(ctx); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		})
		t.Cleanup(func() { cancel(); dm.wg.Wait() })
		return dm
	}
	active := func(d *daemon) bool { return d.repl.Active() }
	web1 := start("web1")
	waitCond(t, "web1 writer", func() bool { return exists(nodes["web1"].state) })
	web2 := start("web2")
	waitCond(t, "web1's supervisor active", func() bool { return active(web1) })
	// web2 joins as standby; give it several decision rounds.
	time.Sleep(time.Second)
	if active(web2) {
		t.Fatal("standby's supervisor is active")
	}
	if !active(web1) || exists(nodes["web2"].state) {
		t.Fatal("web1 should still be the (only) writer with an active supervisor")
	}

	web1.cancel()
	web1.wg.Wait()
	waitCond(t, "web2 takes over", func() bool { return exists(nodes["web2"].state) })
	waitCond(t, "web2's supervisor active", func() bool { return active(web2) })
	if active(web1) {
		t.Error("web1's supervisor still active after it stepped down")
	}

	// A supervisor run again (the daemon restarts a failed one) keeps it.
	r := web1.repl
	r.SetActive(true)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if !r.Active() {
		t.Fatal("restarted supervisor: not active")
	}
}

type tLogWriter struct{ t *testing.T }

func (w *tLogWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b[:len(b)-1]))
	return len(b), nil
}
