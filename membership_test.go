package kv_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	kv "github.com/cohortkv/kv"
)

// memberConfig tunes membership timing down for tests.
func memberConfig(t testing.TB, dir, id string, expect int, join []string) kv.Config {
	cfg := fastConfig(t, dir, id, expect, join)
	cfg.StabilizationTime = 300 * time.Millisecond
	cfg.DeadMemberTimeout = time.Second
	return cfg
}

// growCluster starts n instances with memberConfig, bootstrapping the first
// `expect` of them.
func newMemberCluster(t *testing.T, n int) *cluster {
	t.Helper()
	c := &cluster{t: t, dir: t.TempDir()}
	t.Cleanup(c.closeAll)
	for i := 0; i < n; i++ {
		c.add(3)
	}
	c.waitLeader()
	return c
}

// add opens one more instance joining the cluster and returns its position.
func (c *cluster) add(expect int) int {
	c.t.Helper()
	i := len(c.nodes)
	var join []string
	for _, s := range c.nodes {
		if s != nil {
			join = append(join, s.GossipAddr())
		}
	}
	cfg := memberConfig(c.t, c.dir, fmt.Sprintf("n%d", i+1), expect, join)
	s, err := kv.Open(cfg)
	if err != nil {
		c.t.Fatalf("open n%d: %v", i+1, err)
	}
	c.nodes = append(c.nodes, s)
	c.cfgs = append(c.cfgs, cfg)
	return i
}

// waitConfig polls the leader until the Raft configuration has exactly the
// given voters and non-voters (by NodeID).
func (c *cluster) waitConfig(voters, nonVoters []string, within time.Duration) {
	c.t.Helper()
	want := fmt.Sprintf("voters %v non-voters %v", voters, nonVoters)
	var got string
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		l := c.nodes[c.waitLeader()]
		var v, nv []string
		for _, m := range l.Members() {
			switch m.Suffrage {
			case kv.SuffrageVoter:
				v = append(v, m.ID)
			case kv.SuffrageNonVoter:
				nv = append(nv, m.ID)
			}
		}
		got = fmt.Sprintf("voters %v non-voters %v", v, nv)
		if got == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("configuration: got %s, want %s; leader says %+v", got, want, c.nodes[c.waitLeader()].Stats().NotPromoted)
}

// writer keeps writing unique keys through random open members until stop,
// and remembers which writes were acknowledged.
type writer struct {
	c     *cluster
	mu    sync.Mutex
	acked map[string]string
	stop  chan struct{}
	done  chan struct{}
}

func startWriter(c *cluster) *writer {
	w := &writer{c: c, acked: map[string]string{}, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *writer) run() {
	defer close(w.done)
	for i := 0; i < 100000; i++ {
		select {
		case <-w.stop:
			return
		default:
		}
		w.mu.Lock() // c.nodes changes under the test goroutine; read it under the same discipline
		nodes := append([]*kv.Store(nil), w.c.nodes...)
		w.mu.Unlock()
		s := nodes[i%len(nodes)]
		if s == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		k, v := fmt.Sprintf("w/%06d", i), fmt.Sprint(i)
		err := s.Set(ctx, k, []byte(v))
		cancel()
		if err == nil {
			w.mu.Lock()
			w.acked[k] = v
			w.mu.Unlock()
		}
	}
}

// swap changes c.nodes[i] while the writer may be reading the slice.
func (w *writer) set(i int, s *kv.Store) {
	w.mu.Lock()
	w.c.nodes[i] = s
	w.mu.Unlock()
}

// waitMore waits until n more writes than now were acknowledged.
func (w *writer) waitMore(t *testing.T, n int) {
	t.Helper()
	w.mu.Lock()
	target := len(w.acked) + n
	w.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		w.mu.Lock()
		got := len(w.acked)
		w.mu.Unlock()
		if got >= target {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes stalled: %d acknowledged, waiting for %d", got, target)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (w *writer) finish(t *testing.T, min int) map[string]string {
	t.Helper()
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.acked) < min {
		t.Fatalf("only %d writes acknowledged, want at least %d", len(w.acked), min)
	}
	return w.acked
}

func (c *cluster) checkAll(t *testing.T, acked map[string]string) {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	for i, s := range c.nodes {
		if s == nil {
			continue
		}
		pairs, err := s.List(ctx, "w/")
		if err != nil {
			t.Fatalf("n%d List: %v", i+1, err)
		}
		got := make(map[string]string, len(pairs))
		for _, p := range pairs {
			got[p.Key] = string(p.Value)
		}
		for k, v := range acked {
			if got[k] != v {
				t.Fatalf("n%d lost acknowledged write %s=%s (has %q)", i+1, k, v, got[k])
			}
		}
	}
}

func ids(from, to int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, fmt.Sprintf("n%d", i))
	}
	return out
}

func TestMembership_Grow3To7AndShrinkWithLeave(t *testing.T) {
	c := newMemberCluster(t, 3)
	c.waitConfig(ids(1, 3), nil, 20*time.Second)
	w := startWriter(c)
	for _, n := range []int{5, 7} {
		for len(c.nodes) < n {
			w.mu.Lock()
			c.add(0)
			w.mu.Unlock()
		}
		var voters, non []string
		voters = ids(1, min(n, 5))
		if n > 5 {
			non = ids(6, n)
		}
		c.waitConfig(voters, non, 30*time.Second)
	}
	// The leader explains why the extra members stay non-voters.
	deadline := time.Now().Add(10 * time.Second)
	for why := map[string]string{}; !strings.Contains(why["n6"], "MaxVoters") || !strings.Contains(why["n7"], "MaxVoters"); {
		if time.Now().After(deadline) {
			t.Fatalf("NotPromoted = %v", why)
		}
		time.Sleep(20 * time.Millisecond)
		why = c.nodes[c.waitLeader()].Stats().NotPromoted
	}
	// Shrink back to 3 with Leave, the leader included at some point: leave
	// n7, n6, then whoever leads, then another voter.
	leaveOne := func(i int) {
		t.Helper()
		s := c.nodes[i]
		ctx := ctxT(t, 30*time.Second)
		if err := s.Leave(ctx); err != nil {
			t.Fatalf("n%d Leave: %v", i+1, err)
		}
		w.set(i, nil)
		if _, err := s.Get(ctx, "x"); !errors.Is(err, kv.ErrClosed) {
			t.Fatalf("after Leave, Get: %v", err)
		}
	}
	leaveOne(6)
	leaveOne(5)
	c.waitConfig(ids(1, 5), nil, 20*time.Second)
	leaveOne(c.waitLeader())
	var rest []string
	for i, s := range c.nodes {
		if s != nil && len(rest) < 3 {
			rest = append(rest, fmt.Sprintf("n%d", i+1))
		}
	}
	for i, s := range c.nodes {
		if s != nil && fmt.Sprintf("n%d", i+1) != rest[0] && fmt.Sprintf("n%d", i+1) != rest[1] && fmt.Sprintf("n%d", i+1) != rest[2] {
			leaveOne(i)
		}
	}
	c.waitConfig(rest, nil, 20*time.Second)
	acked := w.finish(t, 20)
	c.checkAll(t, acked)
	// Members that left are reported as left by the others, once the
	// gossip leave has reached them.
	deadline = time.Now().Add(10 * time.Second)
	for {
		var wrong []string
		for _, m := range c.nodes[c.waitLeader()].Members() {
			if m.Suffrage == kv.SuffrageNone && fmt.Sprint(m.Status) != "left" {
				wrong = append(wrong, fmt.Sprintf("%s reported %v", m.ID, m.Status))
			}
		}
		if len(wrong) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("departed members: %v", wrong)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestMembership_DeadVoterIsReplaced(t *testing.T) {
	c := newMemberCluster(t, 3)
	c.add(0) // n4: stays a non-voter, so that the voters stay odd
	c.waitConfig(ids(1, 3), ids(4, 4), 20*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for why := ""; !strings.Contains(why, "odd number of voters"); {
		if time.Now().After(deadline) {
			t.Fatalf("NotPromoted[n4] = %q", why)
		}
		time.Sleep(20 * time.Millisecond)
		why = c.nodes[c.waitLeader()].Stats().NotPromoted["n4"]
	}
	// A 5-voter cluster with a non-voter spare.
	c.add(0)
	c.add(0)
	c.waitConfig(ids(1, 5), ids(6, 6), 30*time.Second)
	w := startWriter(c)
	// Kill a follower voter for good: Close, no Leave.
	victim := -1
	for _, f := range c.followers() {
		if f < 5 {
			victim = f
			break
		}
	}
	if err := c.nodes[victim].Close(); err != nil {
		t.Fatal(err)
	}
	w.set(victim, nil)
	want := []string{}
	for _, id := range ids(1, 6) {
		if id != fmt.Sprintf("n%d", victim+1) {
			want = append(want, id)
		}
	}
	// Gossip declares it dead, DeadMemberTimeout later it is removed, and
	// the spare is promoted in its place.
	c.waitConfig(want, nil, 60*time.Second)
	acked := w.finish(t, 10)
	c.checkAll(t, acked)
}

func TestMembership_RollingRestart(t *testing.T) {
	c := newMemberCluster(t, 3)
	w := startWriter(c)
	w.waitMore(t, 20)
	for i := range c.nodes {
		s := c.nodes[i]
		w.set(i, nil)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		w.mu.Lock()
		c.open(i) // same NodeID and DataDir, new ports
		w.mu.Unlock()
		c.waitLeader()
		// Wait until the restarted member has caught up before the next.
		ctx := ctxT(t, 30*time.Second)
		if err := c.nodes[i].Set(ctx, fmt.Sprintf("restarted/%d", i), []byte("ok")); err != nil {
			t.Fatal(err)
		}
		w.waitMore(t, 20)
	}
	acked := w.finish(t, 80)
	c.waitConfig(ids(1, 3), nil, 20*time.Second)
	c.checkAll(t, acked)
}

func TestMembership_RejoinOnNewAddress(t *testing.T) {
	c := newMemberCluster(t, 3)
	f := c.followers()[0]
	old := c.nodes[f].Addr()
	c.restart(f)
	newAddr := c.nodes[f].Addr()
	if newAddr == old {
		t.Fatalf("restart kept address %s", old)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var got string
		for _, m := range c.nodes[c.waitLeader()].Members() {
			if m.ID == fmt.Sprintf("n%d", f+1) {
				got = m.Addr
			}
		}
		if got == newAddr {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leader reports n%d at %s, want %s", f+1, got, newAddr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Raft reaches it at its new address: a write on the leader shows up in
	// its local (stale) state.
	ctx := ctxT(t, 20*time.Second)
	if err := c.nodes[c.waitLeader()].Set(ctx, "after-rejoin", []byte("ok")); err != nil {
		t.Fatal(err)
	}
	for {
		if v, err := c.nodes[f].Get(ctx, "after-rejoin", kv.Stale()); err == nil && string(v) == "ok" {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the rejoined member never received the write")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := c.nodes[f].Set(ctx, "from-rejoined", []byte("ok")); err != nil {
		t.Fatal(err)
	}
	c.waitConfig(ids(1, 3), nil, 10*time.Second)
}

func TestMembership_OtherClusterIsRefused(t *testing.T) {
	dir := t.TempDir()
	// Two seedless single-node clusters stay two clusters.
	a, err := kv.Open(kv.Config{NodeID: "a", DataDir: dir + "/a"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := kv.Open(kv.Config{NodeID: "b", DataDir: dir + "/b"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 20*time.Second)
	for _, s := range []*kv.Store{a, b} {
		if err := s.Set(ctx, "who", []byte(s.Stats().NodeID)); err != nil {
			t.Fatal(err)
		}
	}
	ca, cb := a.Stats().ClusterID, b.Stats().ClusterID
	if ca == "" || cb == "" || ca == cb {
		t.Fatalf("cluster IDs %q and %q", ca, cb)
	}
	// b, restarted from its DataDir and told to join a's cluster, is refused.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b2, err := kv.Open(kv.Config{NodeID: "b", DataDir: dir + "/b", Join: []string{a.GossipAddr()}})
	if !errors.Is(err, kv.ErrWrongCluster) {
		if b2 != nil {
			b2.Close()
		}
		t.Fatalf("joining another cluster: %v, want ErrWrongCluster", err)
	}
	// a never saw b as a member, and kept its own data.
	for _, m := range a.Members() {
		if m.ID == "b" {
			t.Fatalf("a lists b: %+v", a.Members())
		}
	}
	if v, err := a.Get(ctx, "who"); err != nil || string(v) != "a" {
		t.Fatalf("a's data: %q, %v", v, err)
	}
	// A fresh instance (no DataDir state) joining a is adopted into a's cluster.
	c, err := kv.Open(kv.Config{NodeID: "c", DataDir: dir + "/c", Join: []string{a.GossipAddr()}, StabilizationTime: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(20 * time.Second)
	for c.Stats().ClusterID != ca {
		if time.Now().After(deadline) {
			t.Fatalf("c's cluster = %q, want %q", c.Stats().ClusterID, ca)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v, err := c.Get(ctx, "who"); err != nil || string(v) != "a" {
		t.Fatalf("c reads %q, %v", v, err)
	}
}

// A voter that calls Leave is out of service at once: with a non-voter
// spare ready, the leader promotes the spare and removes the leaver within
// a few reconcile passes, whatever DeadMemberTimeout says (a voter that
// leaves is not a voter that might come back).
func TestMembership_LeaveWithSpare_DoesNotWaitForDeadMemberTimeout(t *testing.T) {
	c := &cluster{t: t, dir: t.TempDir()}
	t.Cleanup(c.closeAll)
	for i := 0; i < 4; i++ {
		expect := 3
		if i == 3 {
			expect = 0 // n4 joins the bootstrapped three as a non-voter
		}
		var join []string
		for _, s := range c.nodes {
			join = append(join, s.GossipAddr())
		}
		cfg := memberConfig(t, c.dir, fmt.Sprintf("n%d", i+1), expect, join)
		cfg.DeadMemberTimeout = 10 * time.Minute
		s, err := kv.Open(cfg)
		if err != nil {
			t.Fatalf("open n%d: %v", i+1, err)
		}
		c.nodes = append(c.nodes, s)
		c.cfgs = append(c.cfgs, cfg)
	}
	c.waitConfig(ids(1, 3), ids(4, 4), 30*time.Second)
	// n4 is ready, and kept back only to keep the voters odd.
	deadline := time.Now().Add(10 * time.Second)
	for why := ""; !strings.Contains(why, "odd number of voters"); {
		if time.Now().After(deadline) {
			t.Fatalf("NotPromoted[n4] = %q", why)
		}
		time.Sleep(20 * time.Millisecond)
		why = c.nodes[c.waitLeader()].Stats().NotPromoted["n4"]
	}
	var victim int
	for _, f := range c.followers() {
		if f < 3 {
			victim = f
			break
		}
	}
	ctx := ctxT(t, 20*time.Second)
	start := time.Now()
	if err := c.nodes[victim].Leave(ctx); err != nil {
		t.Fatalf("n%d Leave with a spare ready, after %v: %v", victim+1, time.Since(start).Round(time.Millisecond), err)
	}
	c.nodes[victim] = nil
	var want []string
	for _, id := range ids(1, 4) {
		if id != fmt.Sprintf("n%d", victim+1) {
			want = append(want, id)
		}
	}
	c.waitConfig(want, nil, 10*time.Second)
}
