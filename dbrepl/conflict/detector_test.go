package conflict_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/dbrepl/conflict"
	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
	"github.com/lockstep-ha/lockstep/integration/poll"
)

type collected struct {
	mu sync.Mutex
	cs []dbrepl.Conflict
}

func (c *collected) add(x dbrepl.Conflict) {
	c.mu.Lock()
	c.cs = append(c.cs, x)
	c.mu.Unlock()
}

func (c *collected) get() []dbrepl.Conflict {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]dbrepl.Conflict(nil), c.cs...)
}

func startDetector(t *testing.T, p *mariadbpair.Pair, cfg conflict.Config, reg prometheus.Registerer, got *collected) *conflict.Detector {
	t.Helper()
	var src [2]conflict.Source
	for i, n := range p.Nodes {
		src[i] = conflict.Source{Name: n.Name, DSN: n.RootDSN()}
	}
	d, err := conflict.New(cfg, src, reg, nil, got.add)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = d.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("detector did not stop within 30s of cancellation")
			return
		}
		// Every reader goroutine, ours and the binlog syncer's, is gone.
		deadline := time.Now().Add(10 * time.Second)
		for {
			buf := make([]byte, 1<<20)
			stacks := string(buf[:runtime.Stack(buf, true)])
			if !strings.Contains(stacks, "go-mysql/replication.") && !strings.Contains(stacks, "dbrepl/conflict.(*") {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("goroutines left after Run returned:\n%s", stacks)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for d.Connected() != [2]bool{true, true} {
		if time.Now().After(deadline) {
			t.Fatalf("binlog readers not connected: %v", d.Connected())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return d
}

func mustExec(t *testing.T, n *mariadbpair.Node, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		if _, err := n.DB.Exec(s); err != nil {
			t.Fatalf("%s: %s: %v", n.Name, s, err)
		}
	}
}

func TestDetectorFlagsOnlyConcurrentWrites(t *testing.T) {
	p := mariadbpair.Start(t)
	ctx := context.Background()
	db1, db2 := p.Nodes[0], p.Nodes[1]
	mustExec(t, db1,
		"CREATE DATABASE app",
		"CREATE TABLE app.kv (id INT PRIMARY KEY, v VARCHAR(20))",
		"CREATE TABLE app.pair (a INT, b VARCHAR(5), v INT, PRIMARY KEY (a, b))",
		"INSERT INTO app.kv SELECT seq, 'init' FROM app.seq_1_to_200",
		"INSERT INTO app.pair VALUES (1, 'x', 0)",
		"CREATE TABLE app.nokey (v INT)",
	)
	if err := p.WaitSynced(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	got := &collected{}
	// A small window: the writers below touch 200 keys of app.kv.
	d := startDetector(t, p, conflict.Config{MaxKeysPerTable: 50}, reg, got)

	// Unrelated concurrent writes: each node its own rows.
	var wg sync.WaitGroup
	for i, n := range p.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 150; k++ {
				id := 1 + (2*k+i)%200
				if _, err := n.DB.Exec("UPDATE app.kv SET v = ? WHERE id = ?", fmt.Sprint(n.Name, k), id); err != nil {
					t.Errorf("%s: %v", n.Name, err)
					return
				}
				if _, err := n.DB.Exec("INSERT INTO app.nokey VALUES (1)"); err != nil {
					t.Errorf("%s: %v", n.Name, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	// The window stays within its bound however many keys were written.
	waitUntil(t, "the writes to be read", func() bool { return d.Tracker().Entries() >= 50 })
	if n := d.Tracker().Entries(); n > 50 {
		t.Fatalf("window holds %d keys of app.kv, bound is 50", n)
	}
	// The same row on both nodes, one after the other: ordinary traffic.
	mustExec(t, db1, "UPDATE app.pair SET v = 1 WHERE a = 1 AND b = 'x'")
	if err := p.WaitSynced(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	mustExec(t, db2, "UPDATE app.pair SET v = 2 WHERE a = 1 AND b = 'x'")
	if err := p.WaitSynced(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	// Heartbeat-like writes in the lockstep schema are ignored even when
	// both nodes write the same row.
	mustExec(t, db1, "CREATE DATABASE lockstep", "CREATE TABLE lockstep.hb (id INT PRIMARY KEY, ts INT)", "INSERT INTO lockstep.hb VALUES (1, 0)")
	if err := p.WaitSynced(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	// Now the real thing: db2 does not apply db1's writes while both
	// change the same row.
	if err := db2.StopSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	mustExec(t, db1, "UPDATE app.kv SET v = 'from-db1' WHERE id = 7", "UPDATE lockstep.hb SET ts = 1 WHERE id = 1")
	mustExec(t, db2, "UPDATE app.kv SET v = 'from-db2' WHERE id = 7", "UPDATE lockstep.hb SET ts = 2 WHERE id = 1")
	deadline := time.Now().Add(15 * time.Second)
	for len(got.get()) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if err := db2.StartSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	// Let any late (false) report arrive before judging.
	time.Sleep(500 * time.Millisecond)
	cs := got.get()
	if len(cs) != 1 {
		t.Fatalf("conflicts = %+v, want exactly the one on app.kv id=7", cs)
	}
	c := cs[0]
	if c.Schema != "app" || c.Table != "kv" || c.PrimaryKey != "id=7" {
		t.Fatalf("conflict = %+v", c)
	}
	if strings.Join(c.Origins, ",") != "db1,db2" || len(c.GTIDs) != 2 ||
		!strings.HasPrefix(c.GTIDs[0], "1-1-") || !strings.HasPrefix(c.GTIDs[1], "2-2-") {
		t.Fatalf("origins/gtids = %v %v", c.Origins, c.GTIDs)
	}
	if n := metricValue(t, reg, "lockstep_repl_conflicts_total"); n != 1 {
		t.Fatalf("lockstep_repl_conflicts_total = %v", n)
	}
	if r := d.Recent(); len(r) != 1 || r[0].PrimaryKey != "id=7" {
		t.Fatalf("Recent() = %+v", r)
	}

	// The reader reconnects after its node crashed and came back.
	if err := p.WaitSynced(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := db2.Kill(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "db2's reader to notice", func() bool { return !d.Connected()[1] })
	if err := db2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "db2's reader to reconnect", func() bool { return d.Connected() == [2]bool{true, true} })
	if err := db2.WaitReplicating(ctx); err != nil {
		t.Fatal(err)
	}
	if err := db2.StopSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
	mustExec(t, db1, "UPDATE app.kv SET v = 'again-db1' WHERE id = 9")
	mustExec(t, db2, "UPDATE app.kv SET v = 'again-db2' WHERE id = 9")
	waitUntil(t, "the conflict after reconnecting", func() bool { return len(got.get()) == 2 })
	if c := got.get()[1]; c.PrimaryKey != "id=9" {
		t.Fatalf("second conflict = %+v", c)
	}
	if err := db2.StartSQLThread(ctx); err != nil {
		t.Fatal(err)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 30*time.Second, what, cond)
}

func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}
