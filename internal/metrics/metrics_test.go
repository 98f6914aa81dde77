package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func fixed(st State, ok bool) func() (State, bool) { return func() (State, bool) { return st, ok } }

// The series follow Prometheus's naming conventions, carry the node
// label, and report what read returns.
func TestMetrics_LintAndValues(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New("n1", fixed(State{HasLeader: true, Term: 7, DBSize: 4096, DBInUse: 1024, LastContact: -1, Dead: 2}, true))
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	m.WritesOK.Inc()
	m.Observe(LogFsync, 3*time.Millisecond)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", err, problems)
	}
	want := `
# HELP cohortkv_has_leader 1 when this member knows a leader, else 0.
# TYPE cohortkv_has_leader gauge
cohortkv_has_leader{node="n1"} 1
# HELP cohortkv_members Members this member sees, by gossip status (alive, suspect, dead, left).
# TYPE cohortkv_members gauge
cohortkv_members{node="n1",status="alive"} 0
cohortkv_members{node="n1",status="dead"} 2
cohortkv_members{node="n1",status="left"} 0
cohortkv_members{node="n1",status="suspect"} 0
# HELP cohortkv_raft_term The current Raft term as this member knows it.
# TYPE cohortkv_raft_term gauge
cohortkv_raft_term{node="n1"} 7
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "cohortkv_has_leader", "cohortkv_members", "cohortkv_raft_term"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "cohortkv_raft_last_contact_seconds"); err != nil || n != 0 {
		t.Errorf("last contact reported while unknown: %d %v", n, err)
	}
	if n, err := testutil.GatherAndCount(reg, "cohortkv_log_fsync_duration_seconds"); err != nil || n != 1 {
		t.Errorf("log fsync histogram: %d series, %v", n, err)
	}
}

// A second set of the same node is refused and leaves nothing behind;
// after Unregister it registers.
func TestMetrics_RegisterAllOrNone(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := New("n1", fixed(State{}, true))
	if err := a.Register(reg); err != nil {
		t.Fatal(err)
	}
	other := New("n2", fixed(State{}, true))
	if err := other.Register(reg); err != nil {
		t.Fatalf("a second node in the same registry: %v", err)
	}
	b := New("n1", fixed(State{}, true))
	if err := b.Register(reg); err == nil {
		t.Fatal("two sets of node n1 in one registry")
	}
	a.Unregister()
	a.Unregister() // idempotent
	if n, _ := testutil.GatherAndCount(reg, "cohortkv_has_leader"); n != 1 {
		t.Fatalf("%d has_leader series after n1 left, want n2's only", n)
	}
	if err := b.Register(reg); err != nil {
		t.Fatalf("register after Unregister: %v", err)
	}
}

// A closed Store (read says false) reports no gauges; a read that panics
// does not take the scrape, or the host, down.
func TestMetrics_CollectWithoutState(t *testing.T) {
	reg := prometheus.NewRegistry()
	if err := New("n1", fixed(State{}, false)).Register(reg); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "cohortkv_has_leader", "cohortkv_members"); err != nil || n != 0 {
		t.Fatalf("closed: %d gauges, %v", n, err)
	}
	reg2 := prometheus.NewRegistry()
	if err := New("n1", func() (State, bool) { panic("boom") }).Register(reg2); err != nil {
		t.Fatal(err)
	}
	if _, err := reg2.Gather(); err != nil {
		t.Fatalf("gather: %v", err)
	}
}
