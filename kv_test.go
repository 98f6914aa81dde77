package kv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	kv "github.com/cohortkv/kv"
)

func TestStore_SingleNode_EveryOperation(t *testing.T) {
	dir := t.TempDir()
	s, err := kv.Open(kv.Config{NodeID: "solo", DataDir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := ctxT(t, 20*time.Second)
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Get(ctx, "a"); err != nil || string(v) != "1" {
		t.Fatalf("Get a = %q, %v", v, err)
	}
	if v, err := s.Get(ctx, "a", kv.Stale()); err != nil || string(v) != "1" {
		t.Fatalf("stale Get a = %q, %v", v, err)
	}
	if err := s.Set(ctx, "empty", nil); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Get(ctx, "empty"); err != nil || v == nil || len(v) != 0 {
		t.Fatalf("Get empty = %#v, %v; want a non-nil empty value", v, err)
	}
	if _, err := s.Get(ctx, "missing"); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("Get missing: %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "a"); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("Get deleted: %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatalf("Delete of an absent key: %v", err)
	}
	f := s.SetAsync("b", []byte("2"))
	if err := f.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAsync("b").Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "b"); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("Get after DeleteAsync: %v", err)
	}
	st := s.Stats()
	if st.State != kv.StateLeader || st.Leader != "solo" || st.AppliedIndex == 0 || st.CommitIndex < st.AppliedIndex || st.Term == 0 {
		t.Fatalf("Stats = %+v", st)
	}
	if fmt.Sprint(st.State) != "leader" {
		t.Fatalf("State prints %q", fmt.Sprint(st.State))
	}
	ms := s.Members()
	if len(ms) != 1 || ms[0].ID != "solo" || !ms[0].Voter || !ms[0].Leader || fmt.Sprint(ms[0].Status) != "alive" || ms[0].Addr != s.Addr() || ms[0].GossipAddr != s.GossipAddr() {
		t.Fatalf("Members = %+v", ms)
	}
}

func TestStore_InMemory(t *testing.T) {
	s, err := kv.Open(kv.Config{NodeID: "mem", InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := ctxT(t, 20*time.Second)
	if err := s.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Get(ctx, "k"); err != nil || string(v) != "v" {
		t.Fatalf("Get = %q, %v", v, err)
	}
}

func TestCluster_EveryOperationOnEveryInstance(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, 30*time.Second)
	for i, w := range c.nodes {
		key := fmt.Sprintf("k%d", i)
		val := []byte(fmt.Sprintf("v%d", i))
		if err := w.Set(ctx, key, val); err != nil {
			t.Fatalf("Set on n%d: %v", i+1, err)
		}
		// A default Get right after, on every instance, sees the write.
		for j, r := range c.nodes {
			v, err := r.Get(ctx, key)
			if err != nil || !bytes.Equal(v, val) {
				t.Fatalf("Get %s on n%d after Set on n%d = %q, %v", key, j+1, i+1, v, err)
			}
		}
		pairs, err := c.nodes[(i+1)%3].List(ctx, "k")
		if err != nil || len(pairs) != i+1 {
			t.Fatalf("List on n%d = %v, %v", (i+1)%3+1, pairs, err)
		}
		if err := w.Delete(ctx, key); err != nil {
			t.Fatalf("Delete on n%d: %v", i+1, err)
		}
		for j, r := range c.nodes {
			if _, err := r.Get(ctx, key); !errors.Is(err, kv.ErrNotFound) {
				t.Fatalf("Get deleted %s on n%d: %v", key, j+1, err)
			}
		}
		if err := w.Set(ctx, key, val); err != nil {
			t.Fatal(err)
		}
	}
	// Every instance reports the same leader and the cluster's members.
	leader := c.nodes[c.waitLeader()].Stats().NodeID
	for i, s := range c.nodes {
		ms := s.Members()
		if len(ms) != 3 {
			t.Fatalf("n%d Members = %+v", i+1, ms)
		}
		for _, m := range ms {
			if !m.Voter || m.Leader != (m.ID == leader) {
				t.Fatalf("n%d member %+v (leader %s)", i+1, m, leader)
			}
		}
	}
}

func TestCluster_ListPaginates10kKeys(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, 60*time.Second)
	const n = 10000
	w := c.nodes[c.followers()[0]]
	// Load in windows of 500 writes in flight.
	for start := 0; start < n; start += 500 {
		futs := make([]*kv.Future, 0, 500)
		for i := start; i < start+500; i++ {
			futs = append(futs, w.SetAsync(fmt.Sprintf("item/%05d", i), []byte(fmt.Sprint(i))))
		}
		for i, f := range futs {
			if err := f.Wait(ctx); err != nil {
				t.Fatalf("SetAsync %d: %v", start+i, err)
			}
		}
	}
	for _, k := range []string{"itel", "itemz", "other"} {
		if err := w.Set(ctx, k, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for ni, r := range c.nodes {
		var got []string
		after := ""
		for page := 0; page < n; page++ {
			opts := []kv.ReadOption{kv.Limit(777)}
			if after != "" {
				opts = append(opts, kv.After(after))
			}
			pairs, err := r.List(ctx, "item/", opts...)
			if err != nil {
				t.Fatal(err)
			}
			if len(pairs) > 777 {
				t.Fatalf("page of %d pairs, limit 777", len(pairs))
			}
			if len(pairs) == 0 {
				break
			}
			for _, p := range pairs {
				if string(p.Value) != strings.TrimLeft(strings.TrimPrefix(p.Key, "item/"), "0") && !(p.Key == "item/00000" && string(p.Value) == "0") {
					t.Fatalf("pair %q=%q", p.Key, p.Value)
				}
				got = append(got, p.Key)
			}
			after = pairs[len(pairs)-1].Key
		}
		if len(got) != n {
			t.Fatalf("n%d: paginated %d keys, want %d", ni+1, len(got), n)
		}
		for i, k := range got {
			if want := fmt.Sprintf("item/%05d", i); k != want {
				t.Fatalf("n%d: key %d is %q, want %q", ni+1, i, k, want)
			}
		}
	}
	all, err := c.nodes[0].List(ctx, "", kv.Stale())
	if err != nil || len(all) < n+3 {
		t.Fatalf("List all: %d pairs, %v", len(all), err)
	}
	for i := 1; i < len(all); i++ {
		if all[i-1].Key >= all[i].Key {
			t.Fatalf("List not sorted at %d: %q >= %q", i, all[i-1].Key, all[i].Key)
		}
	}
	// After a key before the prefix starts at the prefix; after the last key is empty.
	if p, err := c.nodes[1].List(ctx, "item/", kv.After("a"), kv.Limit(1)); err != nil || len(p) != 1 || p[0].Key != "item/00000" {
		t.Fatalf("After before prefix: %v, %v", p, err)
	}
	if p, err := c.nodes[1].List(ctx, "item/", kv.After("item/09999")); err != nil || len(p) != 0 {
		t.Fatalf("After the last key: %v, %v", p, err)
	}
}

func TestCluster_ThousandSetAsyncOnFollower(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, 60*time.Second)
	f := c.nodes[c.followers()[0]]
	futs := make([]*kv.Future, 1000)
	for i := range futs {
		futs[i] = f.SetAsync(fmt.Sprintf("async/%04d", i), []byte{byte(i)})
	}
	for i, fu := range futs {
		if err := fu.Wait(ctx); err != nil {
			t.Fatalf("future %d: %v", i, err)
		}
		select {
		case <-fu.Done():
		default:
			t.Fatalf("future %d: Done not closed after Wait", i)
		}
	}
	for i, s := range c.nodes {
		pairs, err := s.List(ctx, "async/")
		if err != nil || len(pairs) != 1000 {
			t.Fatalf("n%d List = %d pairs, %v", i+1, len(pairs), err)
		}
		for j, p := range pairs {
			if p.Value[0] != byte(j) {
				t.Fatalf("n%d %s = %v", i+1, p.Key, p.Value)
			}
		}
	}
}

func TestStore_Contexts(t *testing.T) {
	c := newCluster(t, 3)
	f := c.nodes[c.followers()[0]]
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	for _, s := range []*kv.Store{c.nodes[c.waitLeader()], f} {
		for name, ctx := range map[string]context.Context{"cancelled": cancelled, "expired": expired} {
			want := context.Canceled
			if name == "expired" {
				want = context.DeadlineExceeded
			}
			if err := s.Set(ctx, "x", []byte("y")); !errors.Is(err, want) {
				t.Errorf("Set with %s ctx: %v", name, err)
			}
			if _, err := s.Get(ctx, "x"); !errors.Is(err, want) {
				t.Errorf("Get with %s ctx: %v", name, err)
			}
			if _, err := s.List(ctx, "x"); !errors.Is(err, want) {
				t.Errorf("List with %s ctx: %v", name, err)
			}
			if err := s.Delete(ctx, "x"); !errors.Is(err, want) {
				t.Errorf("Delete with %s ctx: %v", name, err)
			}
		}
	}
	if _, err := f.Get(ctxT(t, 5*time.Second), "x"); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("a write with a dead context was applied: %v", err)
	}
}

func TestStore_NoLeaderTimesOut(t *testing.T) {
	// One instance expecting three never elects a leader.
	s, err := kv.Open(kv.Config{NodeID: "lonely", DataDir: t.TempDir(), BootstrapExpect: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = s.Set(ctx, "k", []byte("v"))
	if !errors.Is(err, kv.ErrNoLeader) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Set without a leader: %v, want ErrNoLeader and DeadlineExceeded", err)
	}
	if errors.Is(err, kv.ErrOutcomeUnknown) {
		t.Fatalf("Set without a leader: %v: never sent, so not ErrOutcomeUnknown", err)
	}
	if err := s.SetAsync("k", []byte("v")).Wait(ctx); !errors.Is(err, kv.ErrOutcomeUnknown) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Future.Wait with an ended ctx: %v, want DeadlineExceeded and ErrOutcomeUnknown", err)
	}
	if _, err := s.Get(ctx, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get without a leader: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("calls took %v after their deadline", d)
	}
	if err := s.WaitForLeader(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitForLeader: %v", err)
	}
	if v, err := s.Get(context.Background(), "k", kv.Stale()); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("stale Get without a leader = %q, %v", v, err)
	}
}

func TestStore_BadInput(t *testing.T) {
	s, err := kv.Open(kv.Config{NodeID: "solo", DataDir: t.TempDir(), MaxKeySize: 8, MaxValueSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 20*time.Second)
	cases := []struct {
		name  string
		key   string
		value []byte
		want  error
	}{
		{"empty key", "", []byte("v"), kv.ErrEmptyKey},
		{"key over MaxKeySize", "123456789", []byte("v"), kv.ErrKeyTooLarge},
		{"value over MaxValueSize", "k", make([]byte, 17), kv.ErrValueTooLarge},
	}
	for _, tc := range cases {
		if err := s.Set(ctx, tc.key, tc.value); !errors.Is(err, tc.want) {
			t.Errorf("Set %s: %v, want %v", tc.name, err, tc.want)
		}
		if err := s.SetAsync(tc.key, tc.value).Wait(ctx); !errors.Is(err, tc.want) {
			t.Errorf("SetAsync %s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if err := s.Delete(ctx, ""); !errors.Is(err, kv.ErrEmptyKey) {
		t.Errorf("Delete empty key: %v", err)
	}
	if _, err := s.Get(ctx, ""); !errors.Is(err, kv.ErrEmptyKey) {
		t.Errorf("Get empty key: %v", err)
	}
	if err := s.Set(ctx, "12345678", make([]byte, 16)); err != nil {
		t.Fatalf("Set at the limits: %v", err)
	}
	pairs, err := s.List(ctx, "")
	if err != nil || len(pairs) != 1 {
		t.Fatalf("after bad input, List = %v, %v: want only the valid key", pairs, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	checks := map[string]error{
		"Set":         s.Set(ctx, "k", nil),
		"Delete":      s.Delete(ctx, "k"),
		"SetAsync":    s.SetAsync("k", nil).Wait(ctx),
		"DeleteAsync": s.DeleteAsync("k").Wait(ctx),
		"WaitLeader":  s.WaitForLeader(ctx),
	}
	_, checks["Get"] = s.Get(ctx, "k")
	_, checks["List"] = s.List(ctx, "")
	for name, err := range checks {
		if !errors.Is(err, kv.ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	if st := s.Stats(); st.State != kv.StateShutdown {
		t.Errorf("Stats after Close: %+v", st)
	}
}

func TestOpen_InvalidConfig(t *testing.T) {
	cases := map[string]kv.Config{
		"no NodeID":           {DataDir: t.TempDir()},
		"no DataDir":          {NodeID: "a"},
		"bad BindAddr":        {NodeID: "a", InMemory: true, BindAddr: "nope"},
		"negative expect":     {NodeID: "a", InMemory: true, BootstrapExpect: -1},
		"huge MaxValueSize":   {NodeID: "a", InMemory: true, MaxValueSize: 1 << 30},
		"lease > heartbeat":   {NodeID: "a", InMemory: true, HeartbeatTimeout: time.Second, LeaderLeaseTimeout: 2 * time.Second},
		"negative MaxKeySize": {NodeID: "a", InMemory: true, MaxKeySize: -1},
	}
	for name, cfg := range cases {
		if s, err := kv.Open(cfg); !errors.Is(err, kv.ErrInvalidConfig) {
			if s != nil {
				s.Close()
			}
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
	// A port in use is a clear error and leaves nothing running.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := kv.Open(kv.Config{NodeID: "a", InMemory: true, BindAddr: ln.Addr().String()}); err == nil {
		t.Fatal("Open on a port in use succeeded")
	}
	// A DataDir held by another open Store is refused, not shared.
	dir := t.TempDir()
	s, err := kv.Open(kv.Config{NodeID: "a", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s2, err := kv.Open(kv.Config{NodeID: "a", DataDir: dir}); err == nil {
		s2.Close()
		t.Fatal("second Open of the same DataDir succeeded")
	}
}

func TestCluster_LeaderCloseFailsOver(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, 30*time.Second)
	if err := c.nodes[0].Set(ctx, "before", []byte("1")); err != nil {
		t.Fatal(err)
	}
	l := c.waitLeader()
	if err := c.nodes[l].Close(); err != nil {
		t.Fatal(err)
	}
	c.nodes[l] = nil
	start := time.Now()
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, s := range c.nodes {
		if s == nil {
			continue
		}
		if err := s.Set(wctx, fmt.Sprintf("after-%d", i), []byte("2")); err != nil {
			t.Fatalf("write on n%d after the leader closed: %v (after %v)", i+1, err, time.Since(start))
		}
		if v, err := s.Get(wctx, "before"); err != nil || string(v) != "1" {
			t.Fatalf("n%d Get before = %q, %v", i+1, v, err)
		}
	}
	t.Logf("writes went on %v after the leader closed", time.Since(start))
	nl := c.waitLeader()
	if nl == l {
		t.Fatal("closed node still leads")
	}
}

func TestCluster_RestartKeepsAcknowledgedWrites(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, 120*time.Second)
	acked := map[string]string{}
	var mu sync.Mutex
	write := func(round int) {
		var wg sync.WaitGroup
		for i, s := range c.nodes {
			if s == nil {
				continue
			}
			wg.Add(1)
			go func(i int, s *kv.Store) {
				defer wg.Done()
				for j := 0; j < 50; j++ {
					k, v := fmt.Sprintf("r%d/n%d/%d", round, i, j), fmt.Sprint(round, i, j)
					if err := s.Set(ctx, k, []byte(v)); err == nil {
						mu.Lock()
						acked[k] = v
						mu.Unlock()
					}
				}
			}(i, s)
		}
		wg.Wait()
	}
	check := func(when string) {
		t.Helper()
		for i, s := range c.nodes {
			pairs, err := s.List(ctx, "r")
			if err != nil {
				t.Fatalf("%s: n%d List: %v", when, i+1, err)
			}
			got := map[string]string{}
			for _, p := range pairs {
				got[p.Key] = string(p.Value)
			}
			for k, v := range acked {
				if got[k] != v {
					t.Fatalf("%s: n%d lost acknowledged %s=%s (has %q)", when, i+1, k, v, got[k])
				}
			}
		}
	}
	write(0)
	// Restart one follower and the leader, one at a time, writing in between.
	for round, i := range []int{c.followers()[0], c.waitLeader()} {
		c.restart(i)
		write(round + 1)
		c.waitLeader()
		check(fmt.Sprintf("after restarting n%d", i+1))
	}
	// A write in flight while its leader hands over is sent again to the
	// next one; nearly all must succeed (within their ctx).
	if len(acked) < 3*50*3*9/10 {
		t.Fatalf("only %d writes acknowledged", len(acked))
	}
	// Restart all three (new ports each time): the cluster comes back from
	// its files alone and keeps everything.
	c.closeAll()
	for i := range c.nodes {
		c.open(i)
	}
	c.waitLeader()
	check("after restarting all three")
	write(9)
	check("after writing again")
}

func TestCluster_GarbageOnTransportPort(t *testing.T) {
	c := newCluster(t, 3)
	ctx := ctxT(t, 30*time.Second)
	if err := c.nodes[0].Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	payloads := [][]byte{
		[]byte("GET / HTTP/1.1\r\n\r\n"),
		{'C', 0xff, 0xff, 0xff, 0xff, 1, 2, 3},
		{'C', 0, 0, 0, 3, 0xc1, 0xc1, 0xc1},
		{'R', 0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9},
		bytes.Repeat([]byte{0}, 4096),
	}
	for _, s := range c.nodes {
		for _, p := range payloads {
			conn, err := net.Dial("tcp", s.Addr())
			if err != nil {
				t.Fatal(err)
			}
			conn.Write(p)
			conn.Close()
		}
	}
	for i, s := range c.nodes {
		if err := s.Set(ctx, fmt.Sprintf("after-%d", i), []byte("ok")); err != nil {
			t.Fatalf("n%d write after garbage: %v", i+1, err)
		}
		if v, err := s.Get(ctx, "k"); err != nil || string(v) != "v" {
			t.Fatalf("n%d data after garbage: %q, %v", i+1, v, err)
		}
	}
}

func TestStore_CloseLeaksNothing(t *testing.T) {
	before := goleak.IgnoreCurrent()
	c := newCluster(t, 3)
	ctx := ctxT(t, 30*time.Second)
	for i, s := range c.nodes {
		if err := s.Set(ctx, fmt.Sprint(i), []byte("v")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		s.SetAsync("async", []byte("v"))
	}
	c.closeAll()
	if err := findLeaks(before); err != nil {
		t.Fatal(err)
	}
}
