package kv_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/internal/storage"
	"github.com/cohortkv/kv/kvtest"
)

// metricsCluster is a kvtest cluster of n members, on real files, that
// all register into reg, with timeouts short enough for elections to be
// quick.
func metricsCluster(t *testing.T, n int, reg prometheus.Registerer, more func(i int, cfg *kv.Config)) *kvtest.Cluster {
	t.Helper()
	return kvtest.NewCluster(t, n, kvtest.Logger(testLogger(t)), kvtest.Configure(func(i int, cfg *kv.Config) {
		cfg.HeartbeatTimeout = 300 * time.Millisecond
		cfg.ElectionTimeout = 300 * time.Millisecond
		cfg.LeaderLeaseTimeout = 150 * time.Millisecond
		cfg.DeadMemberTimeout = time.Hour
		cfg.Metrics = reg
		if more != nil {
			more(i, cfg)
		}
	}))
}

// sample returns the value of series name of member node with the given
// label pairs: a gauge's or counter's value, a histogram's count. ok is
// false when the series is absent.
func sample(t testing.TB, g prometheus.Gatherer, name, node string, labels ...string) (v float64, ok bool) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !hasLabels(m, append([]string{"node", node}, labels...)...) {
				continue
			}
			switch {
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func hasLabels(m *dto.Metric, pairs ...string) bool {
	for i := 0; i+1 < len(pairs); i += 2 {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == pairs[i] && lp.GetValue() == pairs[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// value is sample that fails the test when the series is absent.
func value(t testing.TB, g prometheus.Gatherer, name, node string, labels ...string) float64 {
	t.Helper()
	v, ok := sample(t, g, name, node, labels...)
	if !ok {
		t.Fatalf("no series %s{node=%q %v}", name, node, labels)
	}
	return v
}

// waitValue polls until the series satisfies cond, for up to d.
func waitMetric(t testing.TB, d time.Duration, g prometheus.Gatherer, cond func(float64) bool, what, name, node string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(d)
	var v float64
	var ok bool
	for time.Now().Before(deadline) {
		if v, ok = sample(t, g, name, node, labels...); ok && cond(v) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s{node=%q %v}: want %s within %v; last %v (present %v)", name, node, labels, what, d, v, ok)
}

func one(v float64) bool  { return v == 1 }
func zero(v float64) bool { return v == 0 }

// Several members in one registry, side by side: has_leader is 1 on
// each; a member cut off from the majority loses its leader and the
// series says so; healed, it knows the leader again.
func TestMetrics_HasLeaderFollowsPartition(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := metricsCluster(t, 3, reg, nil)
	l := c.Leader()
	for i := 0; i < 3; i++ {
		id := c.Config(i).NodeID
		waitMetric(t, 10*time.Second, reg, one, "1", "cohortkv_has_leader", id)
		want := 0.0
		if i == l {
			want = 1
		}
		if v := value(t, reg, "cohortkv_is_leader", id); v != want {
			t.Errorf("is_leader of %s = %v, want %v", id, v, want)
		}
		if v := value(t, reg, "cohortkv_members", id, "status", "alive"); v != 3 {
			t.Errorf("members{alive} of %s = %v, want 3", id, v)
		}
		if v := value(t, reg, "cohortkv_members", id, "status", "dead"); v != 0 {
			t.Errorf("members{dead} of %s = %v, want 0", id, v)
		}
		if v := value(t, reg, "cohortkv_raft_term", id); v < 1 {
			t.Errorf("raft_term of %s = %v", id, v)
		}
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
	f := (l + 1) % 3
	fid := c.Config(f).NodeID
	c.Isolate(f)
	waitMetric(t, 15*time.Second, reg, zero, "0 when cut off", "cohortkv_has_leader", fid)
	// The majority still has its leader.
	if v := value(t, reg, "cohortkv_has_leader", c.Config(l).NodeID); v != 1 {
		t.Errorf("has_leader of the majority's leader = %v", v)
	}
	if _, ok := sample(t, reg, "cohortkv_raft_last_contact_seconds", fid); !ok {
		t.Errorf("no raft_last_contact_seconds on the cut-off follower")
	}
	c.Heal()
	waitMetric(t, 20*time.Second, reg, one, "1 after the heal", "cohortkv_has_leader", fid)
	waitMetric(t, 20*time.Second, reg, func(v float64) bool { return v > 0 }, "> 0", "cohortkv_applied_index", fid)
}

// Write and read calls are counted on the member they were called on, by
// outcome and consistency; the latency histograms and the size gauges
// fill.
func TestMetrics_WritesReadsAndLatencies(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := metricsCluster(t, 3, reg, func(i int, cfg *kv.Config) {
		cfg.SnapshotThreshold = 16
		cfg.SnapshotInterval = 100 * time.Millisecond
		cfg.TrailingLogs = 16
	})
	ctx := ctxT(t, 60*time.Second)
	l := c.Leader()
	fi := (l + 1) % 3
	f, fid, lid := c.Node(fi), c.Config(fi).NodeID, c.Config(l).NodeID

	const n = 40
	for i := 0; i < n; i++ {
		if err := f.Set(ctx, fmt.Sprintf("k%02d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Delete(ctx, "k00"); err != nil {
		t.Fatal(err)
	}
	if err := f.SetAsync("async", []byte("v")).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpSet("txn", []byte("v"))}}); err != nil {
		t.Fatal(err)
	}
	id, err := f.Grant(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := f.CompareAndSet(ctx, "cas", []byte("1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	ok := n + 5 // the sets, the delete, the async set, the txn, the grant, the CAS
	// Conflicts: a CAS and a compare-and-delete against a stale revision.
	if _, err := f.CompareAndSet(ctx, "cas", []byte("2"), rev+1000); !errors.Is(err, kv.ErrConflict) {
		t.Fatalf("CAS against a wrong revision: %v", err)
	}
	if err := f.CompareAndDelete(ctx, "cas", rev+1000); !errors.Is(err, kv.ErrConflict) {
		t.Fatalf("CAD against a wrong revision: %v", err)
	}
	// Errors: refused before anything is sent, sync and async; a lease
	// that does not exist.
	if err := f.Set(ctx, "", []byte("v")); !errors.Is(err, kv.ErrEmptyKey) {
		t.Fatalf("empty key: %v", err)
	}
	if err := f.DeleteAsync("").Wait(ctx); !errors.Is(err, kv.ErrEmptyKey) {
		t.Fatalf("async empty key: %v", err)
	}
	if err := f.Revoke(ctx, id+1000); !errors.Is(err, kv.ErrLeaseNotFound) {
		t.Fatalf("revoke of an unknown lease: %v", err)
	}

	want := map[string]float64{"ok": float64(ok), "conflict": 2, "error": 3}
	for result, w := range want {
		if v := value(t, reg, "cohortkv_writes_total", fid, "result", result); v != w {
			t.Errorf("writes_total{result=%q} on the follower = %v, want %v", result, v, w)
		}
		// The leader applied them, but nobody called it.
		if v := value(t, reg, "cohortkv_writes_total", lid, "result", result); v != 0 {
			t.Errorf("writes_total{result=%q} on the leader = %v, want 0", result, v)
		}
	}

	for i := 0; i < 3; i++ {
		if _, err := f.Get(ctx, "k01"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.List(ctx, "k", kv.Stale()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Get(ctx, "k01", kv.Stale()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.ListEntries(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Txn(ctx, kv.Txn{Then: []kv.Op{kv.OpGet("k01")}}); err != nil { // a read
		t.Fatal(err)
	}
	if v := value(t, reg, "cohortkv_reads_total", fid, "consistency", "linearizable"); v != 5 {
		t.Errorf("reads_total{linearizable} = %v, want 5", v)
	}
	if v := value(t, reg, "cohortkv_reads_total", fid, "consistency", "stale"); v != 2 {
		t.Errorf("reads_total{stale} = %v, want 2", v)
	}

	positive := func(v float64) bool { return v > 0 }
	for _, h := range []struct{ name, node string }{
		{"cohortkv_forward_duration_seconds", fid},
		{"cohortkv_read_index_duration_seconds", fid},
		{"cohortkv_raft_commit_duration_seconds", lid},
		{"cohortkv_log_fsync_duration_seconds", lid},
		{"cohortkv_log_fsync_duration_seconds", fid},
		{"cohortkv_fsm_apply_duration_seconds", fid},
	} {
		if v := value(t, reg, h.name, h.node); v <= 0 {
			t.Errorf("%s{node=%q}: no observations", h.name, h.node)
		}
	}
	// The committer writes the data file every 4 s, and raft
	// checks for a snapshot every SnapshotInterval.
	waitMetric(t, 20*time.Second, reg, positive, "observations", "cohortkv_data_commit_duration_seconds", fid)
	waitMetric(t, 20*time.Second, reg, positive, "observations", "cohortkv_snapshot_duration_seconds", lid)
	for i := 0; i < 3; i++ {
		id := c.Config(i).NodeID
		size, inUse := value(t, reg, "cohortkv_db_size_bytes", id), value(t, reg, "cohortkv_db_size_in_use_bytes", id)
		if size <= 0 || inUse <= 0 || inUse > size {
			t.Errorf("%s: db_size_bytes %v, db_size_in_use_bytes %v", id, size, inUse)
		}
		st := c.Node(i).Stats()
		if st.DBSize <= 0 || st.DBInUse <= 0 || st.DBInUse > st.DBSize {
			t.Errorf("%s: Stats DBSize %d, DBInUse %d", id, st.DBSize, st.DBInUse)
		}
		if v := value(t, reg, "cohortkv_quota_bytes", id); v != float64(kv.DefaultQuotaBytes) || st.QuotaBytes != kv.DefaultQuotaBytes {
			t.Errorf("%s: quota_bytes %v, Stats QuotaBytes %d; want the default %d", id, v, st.QuotaBytes, kv.DefaultQuotaBytes)
		}
		if v := value(t, reg, "cohortkv_data_bytes", id); v <= 0 || v != float64(st.DataBytes) {
			t.Errorf("%s: data_bytes %v, Stats DataBytes %d", id, v, st.DataBytes)
		}
		if v := value(t, reg, "cohortkv_commit_index", id); v <= 0 {
			t.Errorf("%s: commit_index %v", id, v)
		}
	}
}

// The survivors of a leader's crash count the change of leader; the
// crashed member's series leave the registry with it, and come back when
// it restarts with the same NodeID. Scrapes go on throughout.
func TestMetrics_LeaderChangesAndReopen(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := metricsCluster(t, 3, reg, nil)
	l := c.Leader()
	lid := c.Config(l).NodeID
	before := map[int]float64{}
	for i := 0; i < 3; i++ {
		if i != l {
			before[i] = value(t, reg, "cohortkv_leader_changes_seen_total", c.Config(i).NodeID)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // scrapes all along, through the crash and the restart
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := reg.Gather(); err != nil {
				t.Errorf("gather: %v", err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	c.Kill(l)
	if _, ok := sample(t, reg, "cohortkv_has_leader", lid); ok {
		t.Errorf("the crashed member's series are still registered")
	}
	nl := c.Leader()
	for i, b := range before {
		id := c.Config(i).NodeID
		waitMetric(t, 10*time.Second, reg, func(v float64) bool { return v > b }, fmt.Sprintf("> %v", b), "cohortkv_leader_changes_seen_total", id)
	}
	if v := value(t, reg, "cohortkv_is_leader", c.Config(nl).NodeID); v != 1 {
		t.Errorf("is_leader of the new leader = %v", v)
	}
	c.Restart(l)
	waitMetric(t, 20*time.Second, reg, one, "1 after the restart", "cohortkv_has_leader", lid)
}

// A second Store with the same NodeID cannot register into the same
// registry while the first is open, and leaves nothing running; once the
// first is closed it can.
func TestMetrics_SameNodeIDRefused(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := kv.Config{NodeID: "solo", InMemory: true, Metrics: reg, Logger: testLogger(t)}
	a, err := kv.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := kv.Open(cfg); !errors.Is(err, kv.ErrInvalidConfig) {
		if b != nil {
			b.Close()
		}
		t.Fatalf("second Store of NodeID solo in one registry: %v, want ErrInvalidConfig", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if mfs, err := reg.Gather(); err != nil || len(mfs) != 0 {
		t.Fatalf("after Close the registry holds %d families (%v)", len(mfs), err)
	}
	b, err := kv.Open(cfg)
	if err != nil {
		t.Fatalf("reopen after Close: %v", err)
	}
	defer b.Close()
	if err := b.WaitForLeader(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, 10*time.Second, reg, one, "1", "cohortkv_is_leader", "solo")
}

// A halted member reports it, knows no leader, and is scraped without
// blocking or panicking, before and during Close.
func TestMetrics_HaltedMember(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := kv.Open(kv.Config{NodeID: "solo", DataDir: t.TempDir(), Metrics: reg, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 20*time.Second)
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, 10*time.Second, reg, one, "1", "cohortkv_has_leader", "solo")
	kv.Halt(s, fmt.Errorf("a test's doing: %w", storage.ErrCorrupt))
	if v := value(t, reg, "cohortkv_halted", "solo"); v != 1 {
		t.Errorf("halted = %v", v)
	}
	if v := value(t, reg, "cohortkv_has_leader", "solo"); v != 0 {
		t.Errorf("has_leader of a halted member = %v", v)
	}
	if err := s.Set(ctx, "k", []byte("v2")); err == nil {
		t.Fatal("a write on a halted member succeeded")
	}
	if v := value(t, reg, "cohortkv_writes_total", "solo", "result", "error"); v != 1 {
		t.Errorf("writes_total{error} = %v, want 1", v)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 1000; i++ {
			if _, err := reg.Gather(); err != nil && !strings.Contains(err.Error(), "solo") {
				t.Errorf("gather: %v", err)
			}
			select {
			case <-ctx.Done():
				return
			default:
			}
		}
	}()
	s.Close()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("scrapes blocked during Close")
	}
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Errorf("after Close the registry holds %d families", len(mfs))
	}
}

// Without Config.Metrics the Store registers nothing anywhere: not in
// Prometheus's default registry.
func TestMetrics_OffByDefault(t *testing.T) {
	s, err := kv.Open(kv.Config{NodeID: "solo", InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.WaitForLeader(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "cohortkv_") {
			t.Errorf("%s in the default registry", mf.GetName())
		}
	}
}
