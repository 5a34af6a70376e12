package repair_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/dbrepl/repair"
	"github.com/lockstep-ha/lockstep/integration/mariadbpair"
)

const childEnv = "LOCKSTEP_REPAIR_CHILD_CONFIG"

// TestMain lets the test binary run a repair as a child process that the
// kill test ends with SIGKILL mid-way.
func TestMain(m *testing.M) {
	if cfgJSON := os.Getenv(childEnv); cfgJSON != "" {
		var cfg dbrepl.Config
		if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
			fmt.Println("bad config:", err)
			os.Exit(3)
		}
		_, err := repair.Run(context.Background(), cfg, repair.Options{Source: "db1", Target: "db2", Method: repair.MethodRows, ChunkRows: 100,
			AfterTable: func(table string) {
				fmt.Println("TABLE", table)
				time.Sleep(time.Minute) // killed here
			}})
		fmt.Println("finished:", err)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestRepairKilled: a repair killed with SIGKILL after its first table
// leaves the target fenced and its replication stopped; running it again
// finishes the repair.
func TestRepairKilled(t *testing.T) {
	p := mariadbpair.Start(t)
	seed(t, p)
	db2 := p.Nodes[1]
	execLocal(t, db2.DB, "UPDATE app.t SET v = 'drift' WHERE id BETWEEN 10 AND 20", "DELETE FROM app.w", "INSERT INTO app.w VALUES (1, NOW())")
	cfg := config(t, p)
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	child := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childEnv+"="+string(b))
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	got := ""
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "TABLE ") {
			got = sc.Text()
			break
		}
		t.Logf("child: %s", sc.Text())
	}
	if got == "" {
		_ = child.Process.Kill()
		_ = child.Wait()
		t.Fatal("the child repair ended before its first table")
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	t.Logf("killed after %q", got)

	if !readOnly(t, db2) {
		t.Fatal("target writable after the repair was killed")
	}
	st, err := db2.Replication(context.Background())
	if err != nil || st.SQLRunning == "Yes" {
		t.Errorf("target replication after the kill: %+v %v", st, err)
	}
	r, err := repair.Run(context.Background(), cfg, repair.Options{Source: "db1", Target: "db2"})
	mustClean(t, r, err)
	var n int
	if err := db2.DB.QueryRow("SELECT COUNT(*) FROM app.t WHERE v = 'drift'").Scan(&n); err != nil || n != 0 {
		t.Errorf("drifted rows left on db2: %d %v", n, err)
	}
}
