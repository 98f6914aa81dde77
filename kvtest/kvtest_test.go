package kvtest_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	kv "github.com/cohortkv/kv"
	"github.com/cohortkv/kv/kvtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := findLeaks(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked after the tests:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// findLeaks polls for goroutines left running, for up to 10 s. After
// Shutdown, memberlist lets timers it started finish on their own: a probe in
// flight waits for its ack (the probe interval, scaled up to 8x by
// memberlist's awareness), and an indirect ping it relays waits
// ProbeTimeout before it sends its nack.
func findLeaks() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := goleak.Find()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustGet(t *testing.T, s *kv.Store, key string, opts ...kv.ReadOption) string {
	t.Helper()
	v, err := s.Get(ctxT(t, 20*time.Second), key, opts...)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return string(v)
}

func TestCluster_KillAndRestart(t *testing.T) {
	c := kvtest.NewCluster(t, 3)
	ctx := ctxT(t, 60*time.Second)
	if err := c.Node(0).Set(ctx, "a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	old := c.Leader()
	c.Kill(old)
	if c.Node(old) != nil {
		t.Fatal("killed node still returned by Node")
	}
	l := c.Leader()
	if l == old {
		t.Fatalf("leader %d still leads after its kill", l)
	}
	if err := c.Node(l).Set(ctx, "b", []byte("2")); err != nil {
		t.Fatal(err)
	}
	c.Restart(old)
	if got := mustGet(t, c.Node(old), "b"); got != "2" {
		t.Fatalf("restarted node reads b=%q", got)
	}
	if got := mustGet(t, c.Node(old), "a"); got != "1" {
		t.Fatalf("restarted node reads a=%q", got)
	}
}

func TestCluster_PartitionIsolatesLeader(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.Configure(func(i int, cfg *kv.Config) {
		cfg.DeadMemberTimeout = time.Hour
	}))
	ctx := ctxT(t, 60*time.Second)
	if err := c.Node(0).Set(ctx, "k", []byte("before")); err != nil {
		t.Fatal(err)
	}
	old := c.Leader()
	c.Isolate(old)
	var l int
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		l = c.Leader()
		if l != old {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the majority elected no new leader")
		}
	}
	if err := c.Node(l).Set(ctx, "k", []byte("after")); err != nil {
		t.Fatalf("write on the majority side: %v", err)
	}
	// The isolated member can neither write nor read linearizably...
	short, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	_, err := c.Node(old).Get(short, "k")
	cancel()
	if err == nil {
		t.Fatal("linearizable Get succeeded on an isolated member")
	}
	// ...but a stale read serves what it has.
	if got := mustGet(t, c.Node(old), "k", kv.Stale()); got != "before" {
		t.Fatalf("stale read on the isolated member: %q", got)
	}
	c.Heal()
	if got := mustGet(t, c.Node(old), "k"); got != "after" {
		t.Fatalf("healed member reads %q", got)
	}
}

func TestCluster_LatencyAndLoss(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.InMemory())
	ctx := ctxT(t, 60*time.Second)
	f := c.Node((c.Leader() + 1) % 3)
	c.SetLatency(30 * time.Millisecond)
	start := time.Now()
	if err := f.Set(ctx, "slow", []byte("x")); err != nil {
		t.Fatal(err)
	}
	// Forwarding to the leader and replicating cross the network at
	// least twice each way.
	if d := time.Since(start); d < 60*time.Millisecond {
		t.Fatalf("write through a follower took %v with 30 ms latency per message", d)
	}
	c.SetLatency(0)
	c.SetLoss(0.2)
	for i := 0; i < 20; i++ {
		// A write whose connection drops is sent again: none fails.
		if err := f.Set(ctx, fmt.Sprint("lossy", i), []byte("x")); err != nil {
			t.Fatalf("write %d under 20%% loss: %v", i, err)
		}
	}
	c.Heal()
	for i := 0; i < 3; i++ {
		if err := c.Node(i).Set(ctx, "healed", []byte(fmt.Sprint(i))); err != nil {
			t.Fatalf("write on node%d after heal: %v", i, err)
		}
	}
	if got := mustGet(t, c.Node(0), "healed"); got != "2" {
		t.Fatalf("healed = %q", got)
	}
}

func TestStart_WithoutTestingTB(t *testing.T) {
	c, err := kvtest.Start(1, kvtest.InMemory())
	if err != nil {
		t.Fatal(err)
	}
	if c.N() != 1 || c.Node(0) == nil || c.Config(0).NodeID == "" {
		t.Fatalf("cluster of one: N=%d node=%v", c.N(), c.Node(0))
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if s := c.Node(0); s != nil {
		t.Fatal("node still present after Close")
	}
}

func TestCluster_SecureAndStop(t *testing.T) {
	c := kvtest.NewCluster(t, 3, kvtest.Secure(), kvtest.InMemory())
	if c.CA() == nil || len(c.GossipKey()) != 32 || c.Config(0).TLS == nil {
		t.Fatal("Secure cluster without CA, gossip key or TLS config")
	}
	ctx := ctxT(t, 30*time.Second)
	if err := c.Node(1).Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	f := (c.Leader() + 1) % 3
	c.Stop(f)
	if c.Node(f) != nil {
		t.Fatal("stopped node still returned")
	}
	c.Stop(f) // idempotent
	c.Kill(f) // no-op on a stopped node
	l := c.Leader()
	if got := mustGet(t, c.Node(l), "k"); got != "v" {
		t.Fatalf("k = %q", got)
	}
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
}
